"""Atomic file writes: a reader never sees half a file, and a crash never destroys the old one."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import: os.umask can only be read by setting it


_STREAMS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def named_descriptor(path: str | os.PathLike) -> int | None:
    """The file descriptor a path names as written (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N,
    /proc/<this pid>/fd/N), else None."""
    text = os.path.normpath(os.path.abspath(os.fspath(path)))
    if text in _STREAMS:
        return _STREAMS[text]
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            return int(text[len(prefix):])
    return None


def write_descriptor(fd: int, data: bytes) -> None:
    """All of `data` into open descriptor `fd`, after what Python buffered for it (stdout: the results stream
    while xmtc.process.stdout_for_results holds descriptor 1 for stderr)."""
    from xmtc.process import real_descriptor

    fd = real_descriptor(fd)
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:  # the reader went away (`| head`): as for the results stream, the writing ends quietly
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file renamed over it. A symlink is followed (the file it
    names is replaced, the link kept). A path naming an open descriptor (/dev/stdout, /dev/stderr, /dev/fd/N)
    is written into that descriptor, as the shell opened it (`>>` appends; a file behind `2>` is not replaced);
    any other path that names no regular file (a fifo, a device) is written in place, since renaming over it
    would put a file where it was."""
    fd = named_descriptor(path)
    if fd is not None:
        write_descriptor(fd, data)
        return
    path = Path(os.path.realpath(path))
    if path.is_dir():  # before a temporary file is made beside it, in a directory the caller did not name
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if path.exists() and not path.is_file():
        with open(path, "wb") as f:
            f.write(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777  # a rewritten file keeps its mode
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK  # what open() would give a new file (mkstemp's is 0600)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """One line per record, flushed: a crash loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())
