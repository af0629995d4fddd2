"""What the end-to-end tests share: the launchers users run, the training command, a pseudo-terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def env() -> dict:
    e = dict(os.environ)
    e.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    e["PYTHONUNBUFFERED"] = "1"
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    return e


def launcher(kind: str) -> list[str]:
    if kind == "deepspeed":
        # The module form of the `deepspeed` command: found whether deepspeed sits in a venv or the system.
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(_port())]
    if kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port())]
    return [sys.executable]


def _port() -> int:
    from xmtc.distributed import free_port

    return free_port()


def train_cmd(out: Path, *overrides: str, kind: str = "deepspeed") -> list[str]:
    return [*launcher(kind), "launch/train.py", "--config", "debug_xml_cnn",
            "--train.output_dir", str(out), "--data.cache_dir", str(out.parent / "cache"), *overrides]


def run_train(out: Path, *overrides: str, kind: str = "deepspeed") -> dict:
    proc = subprocess.run(train_cmd(out, *overrides, kind=kind), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "final_metrics.json").read_text())


def losses(out: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def shm_workspaces() -> set[str]:
    from xmtc.distributed import SHM_DIR, SHM_PREFIX

    return {p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}_*")} if SHM_DIR.is_dir() else set()


def stderr_on_a_terminal(cmd: list[str], columns: int = 100) -> tuple[int, str]:
    """(exit code, what `cmd` wrote to its stderr) with stderr a pseudo-terminal `columns` wide (a new pty is 0 wide)."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return proc.wait(timeout=600), seen.decode(errors="replace")
