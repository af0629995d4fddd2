"""One run per output directory: a second run into a directory another process trains in stops with one
sentence naming the holder, on every rank, and leaves the first run's files as they were."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_train_integration import ROOT, env, launcher

from xmtc.distributed import DistInfo
from xmtc.runlock import LOCK_NAME, DirectoryInUse, RunLock
from xmtc.trainer import claim_output_dir

HOLD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from xmtc.runlock import RunLock
    lock = RunLock(Path(sys.argv[1]))
    assert lock.acquire() is None
    print("held", flush=True)
    sys.stdin.readline()  # until the test closes our stdin
""")


class Holder:
    """Another process holding `out`'s lock until the context ends."""

    def __init__(self, out: Path):
        self.out = out

    def __enter__(self):
        e = env()
        e["SLURM_JOB_ID"] = "4242"
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(self.out)], cwd=ROOT, env=e,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"
        return self.proc

    def __exit__(self, *exc):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    out = tmp_path / "run"
    assert RunLock(out).holder() is None and not out.exists()  # the probe creates nothing
    with Holder(out) as proc:
        holder = RunLock(out).holder()
        assert holder is not None and holder.startswith(f"pid {proc.pid} on host ") and ", SLURM job 4242, since " in holder
        second = RunLock(out)
        assert second.acquire() == holder and second.fd is None
    # The holder has exited: its lock went with it, and the next run takes it.
    mine = RunLock(out)
    assert mine.holder() is None and mine.acquire() is None and mine.fd is not None
    assert f'"pid": {os.getpid()}' in (out / LOCK_NAME).read_text()
    mine.release()
    assert RunLock(out).acquire() is None


def test_claim_before_writing_stops_the_run(tmp_path):
    out = tmp_path / "run"
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    with Holder(out) as proc:
        for take in (False, True):
            with pytest.raises(DirectoryInUse, match=f"train.output_dir {out} is in use by another run \\(pid {proc.pid} "):
                claim_output_dir(RunLock(out), info, take=take)
    lock = RunLock(out)
    claim_output_dir(lock, info, take=True)
    assert lock.fd is not None
    lock.release()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["python", "deepspeed"])
def test_second_run_into_a_busy_directory_exits_2_on_every_rank(tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 5}\n')  # the first run's: neither set aside nor rewritten
    cmd = [*launcher(kind), "launch/train.py", "--config", "debug_xml_cnn", "--train.output_dir", str(out),
           "--data.cache_dir", str(tmp_path / "cache"), "--train.max_steps", "2", "--train.progress", "false"]
    with Holder(out) as holder:
        proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error: " in line]
    assert len(errors) == 1, errors  # said by rank 0 only
    assert f"train.output_dir {out} is in use by another run (pid {holder.pid} on host " in errors[0]
    assert "data:" not in proc.stdout  # stopped before reading the corpus
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == '{"step": 5}\n'
