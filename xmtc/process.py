"""How a launched process ends."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import TextIO


def exit_process(code: int) -> None:
    """End this process with `code` the way Python would, without destroying the interpreter.

    Python's teardown destroys the objects left, gloo's process groups and their still-running
    worker threads among them, and a rank that had finished its run aborted there now and then
    ("terminate called without an active exception", SIGABRT: twice in CI in 2-rank ZeRO-1/2 runs that
    had written their final metrics, which the launchers reported as failures). So: join the
    non-daemon threads and run the atexit handlers as Python's exit does (monitors flush, temporary
    directories go), flush the standard streams, then leave with os._exit; the kernel ends the rest.
    """
    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or its reader is gone
                pass
        os._exit(code)


_RESULTS: list[TextIO] = []
"""The results stream of the innermost `stdout_for_results` (the real standard output while descriptor 1 is stderr)."""


def real_descriptor(fd: int) -> int:
    """The descriptor that writing to `fd` means, with what Python buffered for it flushed first: descriptor
    1 inside `stdout_for_results` is its results stream (the real standard output), not stderr."""
    if fd == 1 and _RESULTS:
        _RESULTS[-1].flush()
        return _RESULTS[-1].fileno()
    stream = {1: sys.stdout, 2: sys.stderr}.get(fd)
    if stream is not None:
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    return fd


@contextlib.contextmanager
def stdout_for_results() -> Iterator[TextIO]:
    """The process's standard output for its results alone: inside, file descriptor 1 (and so `sys.stdout`,
    and what C code or a library's logger writes there: DeepSpeed's) points at stderr; the stream yielded
    writes to the real standard output. A reader that went away (`| head`) ends the writing quietly."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    results = open(saved, "w", encoding="utf-8", closefd=True)
    _RESULTS.append(results)
    try:
        yield results
        results.flush()
    except BrokenPipeError:
        pass
    finally:
        _RESULTS.remove(results)
        sys.stdout.flush()
        os.dup2(results.fileno(), 1)
        try:
            results.close()
        except BrokenPipeError:
            pass
