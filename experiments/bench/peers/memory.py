"""Process memory from /proc (Linux): what a user of either tool sees as the run's resident size."""

from __future__ import annotations

from pathlib import Path


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mib() -> float:
    """Resident set size now."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (VmHWM)."""
    return _status_kib("VmHWM") / 1024
