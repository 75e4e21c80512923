"""The weekly highlight picture: a grid of portraits, each with a caption under it (Pillow only)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from engine.provenance import mark

TILE = 384
CAPTION_HEIGHT = 40


def render_collage(tiles: list[tuple[Path, str]], data_dir: Path, tile: int = TILE) -> bytes:
    """A PNG with up to 2 columns of `tile`-pixel portraits, each captioned (e.g. '#1 · 12 likes'), marked as made
    by AI (its signing key lives in `data_dir`)."""
    if not tiles:
        raise ValueError("a collage needs at least one portrait")
    columns = 1 if len(tiles) == 1 else 2
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * (tile + CAPTION_HEIGHT)), (24, 25, 28))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=22)
    for index, (path, caption) in enumerate(tiles):
        x, y = (index % columns) * tile, (index // columns) * (tile + CAPTION_HEIGHT)
        with Image.open(path) as portrait:
            sheet.paste(portrait.convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS), (x, y))
        draw.text((x + 12, y + tile + 8), caption, fill=(240, 240, 240), font=font)
    return mark(sheet, "PNG", data_dir, "highlights", optimize=True)
