"""Portraits in a pose: the OpenPose ControlNet, loaded and checked against the base model.

The generator draws with it through a ControlNet pipeline made with `from_pipe`
(`PortraitGenerator.derived_pipeline`), which holds the base pipeline's own UNet, VAE and text
encoder: a pose costs the ControlNet's weights, never a second copy of the model.
"""

from __future__ import annotations

from engine.config import ENV_PREFIX, Settings
from engine.errors import ModelUnavailable
from engine.models.base_model import BasePipeline
from engine.models.references import parse_model_reference, resolve_model_folder, weights_variant

POSE_SETTING = "FACECHAIN_POSE_CONTROLNET"
POSE_PROBLEM = "pose ControlNet"  # its setup-problem key
# FaceChain's pose mode conditions at full strength: the skeleton decides the body, the prompt the rest.
CONDITIONING_SCALE = 1.0
# A pose is drawn 2 wide by 3 high, as FaceChain's presets.
POSE_ASPECT = 1.5


def pose_size(width: int, people: int = 1) -> tuple[int, int]:
    """(width, height) of a portrait in a pose, `width` wide, both multiples of 8 as the VAE needs; a pose of
    two people lies the other way (`width` high and half as wide again), so both fit side by side."""
    long_side = round(width * POSE_ASPECT / 8) * 8
    return (long_side, width) if people == 2 else (width, long_side)


def load_pose_controlnet(reference: str, base: BasePipeline):
    """The pose ControlNet `reference` names (see load_controlnet)."""
    return load_controlnet(reference, base, POSE_SETTING, POSE_PROBLEM, "pose")


def load_controlnet(reference: str, base: BasePipeline, setting: str, problem: str, what: str):
    """The `what` ControlNet `reference` names, in the base pipeline's precision; ModelUnavailable (an
    owner's problem: members' jobs wait) when it is not set, not here and out of reach, damaged or unfit."""
    import torch
    from diffusers import ControlNetModel

    if not reference.strip():
        default = Settings.default(setting.removeprefix(ENV_PREFIX).lower())
        raise ModelUnavailable(f"A portrait with a {what} ControlNet was asked for but {setting} is empty: set it "
                               f"to {default} (or a local copy).", problem)
    dtype = base.pipeline.unet.dtype
    half = dtype != torch.float32
    try:
        folder = resolve_model_folder(parse_model_reference(reference), setting=setting, kind="component",
                                      half=half, what=f"the {what} ControlNet")
    except ModelUnavailable as error:
        raise ModelUnavailable(str(error), problem) from None
    try:
        controlnet = ControlNetModel.from_pretrained(folder, torch_dtype=dtype,
                                                     variant=weights_variant(folder, half, "component"))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelUnavailable(f"The {what} ControlNet at {folder} could not be loaded ({type(error).__name__}: "
                               f"{str(error)[:200]}): re-download it, or fix {setting}.", problem) from None
    unet = base.pipeline.unet.config
    if (controlnet.config.cross_attention_dim, tuple(controlnet.config.block_out_channels)) != \
            (unet.cross_attention_dim, tuple(unet.block_out_channels)):
        raise ModelUnavailable(f"The {what} ControlNet {reference} was made for another base model than "
                               f"{base.reference} (its blocks or text width differ): set {setting} to "
                               f"an SD1.5 {what} ControlNet.", problem)
    return controlnet
