"""Portraits in a preset pose: the OpenPose ControlNet on the base pipeline's own models (tiny model)."""

import numpy as np
import pytest
import torch

from engine.config import load_settings
from engine.errors import FaceChainError, ModelUnavailable
from engine.generation.generate import PortraitGenerator, PortraitRequest, build_prompt
from engine.generation.pose_control import POSE_PROBLEM, load_pose_controlnet, pose_size
from engine.generation.poses import load_poses
from engine.generation.requests import check_pose
from engine.models.base_model import derived_pipeline, load_base_pipeline
from engine.styles import load_styles

POSES = load_poses()


@pytest.fixture(scope="module")
def base(tiny_model):
    return load_base_pipeline(load_settings(_env_file=None, base_model=str(tiny_model), vae="", device="cpu"))


def draw(generator: PortraitGenerator, pose: str | None, seed: int = 3, words: str = "") -> np.ndarray:
    style = load_styles().get("studio-headshot")
    style = style.model_copy(update={"sampler": style.sampler.model_copy(update={"steps": 3})})
    request = PortraitRequest(style=style, trigger="a man", face_model=None, count=1, seed=seed, size=64,
                              words=words, pose=POSES.get(pose) if pose else None)
    return np.asarray(generator.generate(request)[0].image, dtype=np.int16)


def test_a_pose_holds_the_portrait_and_shares_the_base_models(base, tiny_controlnet):
    generator = PortraitGenerator(base, pose_controlnet=str(tiny_controlnet))
    plain = draw(generator, None)
    standing, waving = draw(generator, "standing"), draw(generator, "waving")
    assert standing.shape == waving.shape == (96, 64, 3) and pose_size(512) == (512, 768)
    assert np.abs(standing - waving).mean() > 1.0  # the skeleton steers the picture
    assert np.array_equal(draw(generator, "standing"), standing)  # and a seed still reproduces it
    posed = generator._pipeline_for(PortraitRequest(style=load_styles().get("anime"), trigger="", face_model=None,
                                                    pose=POSES.get("standing")))
    assert posed.unet is base.pipeline.unet and posed.vae is base.pipeline.vae
    assert posed.text_encoder is base.pipeline.text_encoder  # no second copy of any model
    assert np.array_equal(draw(generator, None), plain)  # plain portraits are as before


def test_from_pipe_keeps_the_base_models_precision(tiny_model, tiny_controlnet):
    """from_pipe casts the shared models to float32 unless told otherwise: a half-precision base must stay half."""
    base = load_base_pipeline(load_settings(_env_file=None, base_model=str(tiny_model), vae="", device="cpu"))
    base.pipeline.to(dtype=torch.bfloat16)
    from diffusers import StableDiffusionControlNetPipeline

    posed = derived_pipeline(base, StableDiffusionControlNetPipeline,
                             controlnet=load_pose_controlnet(str(tiny_controlnet), base))
    assert base.pipeline.unet.dtype == posed.controlnet.dtype == torch.bfloat16
    assert base.pipeline.vae.dtype == base.pipeline.text_encoder.dtype == torch.bfloat16


def test_a_missing_empty_or_unfit_controlnet_is_the_owners_problem(base, tiny_model, tmp_path):
    with pytest.raises(ModelUnavailable, match="FACECHAIN_POSE_CONTROLNET is empty") as empty:
        load_pose_controlnet("", base)
    with pytest.raises(ModelUnavailable, match="FACECHAIN_POSE_CONTROLNET") as missing:
        load_pose_controlnet(str(tmp_path / "nowhere"), base)
    assert empty.value.key == missing.value.key == POSE_PROBLEM  # members' jobs wait; the owner is told

    from diffusers import ControlNetModel

    other = ControlNetModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=48,
                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=4,
                            norm_num_groups=8)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ModelUnavailable, match="made for another base model"):
        load_pose_controlnet(str(tmp_path / "other"), base)
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text("{not json")
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        load_pose_controlnet(str(tmp_path / "damaged"), base)


def test_a_pose_request_is_checked_before_any_model_loads():
    settings = load_settings(_env_file=None)
    assert check_pose(settings, None) is None and check_pose(settings, "hand-on-chin").framing == "upper"
    with pytest.raises(FaceChainError, match="Unknown pose 'moonwalk': one of arms-crossed, "):
        check_pose(settings, "moonwalk")
    with pytest.raises(FaceChainError, match="This bot does not draw poses"):
        check_pose(settings.model_copy(update={"pose_controlnet": ""}), "sitting")


def test_a_full_body_pose_is_prompted_as_full_body():
    styles = load_styles()
    photo, anime = styles.get("studio-headshot"), styles.get("anime")
    assert "upper_body" in build_prompt("a man", photo)
    full = build_prompt("a man", photo, pose=POSES.get("standing"))
    assert "full body" in full and "wide shot" in full and "upper" not in full
    assert "full body" in build_prompt("a man", anime, pose=POSES.get("walking"))
    assert build_prompt("a man", photo, pose=POSES.get("waving")) == build_prompt("a man", photo)  # upper body
