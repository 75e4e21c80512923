"""What every `facechain` command shares: reading photos, printing JSON or sentences, the store,
download bars, and the `command` helper each group registers its commands with."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from engine.config import Settings
from engine.errors import FaceChainError
from engine.preprocess import UploadedPhoto

console = Console()
USAGE_ERROR = 2
Handler = Callable[[argparse.Namespace, Settings], int]


def command(group, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    """Add one command (with `--json`) to a group of subcommands."""
    sub = group.add_parser(name, help=help_text, description=help_text)
    sub.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sub.set_defaults(handler=handler)
    return sub


def read_photo(path: str) -> UploadedPhoto:
    file = Path(path)
    if not file.is_file():
        raise FaceChainError(f"File not found: {path}")
    return UploadedPhoto(name=path, data=file.read_bytes())


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def report(args: argparse.Namespace, data: object, sentence: str) -> None:
    """The result as JSON with --json, else as a sentence for people."""
    if args.json:
        print_json(data)
    else:
        console.print(sentence)


def open_store(settings: Settings):
    """The store, with the base model's family recorded when the model is on this machine (face models
    of another family are then not drawn with)."""
    from engine.store import Store
    from engine.store.families import sync_family

    store = Store(settings.data_dir)
    sync_family(store, settings, fetch=False)
    return store


def download_bar():
    """A progress callback `(what, bytes done, bytes in all)` that draws one bar per download on stderr."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bars = Progress(TextColumn("getting {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=Console(stderr=True), transient=False)
    tasks: dict[str, int] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks:
            bars.start()
            tasks[what] = bars.add_task(what, total=total)
        bars.update(tasks[what], completed=done, total=total)
        if all(task.finished for task in bars.tasks):
            bars.stop()
    return update
