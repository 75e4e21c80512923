"""Drawing a style's preview: one sample on the base model, no member's face. Kept apart from
engine/generation/previews.py, which the bot reads to show previews and which loads no model code."""

from __future__ import annotations

import io
from pathlib import Path

from engine.config import Settings
from engine.generation.generate import PortraitRequest
from engine.generation.previews import PREVIEW_SEED, PREVIEW_TRIGGER, save_preview
from engine.styles import Style


def draw_preview_image(generator, size: int, style: Style) -> bytes:
    """One sample of `style` on the base model, as PNG bytes (anywhere: no data folder)."""
    request = PortraitRequest(style=style, trigger=PREVIEW_TRIGGER, face_model=None, count=1, seed=PREVIEW_SEED,
                              size=size)
    [candidate] = generator.generate(request)
    buffer = io.BytesIO()
    candidate.image.save(buffer, "PNG")
    return buffer.getvalue()


def draw_preview(generator, settings: Settings, style: Style) -> Path:
    """Draw a style's preview and keep it as the cached one."""
    return save_preview(settings, style.id, draw_preview_image(generator, settings.portrait_size_for(generator.base.family.name), style))
