"""Base model families: Stable Diffusion 1.5 and SDXL, and what differs between them, in one place.

A base model's family is read from its `model_index.json` (the pipeline class it was saved as).
Every stage does the same thing on both families where they agree; where they differ (two text
encoders and pooled embeddings, the drawing size, the fast-mode LoRA, the fp16-safe VAE, how much
memory they need, which ControlNets and inpainting models exist) it asks the family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelUnavailable
from engine.models.references import hub_file, index_copy, parse_model_reference

GIB = 2**30


@dataclass(frozen=True)
class Family:
    name: str  # "sd15" or "sdxl": stored with each face model and named in style files
    label: str  # for people
    pipeline_class: str  # diffusers' text-to-image pipeline
    fast_setting: str  # the setting naming its LCM-LoRA (fast mode)
    half_vae: str  # a VAE that does not overflow in fp16 ("" = the base model's own is fine)
    vae_scaling: float  # the scaling factor of its VAE's latents (tells an SD1.5 VAE from an SDXL one)
    text_width: int  # the text embedding its UNet's cross-attention reads (tells its LoRAs from others)
    roomy_gib: float  # drawing: everything on the GPU from this much usable memory
    tight_gib: float  # below this, model CPU offload
    train_gib: float  # the least usable memory its face-LoRA training fits in (gradient checkpointing on)
    train_roomy_gib: float  # from this much, training runs without gradient checkpointing (faster)
    draws_scenes: bool  # pose ControlNet, redrawn photos and scenes, two members in one picture


SD15 = Family("sd15", "Stable Diffusion 1.5", "StableDiffusionPipeline", "FACECHAIN_FAST_LORA", "",
              0.18215, 768, roomy_gib=10.0, tight_gib=6.0, train_gib=0.0, train_roomy_gib=10.0, draws_scenes=True)
# SDXL in fp16: a 5 GB UNet and 1.6 GB of text encoders. At 1024 px it draws comfortably from 16 GiB,
# with slicing and tiling from 10, offloaded below. Its training (the UNet alone on the GPU, the text
# encoders' work cached) needs gradient checkpointing and about 11 GiB: a 12 GB card, not an 8 GB one.
# Without checkpointing its activations at 1024 px take some 20 GiB more.
SDXL = Family("sdxl", "SDXL", "StableDiffusionXLPipeline", "FACECHAIN_FAST_LORA_SDXL",
              "madebyollin/sdxl-vae-fp16-fix", 0.13025, 2048, roomy_gib=16.0, tight_gib=10.0, train_gib=11.0,
              train_roomy_gib=32.0, draws_scenes=False)
FAMILIES = {family.name: family for family in (SD15, SDXL)}


def family_of_folder(folder: Path) -> Family:
    """The family of the diffusers pipeline saved in `folder` (its model_index.json)."""
    index = json.loads((Path(folder) / "model_index.json").read_text())
    is_xl = "XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index
    return SDXL if is_xl else SD15


def family_of_reference(reference: str) -> Family | None:
    """The family of a base model reference, when it is on this machine (nothing is downloaded); None
    while it is not."""
    folder = index_copy(parse_model_reference(reference))  # its model_index.json is enough
    if folder is None:
        return None
    try:
        return family_of_folder(folder)
    except (OSError, ValueError):
        return None


def base_family(reference: str) -> Family:
    """The family of the base model `reference`, fetching only its model_index.json when it is not on
    this machine yet (the machine with the store may not hold the model a cluster draws with)."""
    known = family_of_reference(reference)
    if known is not None:
        return known
    parsed = parse_model_reference(reference)
    if parsed.kind == "local":
        raise ModelUnavailable(f"FACECHAIN_BASE_MODEL={reference} is not a diffusers model folder (no "
                               "model_index.json there): point it at one, or use a Hugging Face id or modelscope:<id>.")
    index = hub_file(parsed, "model_index.json", "FACECHAIN_BASE_MODEL")
    return family_of_folder(index.parent)


@dataclass(frozen=True)
class TrainingPlan:
    fits: bool
    gradient_checkpointing: bool
    reason: str


def training_plan(family: Family, usable_gib: float | None) -> TrainingPlan:
    """Whether a face LoRA of `family` trains in `usable_gib` of GPU memory (None: the CPU or Apple's
    shared memory, where it fits and runs slowly), and whether it needs gradient checkpointing."""
    if usable_gib is None:
        return TrainingPlan(True, False, "no GPU memory limit")
    if usable_gib < family.train_gib:
        return TrainingPlan(False, True, (
            f"Training {family.label} face models needs about {family.train_gib:.0f} GiB of GPU memory, and "
            f"{usable_gib:.1f} GiB is usable here: set FACECHAIN_BASE_MODEL to a Stable Diffusion 1.5 model, or "
            "use a card with 12 GB or more."))
    checkpointing = usable_gib < family.train_roomy_gib
    return TrainingPlan(True, checkpointing, f"{usable_gib:.1f} GiB usable: " + (
        "gradient checkpointing on" if checkpointing else "no gradient checkpointing needed"))


def scenes_unavailable(family: Family) -> str:
    """The answer to a member who asks an SDXL bot for something only SD1.5 draws."""
    return (f"This bot draws with {family.label}, which makes portraits in a style but not poses, scenes for two or "
            "sharper copies yet. Ask for a portrait in a style instead.")
