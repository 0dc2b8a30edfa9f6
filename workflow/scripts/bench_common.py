"""What the benchmark scripts measure about a process: CPU time and peak memory."""

from __future__ import annotations

import resource


def cpu_s() -> float:
    """CPU seconds of this process: less sensitive than wall time to a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), MB. Not ``ru_maxrss``: on Linux a
    process keeps across ``exec`` the high-water mark of the process that forked it, so a
    benchmark's child would report at least what its parent held."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
