"""The optional safety check of finished portraits, and the server policy on what it flags.

The check is a Stable Diffusion safety checker (CLIP vision model plus concept embeddings, e.g.
CompVis/stable-diffusion-safety-checker) set with FACECHAIN_SAFETY_CHECKER; empty turns it off
and the negative prompt is the only guard. A server's NSFW policy then decides where a flagged
portrait may be shown: never (block), in age-restricted channels only, or anywhere (allow).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.config import Settings
from engine.errors import ModelMissing
from engine.models.base_model import BasePipeline, quiet_loaders
from engine.models.references import ModelReference, parse_model_reference, resolve_model_folder
from engine.nsfw_policy import POLICY_MEANINGS, may_show_flagged  # noqa: F401 - the policy, re-exported

log = logging.getLogger(__name__)
SETTING = "FACECHAIN_SAFETY_CHECKER"


@dataclass
class SafetyChecker:
    model: object  # diffusers StableDiffusionSafetyChecker
    processor: object  # transformers CLIPImageProcessor
    device: str
    reference: str

    def flags(self, images: list[Image.Image]) -> list[bool]:
        """One flag per image: True where the checker sees NSFW content."""
        import torch

        if not images:
            return []
        rgb = [image.convert("RGB") for image in images]
        pixels = self.processor(images=rgb, return_tensors="pt").pixel_values
        placeholders = np.zeros((len(images), 1, 1, 3))  # it blacks out flagged images here; we keep only flags
        with torch.no_grad():
            _, flagged = self.model(clip_input=pixels.to(self.device, self.model.dtype), images=placeholders)
        return [bool(flag) for flag in flagged]


def checker_folder(reference: ModelReference) -> Path:
    """The folder holding the checker: a checker download, or a pipeline folder with safety_checker/."""
    if reference.kind != "local":  # a checker's own repository: config.json and weights, no model_index.json
        return resolve_model_folder(reference, setting=SETTING, kind="component")
    folder = Path(reference.value).expanduser()
    if not any((folder / sub / "config.json").is_file() for sub in ("", "safety_checker")):
        raise ModelMissing(
            f"{SETTING}={folder} holds no safety checker (no config.json there, nor in safety_checker/): point it "
            "at a download of CompVis/stable-diffusion-safety-checker or at a Stable Diffusion pipeline folder, "
            "or leave it empty to turn the check off."
        )
    return folder


def load_safety_checker(settings: Settings, beside: BasePipeline | None = None) -> SafetyChecker | None:
    """The configured checker (on the base pipeline's device and precision, else on the CPU), or None
    when FACECHAIN_SAFETY_CHECKER is empty."""
    if not settings.safety_checker:
        return None
    device, dtype_name = "cpu", "float32"
    if beside is not None:
        device = "cpu" if beside.plan.cpu_offload else beside.device  # offloaded models run on the CPU
        dtype_name = beside.plan.dtype_name
    import torch

    quiet_loaders()
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    folder = checker_folder(parse_model_reference(settings.safety_checker))
    pipeline_layout = (folder / "safety_checker").is_dir()
    model_dir = folder / "safety_checker" if pipeline_layout else folder
    processor_dir = folder / "feature_extractor" if pipeline_layout else folder
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated", category=FutureWarning)
            model = StableDiffusionSafetyChecker.from_pretrained(model_dir, torch_dtype=getattr(torch, dtype_name))
        processor = CLIPImageProcessor.from_pretrained(processor_dir)
    except (OSError, ValueError, KeyError) as error:
        raise ModelMissing(
            f"The safety checker at {folder} could not be loaded ({type(error).__name__}: {str(error)[:200]}): "
            f"set {SETTING} to a Stable Diffusion safety checker, or leave it empty to turn the check off."
        ) from None
    model.to(device).eval()
    log.info("safety checker %s loaded on %s", settings.safety_checker, device)
    return SafetyChecker(model, processor, device, settings.safety_checker)
