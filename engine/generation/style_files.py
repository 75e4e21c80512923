"""Style LoRA files kept on the store's machine (a server's or the owner's styles), named by their content.

Where the store is, a style's LoRA is read from its path, and its adapter is cached by the file's SHA-256,
so a style removed and added again under the same id is drawn with its new file. A cluster's GPU machine
shares no disk with the store: there the file comes only from what it was sent, kept under its hash
(`StyleFileCache`). An actor that lacks it says so (`StyleFileMissing`) before drawing anything, and the
dispatcher sends the file once and runs the job again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from engine.models.references import parse_model_reference
from engine.styles import Style, StyleCatalogue, load_catalogue
from engine.training.files import WEIGHTS_FILE

if TYPE_CHECKING:
    from engine.config import Settings

log = logging.getLogger(__name__)
CACHE_BYTES = 8 << 30  # the style files a GPU machine keeps; the least recently drawn go first


class StyleFileMissing(Exception):
    """A GPU machine was asked to draw a style whose LoRA file it was never sent (or has dropped)."""

    def __init__(self, digest: str, reference: str, weight_name: str | None = None) -> None:
        super().__init__(digest, reference, weight_name)
        self.digest, self.reference, self.weight_name = digest, reference, weight_name

    def __str__(self) -> str:
        return f"the style LoRA {self.reference} (sha256 {self.digest[:12]}) is not on this GPU machine"


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, modified_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """A file's SHA-256, hashed once per version of the file (its size and modification time)."""
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


def local_lora_path(style: Style) -> Path | None:
    """The file of a style whose LoRA is on this machine (None for no LoRA, a hub LoRA, or a missing file)."""
    lora = style.lora
    if lora is None or parse_model_reference(lora.reference).kind != "local":
        return None
    path = Path(lora.reference).expanduser()
    path = path / (lora.weight_name or WEIGHTS_FILE) if path.is_dir() else path
    return path if path.is_file() else None


def with_digests(catalogue: StyleCatalogue) -> StyleCatalogue:
    """The catalogue with each local style LoRA's content hash on it, as jobs read it where the store is:
    the hash travels with the style to whichever machine draws it."""
    for style in catalogue.styles.values():
        if (path := local_lora_path(style)) is not None:
            style.lora.digest = file_digest(path)
    return catalogue


class StyleFileCache:
    """The style files a GPU machine was sent, one file a hash, in a folder of its own scratch space."""

    def __init__(self, folder: Path, max_bytes: int = CACHE_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def path(self, digest: str, reference: str, weight_name: str | None = None) -> Path:
        path = self.folder / f"{digest}.safetensors"
        if not path.is_file():
            raise StyleFileMissing(digest, reference, weight_name)
        os.utime(path)  # drawn now: the last to be dropped
        return path

    def keep(self, digest: str, data: bytes) -> Path:
        """Keep a file sent for `digest` (refused if it is not that file), dropping the least recently drawn
        ones beyond the cache's size."""
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"the style file sent for {digest[:12]} has other content")
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.folder / f"{digest}.safetensors"
        with tempfile.NamedTemporaryFile(dir=self.folder, delete=False, suffix=".part") as handle:
            handle.write(data)
        os.replace(handle.name, path)
        self._trim(keep=path)
        return path

    def _trim(self, keep: Path) -> None:
        files = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for path in files:
            total += path.stat().st_size
            if total > self.max_bytes and path != keep:
                log.info("style cache: dropping %s (over %d MB)", path.name, self.max_bytes >> 20)
                path.unlink(missing_ok=True)


def job_catalogue(settings: Settings, guild_id: str | None = None) -> StyleCatalogue:
    """The styles as a job reads them where the store is: each local LoRA with its content hash."""
    return with_digests(load_catalogue(settings, guild_id))
