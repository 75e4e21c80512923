"""How much memory this process has needed: logged when the bot and the worker stop, read by bench/."""

from __future__ import annotations

import sys
from pathlib import Path


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB; None where the OS does not report it."""
    status = Path("/proc/self/status")
    if status.exists():
        # Linux: VmHWM belongs to this program. ru_maxrss would also count the parent's pages this
        # process had between fork and exec (hundreds of MB when a big process starts a small one).
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def set_aside_for_life() -> None:
    """Hide what this process holds now (the libraries, the base model) from Python's cycle collector, for a
    process that keeps them for its life (the worker, a cluster actor): a collection then looks at the objects
    jobs made only. With diffusers and transformers imported that is some 430,000 objects fewer, 350 ms a full
    collection on a fast CPU, which the end of every job paid (bench/cluster.py). What is set aside is still freed
    when nothing refers to it; only cycles among it would outlive it, and it lives as long as the process."""
    import gc

    gc.collect()
    gc.freeze()
