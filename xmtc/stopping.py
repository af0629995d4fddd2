"""How a training run stops before its last step: a stop signal (checkpoint, then exit 75 or 130), divergence, or a
write that fails (a full disk).

The trainer asks here at each step boundary whether any rank received SIGUSR1/SIGTERM/SIGINT
(`StopSignal.any_rank`) and, before each save, whether the weights are still finite
(`weights_finite`); launch/train.py turns `Preempted` into its exit code and `Diverged` into one
sentence and exit 2.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from xmtc.config import UserError
from xmtc.distributed import all_reduce_max
from xmtc.runlock import OutputDirError

EXIT_REQUEUE = 75  # EX_TEMPFAIL: checkpointed on a signal, run again with train.resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C: checkpointed, and not to be requeued


class Diverged(UserError):
    """The training loss, the weights or the scores are not finite; the launcher prints the sentence and exits with 2."""


class Preempted(Exception):
    """Raised after the checkpoint written on a stop signal; the launcher exits with `exit_code`: EXIT_REQUEUE
    (SIGUSR1/SIGTERM: SLURM's scripts requeue the job) or EXIT_INTERRUPTED (Ctrl-C: nothing requeues it)."""

    def __init__(self, step: int, exit_code: int = 75):
        super().__init__(step)
        self.step, self.exit_code = step, exit_code


class StopSignal:
    """Remembers the first SIGUSR1, SIGTERM or (in the training loop) SIGINT; ranks agree on it at step boundaries.

    Ctrl-C in the training loop is a stop like SIGTERM: a checkpoint at the end of the step, then exit 130. Before
    the loop (nothing to save yet), or a second Ctrl-C, stops at once: KeyboardInterrupt, which launch/train.py
    turns into one sentence. (Before, Ctrl-C was a traceback of every rank and lost the steps since the last save.)"""

    def __init__(self):
        self.received = 0
        self.in_loop = False

    def install(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and (not self.in_loop or self.received == signal.SIGINT):
            raise KeyboardInterrupt
        if not self.received:  # the first one decides (the deepspeed launcher follows Ctrl-C with a SIGTERM)
            self.received = signum
            if signum == signal.SIGINT and os.environ.get("RANK", "0") == "0":
                os.write(2, b"\ninterrupted: a checkpoint at the end of this step, then exit (Ctrl-C again: exit without one)\n")

    @staticmethod
    def ignore_further() -> None:
        """Once stopping or done, a later signal must not kill a rank mid-checkpoint or during shutdown.

        Also what a finished run does before it exits: Python's finalization resets the handlers it set
        to the default action, so a SIGUSR1 arriving then (SLURM's warning as a run ends) killed a run
        that had finished, with 138 (measured: a SIGUSR1 every 0.5 ms from the moment a process with a
        handler is about to exit killed it in 20 of 20 tries; 0 of 20 with the signal ignored).
        """
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    def any_rank(self, device) -> bool:
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        return bool(all_reduce_max(flag).item())



DIVERGED_ADVICE = "lower train.lr, raise train.warmup_steps or set deepspeed.gradient_clipping"
"""What every `Diverged` sentence suggests."""


def weights_finite(module: torch.nn.Module, device) -> bool:
    """Whether every rank's weights are finite: each rank checks what it holds (its ZeRO-3 partition, its label
    shard, or the full weights), by the min and max of each tensor (NaN and inf show in them; no tensor of the
    weights' size is allocated)."""
    bounds = []
    for p in module.parameters():
        t = getattr(p, "ds_tensor", None)  # ZeRO-3: this rank's partition (p.data is empty outside a forward)
        t = p.data if t is None else t
        if t.numel():
            bounds.extend(torch.aminmax(t.detach()))
    bad = torch.zeros(1, device=device)
    if bounds:
        bad = bad + (~torch.isfinite(torch.stack([b.float().to(device) for b in bounds]))).any().float()
    return all_reduce_max(bad).item() == 0


def free_gib(path: Path) -> float | None:
    """GiB free to this user on the filesystem of `path` (or of its nearest existing parent); None if unknown."""
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize / 2**30
    return None


def write_failed(what: str, where: Path, e: BaseException, newest: Path | None) -> OutputDirError:
    """One sentence for a write of the run that failed (a full disk, a quota, a lost mount): what, why, the room left, and
    where the run can continue from (a rank other than 0 says it as "rank N: ..."). torch.save says a failed write in
    its own words ("unexpected pos ...")."""
    if isinstance(e, OSError) and e.strerror:
        why = e.strerror
    else:
        why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}: a full disk, a quota or a lost mount"
    free = free_gib(where)
    return OutputDirError(
        f"could not write {what} ({why})" + (f"; {free:.1f} GiB free there now" if free is not None else "")
        + "; the run stops, " + (f"the newest checkpoint is {newest}" if newest else "no checkpoint was completed")
        + "; continue with --train.resume true once it can be written"
    )


def torch_save_failed(e: RuntimeError) -> bool:
    """Whether `e` is torch.save's report of a write that failed (its zip writer's words, not an OSError)."""
    return any(x in str(e) for x in ("inline_container", "PytorchStreamWriter", "file write failed"))
