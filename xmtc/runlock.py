"""One run per output directory.

Two runs writing one `train.output_dir` destroy each other: the second sets the first's files aside
(or, resuming, loads its checkpoint) while the first still writes checkpoints, metrics and the
`latest` pointer. So rank 0 holds an exclusive `flock` on `OUTPUT_DIR/.xmtc-run.lock` from the
moment the run first writes there until it ends, and a run that finds the lock held stops with one
sentence naming the holder (pid, host, SLURM job, start time), before it reads its data and again
before it writes anything.

flock locks die with their process (a killed run leaves no stale lock) and are seen across the
nodes of NFS (Linux emulates them with NFS byte-range locks) and of Lustre mounted with `-o flock`.
On a filesystem without locks (Lustre's default `noflock`, an NFS mount without a lock daemon) a
heartbeat stands in: rank 0 writes its details into the lock file and touches it every HEARTBEAT_S
seconds, and a second run stops while the file holds another run's details that are alive: touched
within STALE_S seconds, and, on this host, of a process that still exists (a killed run on the same
host is gone at once; one on another node after STALE_S). An earlier start of the same SLURM job (a
requeue: SLURM_RESTART_COUNT grew) is never alive; another step of the same start is judged like any run. Two runs starting within a moment of each other can both pass (each re-reads
the file after writing it, which narrows the window but cannot close it without locks). After a node failure an NFS server keeps the dead node's lock until its lease
ends (NFSv4: 90 s by default), so a requeued job (SLURM_RESTART_COUNT > 0) waits for the lock
(XMTC_LOCK_WAIT_S, default 300 s there, 0 elsewhere) before it gives up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from xmtc.config import UserError
from xmtc.io import atomic_write_text

LOCK_NAME = ".xmtc-run.lock"
HEARTBEAT_S = 15.0
"""Without locks: how often the holder touches its lock file."""
STALE_S = 120.0
"""Without locks: a lock file untouched for this long holds a run that is gone (eight heartbeats missed)."""


class OutputDirError(UserError):
    """The output directory cannot be locked or written; the launcher prints the sentence and exits with 2."""


class DirectoryInUse(OutputDirError):
    """Another process holds the output directory's lock."""


def lock_wait_s() -> float:
    """How long a run waits for a held lock: XMTC_LOCK_WAIT_S, else 300 s in a requeued SLURM job, else 0."""
    given = os.environ.get("XMTC_LOCK_WAIT_S", "")
    try:
        restarted = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
        return max(0.0, float(given)) if given else (300.0 if restarted else 0.0)
    except ValueError:
        raise OutputDirError(f"XMTC_LOCK_WAIT_S is '{given}'; give the seconds a run waits for its output directory's lock") from None


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8")
        if not text:  # a run that is taking the lock now, or one that is only checking it
            return "a run that is starting"
        info = json.loads(text)
        where = f"pid {info['pid']} on host {info['host']}"
        if info.get("slurm_job"):
            where += f", SLURM job {info['slurm_job']}"
        return where + f", since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # written half (the holder is just starting) or by hand
        return "another process"


def _details(fd: int) -> tuple[dict | None, float]:
    """The lock file's details (None when empty or unreadable) and its modification time."""
    try:
        mtime = os.fstat(fd).st_mtime
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8") or "null")
        return (info if isinstance(info, dict) else None), mtime
    except (OSError, ValueError):
        return None, 0.0


def _restart_count() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def heartbeat_alive(info: dict | None, mtime: float) -> bool:
    """Without locks: whether the run whose details a lock file holds still runs (see the module docstring)."""
    if not info:
        return False
    def number(key: str) -> int:  # details written by hand may hold anything
        try:
            return int(info.get(key, 0) or 0)
        except (TypeError, ValueError, OverflowError):
            return 0

    job = os.environ.get("SLURM_JOB_ID", "")
    if job and str(info.get("slurm_job", "")) == job and number("slurm_restart") < _restart_count():
        return False  # this job's earlier start: SLURM ended it before it requeued the job (job steps of one start stay alive)
    if time.time() - mtime >= STALE_S:
        return False
    if info.get("host") == socket.gethostname() and (pid := number("pid")) > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OverflowError):  # another user's process; a pid no process can have
            return True
    return True


def _heartbeat_holder(fd: int) -> str:
    return _holder(fd) + f"; its lock file was touched {time.time() - os.fstat(fd).st_mtime:.0f} s ago (no locks on this filesystem: a heartbeat stands in)"


def in_use_message(out: Path, holder: str) -> str:
    return (f"train.output_dir {out} is in use by another run ({holder}); wait for it to end, stop it, or give this "
            "run another train.output_dir")


def _no_locks(e: OSError) -> bool:
    return e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class RunLock:
    """The lock of one output directory, as rank 0 sees it."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self.fd: int | None = None
        self.writable = False
        self.unsupported = ""
        self._beating: threading.Event | None = None

    def holder(self) -> str | None:
        """Who holds the lock (a description), or None when nobody does; creates nothing."""
        if self.fd is not None:
            return None
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:  # no lock file (no run was here), or one this user cannot open: the writes will say
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        except OSError as e:
            return _heartbeat_holder(fd) if _no_locks(e) and heartbeat_alive(*_details(fd)) else None
        finally:
            os.close(fd)  # releases the probe's lock, if it got one
        return None

    def acquire(self) -> str | None:
        """Take the lock (creating the directory and the file); returns the holder when another run has it."""
        if self.fd is not None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writable = True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's lock file (0644) in a shared directory: flock needs no write access
            fd = os.open(self.path, os.O_RDONLY)
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            return holder
        except OSError as e:
            if not _no_locks(e) and not (e.errno == errno.EBADF and not writable):  # NFS: a write lock needs a writable file
                os.close(fd)
                raise
            alive = heartbeat_alive(*_details(fd))
            holder = _heartbeat_holder(fd) if alive else None
            os.close(fd)
            if holder is not None:
                return holder
            why = os.strerror(e.errno)
            if not writable:
                self.unsupported = f"{self.path.parent} cannot be locked ({why}) nor its lock file written: a second run into it would not be stopped"
                return None
            return self._take_without_locks(why)
        self.fd, self.writable = fd, writable
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self._info()).encode("utf-8"), 0)
        return None

    @staticmethod
    def _info() -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID", ""),
                "slurm_restart": _restart_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "token": uuid.uuid4().hex}

    def _take_without_locks(self, why: str) -> str | None:
        """Write this run's details into the lock file (replacing it whole), read them back after a moment (a run that
        wrote at the same time wins if its details are there), and touch the file every HEARTBEAT_S seconds."""
        info = self._info()
        atomic_write_text(self.path, json.dumps(info))
        time.sleep(min(0.2, HEARTBEAT_S))
        fd = os.open(self.path, os.O_RDWR)
        there, _ = _details(fd)
        if not there or there.get("token") != info["token"]:
            holder = _heartbeat_holder(fd)
            os.close(fd)
            return holder
        self.fd, self.writable = fd, True
        self.unsupported = (f"{self.path.parent} cannot be locked ({why}): a heartbeat in its {LOCK_NAME} stands in (touched "
                            f"every {HEARTBEAT_S:g} s; a second run stops while it is younger than {STALE_S:g} s)")
        self._beating = threading.Event()
        # The thread's own descriptor: release closes the run's while a beat may be under way.
        threading.Thread(target=self._beat, args=(os.dup(fd), self._beating), name="xmtc-lock-heartbeat", daemon=True).start()
        return None

    @staticmethod
    def _beat(fd: int, stop: threading.Event) -> None:
        try:
            while not stop.wait(HEARTBEAT_S):
                with contextlib.suppress(OSError):  # the file is gone (its directory removed): nothing to touch
                    os.utime(fd)
        finally:
            os.close(fd)

    def still_held(self) -> bool:
        """Whether the lock file this run holds is still the one at its path: false once the output directory was
        removed, moved or replaced during the run (its writes would make a new, partial directory there). True when
        nothing is held (a lock file this run could not write: nothing to compare)."""
        if self.fd is None:
            return True
        try:
            there = os.stat(self.path)
        except OSError:
            return False
        held = os.fstat(self.fd)
        return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """Give the lock up (the file stays: removing it would let a third run lock a new inode beside a waiter)."""
        if self._beating is not None:
            self._beating.set()
            self._beating = None
        if self.fd is not None:
            if self.writable:  # no details of a finished run for the next holder's refusals to name
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None
