"""How a training run stops before its last step: a stop signal (checkpoint, then exit 75 or 130) or divergence.

The trainer asks here at each step boundary whether any rank received SIGUSR1/SIGTERM/SIGINT
(`StopSignal.any_rank`) and, before each save, whether the weights are still finite
(`weights_finite`); launch/train.py turns `Preempted` into its exit code and `Diverged` into one
sentence and exit 2.
"""

from __future__ import annotations

import os
import signal

import torch

from xmtc.config import UserError
from xmtc.distributed import all_reduce_max

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
