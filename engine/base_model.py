"""Load the base Stable Diffusion pipeline once, with precision and memory savers fit for the device."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from engine.config import Settings
from engine.device import resolve_device
from engine.errors import ModelMissing
from engine.models import parse_model_reference, resolve_model_folder

log = logging.getLogger(__name__)
GIB = 2**30
# SD1.5 at 512x512 in fp16 runs in ~4 GiB with the savers off; below these, turn them on.
ROOMY_GIB = 10.0
TIGHT_GIB = 6.0


@dataclass(frozen=True)
class MemoryPlan:
    dtype_name: str  # "float16", "bfloat16" or "float32"
    attention_slicing: bool
    vae_tiling: bool
    cpu_offload: bool
    reason: str


def plan_memory(device: str, free_bytes: int | None = None, bf16: bool = False) -> MemoryPlan:
    """Choose precision and memory savers from the device and its free memory."""
    if device == "cpu":
        return MemoryPlan("float32", False, False, False, "cpu: full precision")
    if device == "mps":
        return MemoryPlan("float16", True, False, False, "apple mps: fp16 with attention slicing")
    dtype = "bfloat16" if bf16 else "float16"
    free_gib = (free_bytes or 0) / GIB
    if free_gib >= ROOMY_GIB:
        return MemoryPlan(dtype, False, False, False, f"{free_gib:.1f} GiB free: everything on the GPU")
    if free_gib >= TIGHT_GIB:
        return MemoryPlan(dtype, True, True, False, f"{free_gib:.1f} GiB free: attention slicing and VAE tiling")
    return MemoryPlan(dtype, True, True, True, f"{free_gib:.1f} GiB free: model CPU offload")


@dataclass
class BasePipeline:
    pipeline: object  # diffusers StableDiffusionPipeline
    device: str
    plan: MemoryPlan
    folder: Path
    reference: str


def current_plan(device: str) -> MemoryPlan:
    import torch

    if device != "cuda":
        return plan_memory(device)
    free, _ = torch.cuda.mem_get_info()
    return plan_memory(device, free, bf16=torch.cuda.is_bf16_supported())


def quiet_loaders() -> None:
    """Loading progress bars and notices belong to our own progress reporting, not stderr."""
    import transformers  # before diffusers, whose pipeline imports already log through transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


def apply_memory_savers(base: BasePipeline, plan: MemoryPlan) -> BasePipeline:
    """Turn on the savers `plan` asks for that are still off (they are never turned back off)."""
    pipeline = base.pipeline
    if plan.cpu_offload and not base.plan.cpu_offload:
        pipeline.enable_model_cpu_offload()
    if plan.attention_slicing and not base.plan.attention_slicing:
        pipeline.enable_attention_slicing()
    if plan.vae_tiling and not base.plan.vae_tiling:
        pipeline.vae.enable_tiling()
    base.plan = MemoryPlan(
        base.plan.dtype_name, base.plan.attention_slicing or plan.attention_slicing,
        base.plan.vae_tiling or plan.vae_tiling, base.plan.cpu_offload or plan.cpu_offload, plan.reason,
    )
    return base


def load_base_pipeline(settings: Settings, reference: str | None = None) -> BasePipeline:
    quiet_loaders()
    import torch
    from diffusers import StableDiffusionPipeline

    reference = reference or settings.base_model
    folder = resolve_model_folder(parse_model_reference(reference))
    device = resolve_device(settings.device)
    plan = current_plan(device)
    try:
        with warnings.catch_warnings():  # torch_dtype= still works across our diffusers range
            warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated", category=FutureWarning)
            pipeline = StableDiffusionPipeline.from_pretrained(
                folder, torch_dtype=getattr(torch, plan.dtype_name), safety_checker=None, requires_safety_checker=False
            )
    except (OSError, ValueError, KeyError) as error:
        raise ModelMissing(
            f"The base model at {folder} could not be loaded ({type(error).__name__}: {str(error)[:200]}): "
            "re-download it or set FACECHAIN_BASE_MODEL to another model."
        ) from None
    pipeline.set_progress_bar_config(disable=True)
    if plan.cpu_offload:
        pipeline.enable_model_cpu_offload()
    else:
        pipeline.to(device)
    if plan.attention_slicing:
        pipeline.enable_attention_slicing()
    if plan.vae_tiling:
        pipeline.vae.enable_tiling()
    log.info("base model %s loaded on %s (%s)", reference, device, plan.reason)
    return BasePipeline(pipeline, device, plan, folder, reference)
