"""Atomic writes: a new file gets the mode open() would give it, a rewritten one keeps its own, and a
write that fails leaves the old file and no temporary behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from xmtc import io


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_new_file_follows_the_umask(tmp_path, umask, expected):
    target = tmp_path / "meta.json"
    code = f"import os; os.umask({umask}); from xmtc.io import atomic_write_json; atomic_write_json({str(target)!r}, {{'a': 1}})"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert mode(target) == expected and target.read_text() == '{\n  "a": 1\n}\n'


def test_rewrite_keeps_the_mode_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    io.atomic_write_text(target, "old\n")
    os.chmod(target, 0o600)
    io.atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n" and mode(target) == 0o600

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_text(target, "half\n")
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_symlink_is_followed_and_kept(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old\n")
    (tmp_path / "link.txt").symlink_to("real.txt")
    io.atomic_write_text(tmp_path / "link.txt", "new\n")
    assert (tmp_path / "link.txt").is_symlink() and real.read_text() == "new\n"
    # A dangling link: the file it names is created.
    (tmp_path / "dangling.txt").symlink_to("absent.txt")
    io.atomic_write_text(tmp_path / "dangling.txt", "first\n")
    assert (tmp_path / "dangling.txt").is_symlink() and (tmp_path / "absent.txt").read_text() == "first\n"


def test_a_fifo_is_written_into_not_replaced(tmp_path):
    import threading

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    io.atomic_write_text(fifo, "line 1\nline 2\n")
    reader.join(timeout=10)
    assert got == ["line 1\nline 2\n"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]


def test_a_directory_is_refused_and_left_alone(tmp_path):
    (tmp_path / "outdir").mkdir()
    with pytest.raises(OSError):
        io.atomic_write_text(tmp_path / "outdir", "x\n")
    assert (tmp_path / "outdir").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["outdir"]
