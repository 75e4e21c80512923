"""Scratch folders of a worker or a cluster actor: named by their process, and swept at start when
that process is gone. A killed process leaves selfie crops and face-model weights in them, which
must not stay on a GPU machine's disk."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)
# facechain-train-<pid>-<random> (a training), facechain-faces-<pid> (face models unpacked for a drawing),
# facechain-actor-<pid>-<random> (an actor's own data folder).
SCRATCH_NAME = re.compile(r"^facechain-(?:train|faces|actor)-(?P<pid>\d+)(?:-.*)?$")
# Trainings of versions before folders carried their process: swept once a day old (no training runs that long).
LEGACY_TRAIN_NAME = re.compile(r"^facechain-train-(?!\d+-)[\w]{8}$")
LEGACY_AGE_SECONDS = 24 * 3600


def scratch_prefix(kind: str) -> str:
    """The prefix of this process's scratch folders of `kind` (train, actor), for tempfile."""
    return f"facechain-{kind}-{os.getpid()}-"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale_scratch(root: Path | None = None) -> list[Path]:
    """Delete the scratch folders of processes of this machine that are gone; returns what went."""
    root = root or Path(tempfile.gettempdir())
    swept = []
    for entry in root.iterdir() if root.is_dir() else []:
        found = SCRATCH_NAME.match(entry.name)
        stale = found is not None and int(found["pid"]) != os.getpid() and not process_alive(int(found["pid"]))
        legacy = LEGACY_TRAIN_NAME.match(entry.name) and time.time() - entry.stat().st_mtime > LEGACY_AGE_SECONDS
        if (stale or legacy) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            swept.append(entry)
    if swept:
        log.info("deleted %s scratch folder(s) of stopped processes", len(swept))
    return swept
