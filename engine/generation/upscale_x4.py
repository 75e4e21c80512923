"""Upscale x4: a portrait four times larger through Real-ESRGAN's RRDB model (a 512 px portrait becomes
2048 px, where FaceChain v3.0.0 ends), its face fused again when that reads more like the member on the
finished picture (each picture measured both ways), then screened like any portrait. Sharper x2 redraws
the portrait with the base model; this one only adds detail, on any base model family."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.config import Settings
from engine.errors import FaceChainError, ModelMissing, ModelUnavailable
from engine.faces import FaceAnalyzer
from engine.generation.generate import Candidate
from engine.generation.portrait import (
    ALL_HELD_BACK,
    DrawnPortraits,
    MemberFace,
    enrolled_face_from,
    member_face,
    screen,
)
from engine.generation.upscale import find_portrait
from engine.models.safety import SafetyChecker
from engine.postprocess import RankedPortrait, make_fuser, rank_candidates
from engine.store import Store

UPSCALER_PROBLEM = "upscaler"


@dataclass
class X4Inputs:
    user_id: str
    style_id: str  # the portrait's, for the new portrait's row
    seed: int
    image: bytes  # the portrait as drawn
    face: MemberFace  # for the fusion and the likeness
    show_flagged: bool


@dataclass
class Upscaled:
    drawn: DrawnPortraits
    fused: bool  # the face was fused again (it read more like the member so)
    likeness_as_upscaled: float | None  # before that choice, for the record
    size: tuple[int, int]


def x4_inputs(store: Store, user_id: str, portrait: str | int, show_flagged: bool = False) -> X4Inputs:
    row = find_portrait(store, user_id, portrait)
    source = Path(row["path"]) if Path(row["path"]).is_absolute() else store.absolute(row["path"])
    if not source.is_file():
        raise FaceChainError("That portrait's file is gone: ask for new portraits.")
    return X4Inputs(user_id, row["style"], row["seed"], source.read_bytes(), member_face(store, user_id), show_flagged)


def load_configured_upscaler(settings: Settings, base=None):
    """FACECHAIN_UPSCALER's network, on the base model's device (or the settings' when it is not loaded): fetched
    when missing; what stops it is the owner's to fix (ModelUnavailable: Upscale x4 requests wait)."""
    import torch

    from engine.models.base_model import current_plan
    from engine.models.device import resolve_device
    from engine.models.files import fetch, upscaler_model
    from engine.postprocess.super_resolution import load_upscaler

    if not settings.upscaler.strip():
        raise ModelUnavailable("Upscale x4 was asked for but FACECHAIN_UPSCALER is empty: set it to "
                               f"{Settings.default('upscaler')} (with FACECHAIN_UPSCALER_FILE="
                               f"{Settings.default('upscaler_file')}) or a local copy.", UPSCALER_PROBLEM)
    try:
        path = fetch(upscaler_model(settings), half=False)
        device = base.device if base is not None else resolve_device(settings.device)
        dtype = (base.plan if base is not None else current_plan(device)).dtype_name
        return load_upscaler(path, torch.device(device), getattr(torch, dtype))
    except ModelMissing as error:
        raise ModelUnavailable(str(error), UPSCALER_PROBLEM) from None


def draw_x4(upscaler, analyzer: FaceAnalyzer, settings: Settings, inputs: X4Inputs,
            safety: SafetyChecker | None = None) -> Upscaled:
    """The portrait upscaled; its face fused again if that reads more like the member; screened (anywhere)."""
    larger = upscaler.upscale(Image.open(io.BytesIO(inputs.image)).convert("RGB"))
    enrolled = enrolled_face_from(analyzer, inputs.face)
    candidate = [Candidate(larger, inputs.seed)]
    as_upscaled = rank_candidates(analyzer, candidate, enrolled, fuser=None)
    fused = rank_candidates(analyzer, candidate, enrolled, fuser=make_fuser(settings, analyzer))
    before = as_upscaled[0].similarity if as_upscaled else None
    fuse_again = bool(fused) and (before is None or fused[0].similarity > before)
    best = fused[0] if fuse_again else (as_upscaled[0] if as_upscaled else RankedPortrait(larger, inputs.seed, None))
    kept, held_back = screen(safety, [best], inputs.show_flagged)
    notice = ALL_HELD_BACK if held_back else None
    return Upscaled(DrawnPortraits(kept, notice, held_back), fuse_again, before, larger.size)
