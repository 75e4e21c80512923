"""Load the base Stable Diffusion pipeline once, with precision and memory savers fit for the device.

The memory plan is made from the memory this process may use on the card (free memory plus what
it already holds), so loading the pipeline does not make the next plan think the card is small.
Savers are set per job to exactly what the plan asks: an out-of-memory retry's savers last for
that job only.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from engine.config import Settings
from engine.errors import ModelUnavailable
from engine.models.device import resolve_device
from engine.models.family import FAMILIES, SD15, Family, family_of_folder, family_of_reference
from engine.models.references import parse_model_reference, resolve_model_folder, weights_variant

log = logging.getLogger(__name__)
GIB = 2**30
VAE_SETTING = "FACECHAIN_VAE"


@dataclass(frozen=True)
class MemoryPlan:
    dtype_name: str  # "float16", "bfloat16" or "float32"
    attention_slicing: bool
    vae_tiling: bool  # the VAE decodes in tiles and one image at a time (slices)
    cpu_offload: bool
    reason: str


NO_SAVERS = MemoryPlan("float32", False, False, False, "nothing applied yet")


def plan_memory(device: str, budget_bytes: int | None = None, bf16: bool = False, family: Family = SD15) -> MemoryPlan:
    """Choose precision and memory savers from the device and the GPU memory this process may use.
    SD1.5 at 512x512 in fp16 runs in ~4 GiB with the savers off: an 8 GB card (7.6 GiB usable) lands on
    the middle plan, slicing and tiling with everything on the GPU. The family's thresholds decide."""
    if device == "cpu":
        return MemoryPlan("float32", False, False, False, "cpu: full precision")
    if device == "mps":
        return MemoryPlan("float16", True, False, False, "apple mps: fp16 with attention slicing")
    dtype = "bfloat16" if bf16 else "float16"
    gib = (budget_bytes or 0) / GIB
    if gib >= family.roomy_gib:
        return MemoryPlan(dtype, False, False, False, f"{gib:.1f} GiB usable: everything on the GPU")
    if gib >= family.tight_gib:
        return MemoryPlan(dtype, True, True, False, f"{gib:.1f} GiB usable: attention slicing and VAE tiling")
    return MemoryPlan(dtype, True, True, True, f"{gib:.1f} GiB usable: model CPU offload")


def native_bf16() -> bool:
    """bf16 only where the card computes it natively (Ampere and newer): T4, V100 and RTX 20xx
    report support through emulation, which is far slower than fp16."""
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.4 has no including_emulation
        return torch.cuda.get_device_capability()[0] >= 8


def usable_gpu_bytes() -> int:
    """Memory this process may use on the GPU: what is free plus what it already holds (its loaded
    models and torch's cache), which is the card's total less what other programs hold."""
    import torch

    free, _total = torch.cuda.mem_get_info()
    return free + torch.cuda.memory_reserved()


@dataclass
class BasePipeline:
    pipeline: object  # diffusers StableDiffusionPipeline
    device: str
    plan: MemoryPlan
    folder: Path
    reference: str
    scheduler_config: dict | None = None  # the repository's scheduler, before any sampler choice
    vae_reference: str = ""
    family: Family = SD15

    @property
    def execution_device(self):
        """Where the models compute (the UNet's own `.device` reads cpu under offload)."""
        return self.pipeline._execution_device


def current_plan(device: str, family: Family = SD15) -> MemoryPlan:
    if device != "cuda":
        return plan_memory(device)
    return plan_memory(device, usable_gpu_bytes(), bf16=native_bf16(), family=family)


def quiet_loaders() -> None:
    """Loading progress bars and notices belong to our own progress reporting, not stderr."""
    import transformers  # before diffusers, whose pipeline imports already log through transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


@contextmanager
def diffusers_silenced():
    """Inside the block diffusers logs nothing: a load that may fail (a LoRA tried on the base) is an
    answer the caller words, not an error log."""
    import diffusers

    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)


def apply_memory_savers(base: BasePipeline, plan: MemoryPlan) -> BasePipeline:
    """Set the savers to exactly what `plan` asks, turning on and off (the precision stays as loaded)."""
    pipeline, current = base.pipeline, base.plan
    if plan.cpu_offload != current.cpu_offload:
        if plan.cpu_offload:
            pipeline.enable_model_cpu_offload(device=base.device)
        else:
            pipeline.remove_all_hooks()
            pipeline.to(base.device)
    if plan.attention_slicing != current.attention_slicing:
        if plan.attention_slicing:
            pipeline.enable_attention_slicing()
        else:
            pipeline.disable_attention_slicing()
    if plan.vae_tiling != current.vae_tiling:
        if plan.vae_tiling:  # 8 candidates decoded at once is a memory spike: one at a time, in tiles
            pipeline.vae.enable_tiling()
            pipeline.vae.enable_slicing()
        else:
            pipeline.vae.disable_tiling()
            pipeline.vae.disable_slicing()
    base.plan = replace(plan, dtype_name=current.dtype_name)
    return base


def release_cached_memory() -> None:
    """Give torch's cached GPU memory back between jobs, so the next plan and other programs see it."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def vae_reference_for(settings: Settings, reference: str, family: Family, half: bool) -> str:
    """The separate VAE to load beside the base model `reference` ("" = its own)."""
    return settings.vae_for(reference, family.half_vae if half else "")


def load_vae(settings: Settings, reference: str, family: Family, dtype, half: bool,
             on_progress: Callable[[int, int], None] | None = None):
    """The separate VAE the settings name (FACECHAIN_VAE, or the one the base model `reference` needs),
    or None for the base model's own. A VAE of the other family is refused: its latents are scaled
    differently, and every picture would come out wrong."""
    vae_reference = vae_reference_for(settings, reference, family, half)
    if not vae_reference:
        return None
    from diffusers import AutoencoderKL

    folder = resolve_model_folder(parse_model_reference(vae_reference), setting=VAE_SETTING, kind="component",
                                  half=half, what="the VAE", on_progress=on_progress)
    try:
        vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, variant=weights_variant(folder, half, "component"))
    except (OSError, ValueError, KeyError) as error:
        raise ModelUnavailable(
            f"The VAE at {folder} could not be loaded ({type(error).__name__}: {str(error)[:200]}): re-download it, "
            f"or set {VAE_SETTING} to another VAE (empty = the base model's own)."
        ) from None
    scaling = vae.config.get("scaling_factor", SD15.vae_scaling)
    if abs(scaling - family.vae_scaling) > 1e-3:
        other = next((f for f in FAMILIES.values() if abs(f.vae_scaling - scaling) < 1e-3), None)
        made_for = f"a {other.label} VAE" if other else "a VAE of another kind"
        raise ModelUnavailable(f"{VAE_SETTING}={vae_reference} is {made_for}, but the base model is {family.label}: "
                               f"set {VAE_SETTING} to a {family.label} VAE, or leave it unset.")
    return vae


def load_base_pipeline(settings: Settings, reference: str | None = None,
                       on_progress: Callable[[str, int, int], None] | None = None) -> BasePipeline:
    """The base pipeline on its device. `on_progress(what, bytes done, bytes in all)` reports downloads."""
    quiet_loaders()
    import diffusers
    import torch

    reference = reference or settings.base_model
    device = resolve_device(settings.device)
    # Before anything is loaded: the whole card is ours to plan (the family's needs, once it is known).
    plan = current_plan(device, family_of_reference(reference) or SD15)
    half = plan.dtype_name != "float32"

    def progress_of(what: str):
        return (lambda done, total: on_progress(what, done, total)) if on_progress else None

    folder = resolve_model_folder(parse_model_reference(reference), half=half,
                                  on_progress=progress_of("the base model"))
    family = family_of_folder(folder)
    plan = current_plan(device, family)
    dtype = getattr(torch, plan.dtype_name)
    vae = load_vae(settings, reference, family, dtype, half, progress_of("the VAE"))
    extra = {"vae": vae} if vae is not None else {}
    if family is SD15:  # SD1.5 pipelines carry a safety checker slot: the optional check is its own setting
        extra |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    try:
        with warnings.catch_warnings():  # torch_dtype= still works across our diffusers range
            warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated", category=FutureWarning)
            pipeline = getattr(diffusers, family.pipeline_class).from_pretrained(
                folder, torch_dtype=dtype, variant=weights_variant(folder, half), **extra,
            )
    except (OSError, ValueError, KeyError) as error:
        raise ModelUnavailable(
            f"The base model at {folder} could not be loaded ({type(error).__name__}: {str(error)[:200]}): "
            "re-download it or set FACECHAIN_BASE_MODEL to another model."
        ) from None
    pipeline.set_progress_bar_config(disable=True)
    if not plan.cpu_offload:  # offload keeps the models on the CPU until each runs
        pipeline.to(device)
    base = BasePipeline(pipeline, device, replace(NO_SAVERS, dtype_name=plan.dtype_name), folder, reference,
                        dict(pipeline.scheduler.config), vae_reference_for(settings, reference, family, half), family)
    apply_memory_savers(base, plan)
    log.info("%s base model %s loaded on %s (%s)%s", family.label, reference, device, plan.reason,
             f" with the VAE {base.vae_reference}" if base.vae_reference else "")
    return base


def derived_pipeline(base: BasePipeline, pipeline_class, **extra):
    """A `pipeline_class` pipeline on the base pipeline's own models (`from_pipe`), `extra` (a ControlNet)
    on the base's device unless model offload moves it."""
    # from_pipe casts every component to its dtype, float32 unless told: give it the one they have.
    with warnings.catch_warnings():  # torch_dtype= still works across our diffusers range
        warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated", category=FutureWarning)
        pipeline = pipeline_class.from_pipe(base.pipeline, torch_dtype=base.pipeline.unet.dtype, **extra)
    if not base.plan.cpu_offload:
        for module in extra.values():
            module.to(base.device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
