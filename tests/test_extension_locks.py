"""DeepSpeed's CPU op build: a rank killed while DeepSpeed JIT-loads it must not hang every later run
(xmtc.distributed.stale_extension_locks_cleared, around deepspeed.init_distributed), and the minute of its first build
is announced, not silent (xmtc.distributed.shm_op_to_build)."""

from __future__ import annotations

import os
import threading
import time

from torch.utils.file_baton import FileBaton

from xmtc.distributed import remove_stale_extension_locks, stale_extension_locks_cleared


def _lock(root, name, age_s):
    path = root / name / "lock"
    path.parent.mkdir(parents=True)
    path.touch()
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_only_locks_older_than_the_threshold_are_removed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    old = _lock(tmp_path, "deepspeed_shm_comm", age_s=400)
    fresh = _lock(tmp_path, "other_op", age_s=10)  # a build in progress keeps its lock
    nested = _lock(tmp_path / "py311_cpu", "deepspeed_shm_comm", age_s=1000)  # torch's default layout
    assert sorted(remove_stale_extension_locks(300)) == sorted([old, nested])
    assert not old.exists() and not nested.exists() and fresh.exists()
    assert "removed" in capsys.readouterr().err


def test_a_long_build_keeps_its_lock(tmp_path):
    """A build running for longer than the threshold (ninja and the compilers work in the op's directory)
    keeps its lock; once it is over, the lock goes after the threshold, counted from the build's end."""
    import subprocess

    lock = _lock(tmp_path, "deepspeed_shm_comm", age_s=400)
    compiler = subprocess.Popen(["sleep", "30"], cwd=lock.parent / ".")  # what torch's ninja run looks like
    last_busy: dict = {}
    try:
        assert remove_stale_extension_locks(300, tmp_path, last_busy) == [] and lock.exists()
        assert remove_stale_extension_locks(0.5, tmp_path, last_busy) == [] and lock.exists()
    finally:
        compiler.kill()
        compiler.wait()
    assert remove_stale_extension_locks(0.5, tmp_path, last_busy) == [] and lock.exists()  # just seen building
    time.sleep(0.7)
    assert remove_stale_extension_locks(0.5, tmp_path, last_busy) == [lock] and not lock.exists()


def test_a_process_waiting_on_a_dead_holders_lock_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = _lock(tmp_path, "deepspeed_shm_comm", age_s=2)
    baton = FileBaton(str(lock), wait_seconds=0.05)
    assert not baton.try_acquire()  # torch's loader would now wait for the holder, which is gone
    waiter = threading.Thread(target=baton.wait)
    started = time.monotonic()
    with stale_extension_locks_cleared(stale_after_s=1.0, poll_s=0.1):
        waiter.start()
        waiter.join(timeout=10)
    assert not waiter.is_alive() and time.monotonic() - started < 5
    assert not lock.exists()


def test_the_watch_thread_imports_nothing(tmp_path):
    """The thread runs beside the main thread's imports of DeepSpeed's op builders; an import in it
    (torch.utils.cpp_extension pulls in setuptools and its distutils finder) once deadlocked a rank
    for good in CI. A fresh interpreter logs which thread asks the import system for what."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import os, sys, threading, time
        os.environ["TORCH_EXTENSIONS_DIR"] = {str(tmp_path)!r}
        import xmtc.distributed as d
        assert "torch.utils.cpp_extension" not in sys.modules, "imported too early to tell"
        seen = []
        class Log:
            def find_spec(self, name, path=None, target=None):
                seen.append((threading.current_thread().name, name))
                return None
        sys.meta_path.insert(0, Log())
        with d.stale_extension_locks_cleared(poll_s=0.05):
            time.sleep(0.5)
        print(sorted({{n for t, n in seen if t == "xmtc-extension-locks"}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", f"the watch thread imported: {proc.stdout.strip()}"


def test_the_first_build_of_the_shm_op_is_announced_and_a_built_one_is_not(tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    from xmtc.distributed import shm_op_to_build

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    where = shm_op_to_build()
    assert where == tmp_path / "deepspeed_shm_comm"  # CPU DeepSpeed here: the op is compatible and not prebuilt
    (where / "deepspeed_shm_comm.so").write_bytes(b"")
    assert shm_op_to_build() is None
    # setup() says it on stderr before DeepSpeed compiles (init_distributed stands in for the build here).
    script = (
        "import sys, deepspeed, xmtc.distributed as d\n"
        "from xmtc.config import ParallelConfig\n"
        f"d.shm_op_to_build = lambda: __import__('pathlib').Path({str(tmp_path / 'fresh')!r})\n"
        "def built(**kw): raise SystemExit(3)\n"
        "deepspeed.init_distributed = built\n"
        "d.setup(ParallelConfig(), 'cpu')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")})
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert (f"building DeepSpeed's CPU shared-memory op in {tmp_path / 'fresh'} (once per machine and DeepSpeed version: "
            "about a minute on a small CPU machine)") in proc.stderr.splitlines()
