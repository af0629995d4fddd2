"""The on-disk corpus cache: one directory per key, built once under a lock, published by a rename.

The key hashes everything that changes the cached result (see `xmtc.data.loader.cache_inputs`).
A build writes into a temporary sibling directory and renames it into place, so a directory named
after a key is always complete: a crash leaves only a temporary directory, removed by the next build,
and an existing cache is never written to. Ranks that start together wait on one file lock; the first
builds, the others find the finished directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from xmtc.config import DataError
from xmtc.io import atomic_write_json

CACHE_VERSION = 2
"""Bump when the cached layout or the tokenization/reading code changes what a cache holds."""
COMPLETE_MARKER = "meta.json"
"""Written last inside the temporary directory; the rename happens only after it exists."""


def file_fingerprint(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """A file's identity for the cache key: its size and the sha256 of its content.

    Content, not path and modification time: a copy of the data elsewhere keeps its cache, and an
    edit that keeps the size and the mtime (`cp -p`, `rsync -t`, `tar x`) cannot serve a stale one.
    The hash is remembered under `memo_dir` by the file's path, device, inode, size, mtime and ctime
    (which no copy tool can set back), so a cache hit does not read the data again.
    """
    p = Path(path).resolve()
    st = os.stat(p)
    memo = None
    if memo_dir is not None:
        ident = f"{p}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
        memo = Path(memo_dir) / "file_hashes" / f"{hashlib.sha256(ident.encode()).hexdigest()[:24]}.json"
        try:
            known = json.loads(memo.read_text())
            if known.get("size") == st.st_size and isinstance(known.get("sha256"), str):
                return known
        except (OSError, ValueError, AttributeError):
            pass
    digest = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e})") from e
    fingerprint = {"size": st.st_size, "sha256": digest.hexdigest()}
    if memo is not None:
        try:
            atomic_write_json(memo, fingerprint)
        except OSError:  # a read-only shared cache: hash again next time
            pass
    return fingerprint


def cache_key(inputs: dict[str, Any]) -> str:
    blob = json.dumps({"cache_version": CACHE_VERSION, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)  # a directory too: its entries
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then each directory: the rename that publishes a cache must not reach
    the disk before its files do (a power cut would leave a cache marked complete with a file cut short)."""
    for dirpath, _, files in os.walk(directory):
        for name in [*files, "."]:
            _fsync(os.path.join(dirpath, name))


def build_once(root: str | os.PathLike, key: str, inputs: dict[str, Any], build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The cache directory for `key`, built by `build(tmp_dir)` unless it exists -> (path, was_cached).

    `build` must write COMPLETE_MARKER as its last step.
    """
    root = Path(root)
    final = root / key
    if _is_complete(final):
        return final, True
    lock = FileLock(str(root / f"{key}.lock"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as e:
        raise DataError(f"the cache directory {root} (config key 'data.cache_dir') cannot be written ({e.strerror}) and "
                        "holds no complete copy of what this run needs; point data.cache_dir at a writable directory") from e
    try:
        if _is_complete(final):  # another process built it while we waited
            return final, True
        for stale in root.glob(f".tmp-{key}-*"):  # left by a crashed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # not complete, so not ours to trust: a leftover of an older layout
            shutil.rmtree(final)
        tmp = root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            (tmp / "key.json").write_text(json.dumps({"key": key, "cache_version": CACHE_VERSION, **inputs}, indent=2, default=str))
            build(tmp)
            if not _is_complete(tmp):
                raise RuntimeError(f"corpus build into {tmp} finished without writing {COMPLETE_MARKER}")
            _sync_tree(tmp)
            try:
                os.rename(tmp, final)
                _fsync(root)  # the rename itself
            except OSError:
                if not _is_complete(final):
                    raise
                # Only a process that bypassed the lock (a filesystem without locks) can get here: use its copy.
                shutil.rmtree(tmp, ignore_errors=True)
                return final, True
        except OSError as e:  # a write into the cache failed: a full disk, a quota (reading errors are DataErrors)
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"the cache directory {root} (config key 'data.cache_dir') could not be written ({e.strerror or e}); "
                            "free space there or point data.cache_dir at another directory") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        lock.release()
    return final, False
