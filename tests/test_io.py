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


def test_a_directory_is_refused_and_left_alone(tmp_path, monkeypatch):
    (tmp_path / "outdir").mkdir()
    made = []
    real_mkstemp = io.tempfile.mkstemp
    monkeypatch.setattr(io.tempfile, "mkstemp", lambda **kw: made.append(kw) or real_mkstemp(**kw))
    with pytest.raises(IsADirectoryError, match="outdir"):
        io.atomic_write_text(tmp_path / "outdir", "x\n")
    # Refused before a temporary file was made beside it (in its parent, a directory the caller did not name).
    assert made == []
    assert (tmp_path / "outdir").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["outdir"]


STREAMS_SCRIPT = """
import sys
from xmtc import io
from xmtc.process import stdout_for_results

print("library chatter", flush=True)  # before: on the real stdout
with stdout_for_results() as results:
    print("inside: to stderr")
    results.write("result 1\\n")
    io.atomic_write_text("/dev/stdout", "result 2\\n")  # the real stdout, after result 1
    io.atomic_write_text("/dev/fd/2", "to stderr, appended\\n")
io.atomic_write_text("/proc/self/fd/1", "after\\n")
"""


def test_descriptor_paths_are_written_into_the_streams_the_shell_opened(tmp_path):
    # `--out /dev/stdout` while stdout_for_results held descriptor 1 for stderr went to stderr, and a file
    # behind `2>>` was replaced by the results (its earlier lines lost).
    import subprocess
    import sys

    out, err = tmp_path / "out.txt", tmp_path / "err.log"
    err.write_text("an earlier line\n")
    with open(out, "w") as o, open(err, "a") as e:
        proc = subprocess.run([sys.executable, "-c", STREAMS_SCRIPT], stdout=o, stderr=e, timeout=120)
    assert proc.returncode == 0, err.read_text()
    assert out.read_text() == "library chatter\nresult 1\nresult 2\nafter\n"
    assert err.read_text() == "an earlier line\ninside: to stderr\nto stderr, appended\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["err.log", "out.txt"]


def test_named_descriptors():
    assert [io.named_descriptor(p) for p in ("/dev/stdout", "/dev/stderr", "/dev/fd/7", "/proc/self/fd/1", f"/proc/{os.getpid()}/fd/3")] == [1, 2, 7, 1, 3]
    assert [io.named_descriptor(p) for p in ("/dev/null", "/dev/fd/x", "/proc/1/fd/1" if os.getpid() != 1 else "/tmp", "out.txt")] == [None] * 4
