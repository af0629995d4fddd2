"""One run per output directory: a second run into a directory another process trains in stops with one
sentence naming the holder, on every rank, and leaves the first run's files as they were."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from launch_helpers import ROOT, env, launcher

from xmtc.distributed import DistInfo
from xmtc.runlock import LOCK_NAME, DirectoryInUse, OutputDirError, RunLock, lock_wait_s
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
    assert (out / LOCK_NAME).read_text() == ""  # a later refusal names no finished run
    again = RunLock(out)
    assert again.acquire() is None
    again.release()


def test_another_users_lock_file_is_locked_read_only(tmp_path, monkeypatch):
    # In a shared directory the lock file another user created is 0644: flock needs no write access.
    out = tmp_path / "run"
    first = RunLock(out)
    first.acquire()  # creates the file
    first.release()
    real_open = os.open

    def no_write(path, flags, *mode):
        if str(path).endswith(LOCK_NAME) and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    monkeypatch.setattr(os, "open", no_write)
    lock = RunLock(out)
    assert lock.acquire() is None and lock.fd is not None and not lock.writable
    monkeypatch.setattr(os, "open", real_open)
    assert RunLock(out).acquire() == "a run that is starting"  # held, with no details written
    lock.release()
    again = RunLock(out)
    assert again.acquire() is None
    again.release()


def test_a_requeued_job_waits_for_the_lock(tmp_path, monkeypatch):
    out = tmp_path / "run"
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    monkeypatch.delenv("XMTC_LOCK_WAIT_S", raising=False)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert lock_wait_s() == 0.0
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a node failure: its NFS lock outlives it until the lease ends
    assert lock_wait_s() == 300.0
    monkeypatch.setenv("XMTC_LOCK_WAIT_S", "soon")
    with pytest.raises(OutputDirError, match="XMTC_LOCK_WAIT_S is 'soon'"):
        lock_wait_s()
    monkeypatch.setenv("XMTC_LOCK_WAIT_S", "30")
    holder = Holder(out)
    proc = holder.__enter__()
    threading.Timer(2.0, holder.__exit__, args=(None, None, None)).start()  # the old holder goes after 2 s
    lock = RunLock(out)
    started = time.monotonic()
    claim_output_dir(lock, info, take=True)
    assert lock.fd is not None and 2.0 <= time.monotonic() - started < 20.0 and proc.poll() is not None
    lock.release()


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


@pytest.mark.slow
@pytest.mark.parametrize("case", ["under_a_file", "labels_txt_is_a_directory"])
def test_rank0_unable_to_write_stops_every_rank_with_one_sentence(tmp_path, case):
    # Rank 0 fails to lock or write while rank 1 waits for it: both exit 2 at once, rank 0 says why.
    if case == "under_a_file":
        (tmp_path / "afile").write_text("")
        out, message = tmp_path / "afile" / "run", f"cannot lock train.output_dir {tmp_path / 'afile' / 'run'}: [Errno 20] Not a directory"
    else:
        out, message = tmp_path / "run", "cannot write into train.output_dir: [Errno 21] Is a directory"
        (out / "labels.txt").mkdir(parents=True)
    cmd = [*launcher("deepspeed"), "launch/train.py", "--config", "debug_xml_cnn", "--train.output_dir", str(out),
           "--data.cache_dir", str(tmp_path / "cache"), "--train.max_steps", "2", "--train.progress", "false",
           "--parallel.timeout_minutes", "10"]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.monotonic() - started < 300  # not the process-group timeout
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error: " in line]
    assert len(errors) == 1 and message in errors[0], errors


@pytest.fixture
def no_locks(monkeypatch):
    """A filesystem without locks (Lustre's default noflock, NFS without a lock daemon): flock fails with ENOLCK."""
    import errno
    import fcntl

    import xmtc.runlock as runlock

    def flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.1)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return runlock


def _write_details(out: Path, age_s: float, **info) -> None:
    import json
    import socket

    out.mkdir(parents=True, exist_ok=True)
    details = {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": "", "started": "then", **info}
    (out / LOCK_NAME).write_text(json.dumps(details))
    then = time.time() - age_s
    os.utime(out / LOCK_NAME, (then, then))


def test_without_locks_a_heartbeat_stands_in(tmp_path, no_locks):
    # It was a warning and no guard: a second run into the directory set the first one's files aside as it trained.
    out = tmp_path / "run"
    first = RunLock(out)
    assert first.acquire() is None and first.fd is not None
    assert first.unsupported == (f"{out} cannot be locked (No locks available): a heartbeat in its {LOCK_NAME} stands in "
                                 "(touched every 0.1 s; a second run stops while it is younger than 120 s)")
    then = time.time() - 1000
    os.utime(out / LOCK_NAME, (then, then))
    time.sleep(0.5)
    assert time.time() - (out / LOCK_NAME).stat().st_mtime < 5  # touched again by the heartbeat
    second = RunLock(out)
    for refusal in (second.holder(), second.acquire()):
        assert refusal is not None and refusal.startswith(f"pid {os.getpid()} on host ")
        assert "its lock file was touched 0 s ago (no locks on this filesystem: a heartbeat stands in)" in refusal
    assert second.fd is None
    assert first.still_held()
    first.release()
    assert (out / LOCK_NAME).read_text() == ""
    assert second.holder() is None and second.acquire() is None  # released: the next run takes it
    second.release()


def test_without_locks_a_gone_holder_is_taken_over(tmp_path, no_locks, monkeypatch):
    out = tmp_path / "run"
    # Another node's run, touched 10 s ago: alive; 200 s ago (past STALE_S): gone.
    _write_details(out, 10, host="xmtc-other-node", pid=1)
    refusal = RunLock(out).acquire()
    assert refusal is not None and refusal.startswith("pid 1 on host xmtc-other-node, since then; its lock file was touched 10 s ago")
    _write_details(out, 200, host="xmtc-other-node", pid=1)
    lock = RunLock(out)
    assert lock.acquire() is None and f'"pid": {os.getpid()}' in (out / LOCK_NAME).read_text()
    lock.release()
    # This host's run whose process is gone (killed): taken over at once, however fresh its heartbeat.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_details(out, 0, pid=int(gone.stdout))
    lock = RunLock(out)
    assert lock.holder() is None and lock.acquire() is None
    lock.release()
    # This SLURM job's earlier start (a requeue after a node failure: the restart count grew): never alive; another
    # step of the same start (the same count) is a run like any other.
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _write_details(out, 0, host="xmtc-other-node", pid=1, slurm_job="4242", slurm_restart=1)
    assert RunLock(out).acquire() is not None
    _write_details(out, 0, host="xmtc-other-node", pid=1, slurm_job="4242", slurm_restart=0)
    lock = RunLock(out)
    assert lock.acquire() is None and '"slurm_restart": 1' in (out / LOCK_NAME).read_text()
    lock.release()
