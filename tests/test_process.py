"""xmtc.process.exit_process: a launched rank ends as Python's exit would, without the interpreter's teardown."""

from __future__ import annotations

import subprocess
import sys

from launch_helpers import ROOT, env

SCRIPT = """
import atexit, os, sys, threading, time
from pathlib import Path
import torch, torch.distributed as dist
from xmtc.process import exit_process

out = Path(sys.argv[1])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
group = dist.group.WORLD  # held, as DeepSpeed holds its groups: gloo's worker threads stay alive
threads_alive = len(os.listdir("/proc/self/task"))

def late_writer():
    time.sleep(0.3)
    (out / "thread").write_text("joined")

threading.Thread(target=late_writer).start()
atexit.register(lambda: (out / "atexit").write_text("ran"))
print(f"threads {threads_alive}", end="")  # no newline: only a flush gets it out of the pipe's buffer
exit_process(7)
raise SystemExit("exit_process returned")
"""


def test_exit_process_joins_threads_runs_atexit_flushes_and_keeps_the_code(tmp_path):
    from xmtc.distributed import free_port

    buffered = {k: v for k, v in env().items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(free_port())], cwd=ROOT, env=buffered,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert proc.stdout.startswith("threads ") and int(proc.stdout.split()[1]) > 1, proc.stdout
    assert (tmp_path / "thread").read_text() == "joined"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert "exit_process returned" not in proc.stderr
