"""Resident memory of this process, from /proc (Linux).

`getrusage().ru_maxrss` is not used anywhere: Linux carries a parent's peak RSS into a child across
fork + exec, so a worker started by `multiprocessing` spawn or a launcher reports at least its
parent's peak (measured: a 614 MB parent gives its fresh child ru_maxrss 614 MB, VmHWM 14 MB).
VmHWM belongs to this process's own address space.
"""

from __future__ import annotations


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss_bytes() -> int:
    """Current resident set size (VmRSS)."""
    return _status("VmRSS")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started or since `reset_peak_rss` (VmHWM)."""
    return _status("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (write 5 to /proc/self/clear_refs); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
