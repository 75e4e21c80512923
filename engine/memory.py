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
