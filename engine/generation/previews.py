"""Style previews: one sample per style drawn with the base model (no member's face), cached
under `<data>/cache/previews/<style>.png`, shown by `/facechain styles`.

`facechain styles previews` draws the missing ones (engine/generation/preview_drawing.py); on a
GPU machine the worker queues a preview job per missing style when it starts, at the lowest
priority (members' jobs always go first).
"""

from __future__ import annotations

from pathlib import Path

from engine.config import Settings
from engine.store.store import SYSTEM_USER
from engine.styles import Style, StyleCatalogue

PREVIEW_SEED = 1234
PREVIEW_TRIGGER = "a person"
PREVIEW_USER = SYSTEM_USER  # preview jobs are the system's, not a member's


def preview_file(settings: Settings, style_id: str) -> Path:
    return settings.data_dir / "cache" / "previews" / f"{style_id}.png"


def shown_preview(settings: Settings, catalogue: StyleCatalogue, style: Style) -> Path | None:
    """The image to show for a style: the one its file names, else the drawn one, else None."""
    shipped = catalogue.preview_path(style)
    if shipped is not None:
        return shipped
    drawn = preview_file(settings, style.id)
    return drawn if drawn.is_file() else None


def missing_previews(settings: Settings, catalogue: StyleCatalogue) -> list[Style]:
    return [style for style in catalogue.styles.values() if shown_preview(settings, catalogue, style) is None]


def save_preview(settings: Settings, style_id: str, png: bytes) -> Path:
    """Keep a drawn preview as the style's cached one (written whole, marked as made by AI)."""
    import io

    from PIL import Image

    from engine.provenance import mark

    path = preview_file(settings, style_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp.png")
    scratch.write_bytes(mark(Image.open(io.BytesIO(png)), "PNG", settings.data_dir, f"{style_id} preview"))
    scratch.replace(path)
    return path
