"""Sharper x2: a portrait drawn again at twice the size, on the same base, style and face LoRA
(img2img at a low strength, so the picture stays the same picture, with the VAE in tiles), then
fused and ranked again. No extra model to download."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from engine.config import Settings
from engine.errors import FaceChainError
from engine.faces import FaceAnalyzer
from engine.generation.generate import Candidate, PortraitGenerator, build_negative_prompt, build_prompt
from engine.generation.portrait import (
    ALL_HELD_BACK,
    DrawnPortraits,
    PortraitInputs,
    SavedPortrait,
    enrolled_face_from,
    face_model_folder,
    portrait_inputs,
    record_portraits,
    screen,
)
from engine.models.safety import SafetyChecker
from engine.postprocess import RankedPortrait, make_fuser, rank_candidates
from engine.store import Store
from engine.store.families import check_draws_scenes
from engine.styles import StyleCatalogue

STRENGTH = 0.35
FACTOR = 2


def find_portrait(store: Store, user_id: str, portrait: str | int) -> dict:
    """The user's portrait row, by id or by the path `portrait --json` printed."""
    if isinstance(portrait, int) or str(portrait).isdigit():
        row = store.portrait(int(portrait))
    else:
        path = Path(portrait).resolve()
        rows = [r for r in store.db["portraits"].rows_where("user_id = ?", [user_id])
                if store.absolute(r["path"]).resolve() == path or Path(r["path"]).resolve() == path]
        row = rows[0] if rows else None
    if row is None or row["user_id"] != user_id:
        raise FaceChainError(f"No portrait {portrait} of {user_id}: pass a path from `facechain portrait --json`.")
    return row


@dataclass
class UpscaleInputs:
    portrait: PortraitInputs  # the portrait's style, trigger, face model and the member's enrolled face
    image: bytes  # the portrait as drawn
    seed: int


def upscale_inputs(store: Store, settings: Settings, catalogue: StyleCatalogue, user_id: str, portrait: str | int,
                   show_flagged: bool = False) -> UpscaleInputs:
    check_draws_scenes(store)  # SD1.5's img2img
    row = find_portrait(store, user_id, portrait)
    source = Path(row["path"]) if Path(row["path"]).is_absolute() else store.absolute(row["path"])
    if not source.is_file():
        raise FaceChainError("That portrait's file is gone: ask for new portraits.")
    if catalogue.get(row["style"]) is None:
        raise FaceChainError(f"The style {row['style']!r} of that portrait no longer exists.")
    request = portrait_inputs(store, settings, catalogue, user_id, row["style"], count=1, seed=row["seed"],
                              show_flagged=show_flagged, fast=False)
    return UpscaleInputs(request, source.read_bytes(), row["seed"])


def draw_upscaled(generator: PortraitGenerator, analyzer: FaceAnalyzer, settings: Settings, inputs: UpscaleInputs,
                  safety: SafetyChecker | None = None, on_step=None) -> DrawnPortraits:
    """The portrait drawn again at twice the size, fused, ranked and screened (anywhere: no store)."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    image = Image.open(io.BytesIO(inputs.image)).convert("RGB")
    size = (image.width * FACTOR, image.height * FACTOR)
    style, trigger = inputs.portrait.request.style, inputs.portrait.request.trigger
    base = generator.base
    with face_model_folder(inputs.portrait.face_model) as folder:
        generator._activate(replace(inputs.portrait.request, face_model=folder, size=size[0]))  # same LoRAs, sampler
        img2img = generator.derived_pipeline(StableDiffusionImg2ImgPipeline)
        vae = base.pipeline.vae
        vae.enable_tiling()  # a 1024 px decode in tiles keeps the memory of a 512 px one
        steps = style.sampler.steps
        callback = None
        if on_step is not None:
            def callback(pipe, step, timestep, kwargs):
                on_step(step + 1, max(1, int(steps * STRENGTH)))
                return kwargs
        try:
            with generator.drawing_with(img2img):
                drawn = img2img(prompt=build_prompt(trigger, style), negative_prompt=build_negative_prompt(style),
                                image=image.resize(size, Image.Resampling.LANCZOS), strength=STRENGTH,
                                num_inference_steps=steps, guidance_scale=style.sampler.guidance,
                                generator=torch.Generator().manual_seed(inputs.seed),
                                callback_on_step_end=callback).images[0]
        finally:
            if not base.plan.vae_tiling:
                vae.disable_tiling()
    enrolled = enrolled_face_from(analyzer, inputs.portrait.face)
    ranked = rank_candidates(analyzer, [Candidate(drawn, inputs.seed)], enrolled, make_fuser(settings, analyzer))
    kept, held_back = screen(safety, ranked[:1] or [RankedPortrait(drawn, inputs.seed, None)],
                             inputs.portrait.show_flagged)
    return DrawnPortraits(kept, ALL_HELD_BACK if held_back else None, held_back)


def upscale(store: Store, generator: PortraitGenerator, analyzer: FaceAnalyzer, settings: Settings,
            catalogue: StyleCatalogue, user_id: str, portrait: str | int, out_dir: Path | None = None,
            job_id: int | None = None, on_step=None) -> SavedPortrait:
    inputs = upscale_inputs(store, settings, catalogue, user_id, portrait)
    drawn = draw_upscaled(generator, analyzer, settings, inputs, on_step=on_step)
    [saved] = record_portraits(store, inputs.portrait, drawn, out_dir, job_id).portraits
    return saved
