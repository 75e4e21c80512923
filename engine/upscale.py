"""Sharper x2: a portrait drawn again at twice the size, on the same base, style and face LoRA
(img2img at a low strength, so the picture stays the same picture, with the VAE in tiles), then
fused and ranked again. No extra model to download."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

from PIL import Image

from engine.config import Settings
from engine.errors import FaceChainError
from engine.faces import FaceAnalyzer
from engine.generate import Candidate, PortraitGenerator, PortraitRequest, build_negative_prompt, build_prompt
from engine.portrait import SavedPortrait, enrolled_face, save_portraits
from engine.portrait_request import check_request
from engine.postprocess import RankedPortrait, make_fuser, rank_candidates
from engine.store import Store
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


def upscale(store: Store, generator: PortraitGenerator, analyzer: FaceAnalyzer, settings: Settings,
            catalogue: StyleCatalogue, user_id: str, portrait: str | int, out_dir: Path | None = None,
            job_id: int | None = None, on_step=None) -> SavedPortrait:
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    row = find_portrait(store, user_id, portrait)
    source = Path(row["path"]) if Path(row["path"]).is_absolute() else store.absolute(row["path"])
    if not source.is_file():
        raise FaceChainError("That portrait's file is gone: ask for new portraits.")
    if catalogue.get(row["style"]) is None:
        raise FaceChainError(f"The style {row['style']!r} of that portrait no longer exists.")
    checked = check_request(store, settings, catalogue, user_id, row["style"], 1)
    image = Image.open(source).convert("RGB")
    size = (image.width * FACTOR, image.height * FACTOR)
    request = PortraitRequest(style=checked.style, trigger=checked.trigger, face_model=checked.face_model, count=1,
                              seed=row["seed"], size=size[0])
    generator._activate(request)  # the same face and style LoRAs, and the style's sampler
    base = generator.base
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*safety checker.*")
        img2img = StableDiffusionImg2ImgPipeline(**base.pipeline.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    vae = base.pipeline.vae
    vae.enable_tiling()  # a 1024 px decode in tiles keeps the memory of a 512 px one
    steps = checked.style.sampler.steps
    callback = None
    if on_step is not None:
        def callback(pipe, step, timestep, kwargs):
            on_step(step + 1, max(1, int(steps * STRENGTH)))
            return kwargs
    try:
        drawn = img2img(prompt=build_prompt(checked.trigger, checked.style),
                        negative_prompt=build_negative_prompt(checked.style),
                        image=image.resize(size, Image.Resampling.LANCZOS), strength=STRENGTH,
                        num_inference_steps=steps, guidance_scale=checked.style.sampler.guidance,
                        generator=torch.Generator().manual_seed(row["seed"]), callback_on_step_end=callback).images[0]
    finally:
        if not base.plan.vae_tiling:
            vae.disable_tiling()
    enrolled = enrolled_face(store, analyzer, user_id)
    ranked = rank_candidates(analyzer, [Candidate(drawn, row["seed"])], enrolled, make_fuser(settings, analyzer))
    portrait_out = ranked[0] if ranked else RankedPortrait(drawn, row["seed"], None)
    [saved] = save_portraits(store, user_id, row["style"], [portrait_out], out_dir, job_id)
    return replace(saved, prompt=build_prompt(checked.trigger, checked.style))

