"""What every script in bench/ shares: its command line, its timing helpers and its JSON output."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path


def bench_arguments(doc: str) -> argparse.ArgumentParser:
    """A parser with the options `facechain bench` passes to every script."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (a minute or two)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here as JSON")
    return parser


def write_figures(path: Path | None, figures: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2))


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def best_seconds(action: Callable[[], object], rounds: int) -> float:
    """The fastest of `rounds` runs: the least disturbed by other work on a shared machine."""
    return min(seconds(action) for _ in range(max(1, rounds)))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
