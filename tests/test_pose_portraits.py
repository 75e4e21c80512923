"""Portraits in a preset pose: the OpenPose ControlNet on the base pipeline's own models (tiny model)."""

from pathlib import Path

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
from engine.models.random_models import DEFAULT_BODY
from engine.styles import load_styles
from tests.conftest import image_array

POSES = load_poses()
# The tiny pose detector is exported with torch's legacy ONNX exporter; its notices are not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


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


# --- a pose from a photo ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    from engine.models.random_models import make_tiny_pose_detector

    folder = tmp_path_factory.mktemp("dwpose")
    upper = {name: point for name, point in DEFAULT_BODY.items() if "knee" not in name and "ankle" not in name}
    return {"standing": make_tiny_pose_detector(folder / "standing"),
            "nobody": make_tiny_pose_detector(folder / "nobody", person=None),
            "upper": make_tiny_pose_detector(folder / "upper", points=upper)}


def test_a_photos_pose_is_read_as_openpose_points_framed_for_a_portrait(detectors):
    from engine.generation.body_pose import BodyPoseDetector

    detector = BodyPoseDetector(detectors["standing"])
    photo = image_array("biden/biden1.jpg")  # 970 x 2204: letterboxed by 0.29 into 640 x 640
    [person] = detector.people(photo)
    ratio = 640 / photo.shape[0]
    assert np.allclose(person.box, np.array([220, 60, 420, 600]) / ratio, atol=1.0)  # back in the photo's pixels
    points = detector.body_points(photo, person)
    # RTMPose's crop is the box padded 1.25x and widened to 3:4 around its centre: the nose comes back there.
    centre_x, crop_height = (220 + 420) / 2 / ratio, 540 / ratio * 1.25
    assert abs(points["nose"][0] - centre_x) < 3 and points["nose"][1] < points["left_hip"][1]
    assert abs(points["nose"][1] - ((60 + 600) / 2 / ratio - crop_height / 2 + 0.16 * crop_height)) < 3

    pose = detector.pose(photo)
    assert pose.id == "photo" and pose.framing == "full" and len(pose.points) == 18
    neck, (lx, ly), (rx, ry) = pose.points["neck"], pose.points["left_shoulder"], pose.points["right_shoulder"]
    assert np.allclose(neck, ((lx + rx) / 2, (ly + ry) / 2))
    assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y in pose.points.values())
    assert BodyPoseDetector(detectors["upper"]).pose(photo).framing == "upper"  # no knees or ankles seen


def test_a_photo_with_nobody_and_a_missing_detector_are_said_plainly(detectors, tmp_path):
    from engine.generation.body_pose import NO_BODY, POSE_DETECTOR_PROBLEM, BodyPoseDetector, get_body_pose_detector

    with pytest.raises(FaceChainError, match="No body was found in that photo") as nobody:
        BodyPoseDetector(detectors["nobody"]).pose(image_array("biden/biden1.jpg"))
    assert str(nobody.value) == NO_BODY and not isinstance(nobody.value, ModelUnavailable)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "yolox_l.onnx").write_bytes((detectors["standing"] / "yolox_l.onnx").read_bytes())
    with pytest.raises(ModelUnavailable, match="lacks dw-ll_ucoco_384.onnx") as missing:
        BodyPoseDetector(tmp_path / "half")
    (tmp_path / "half" / "dw-ll_ucoco_384.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelUnavailable, match="could not be loaded") as damaged:
        BodyPoseDetector(tmp_path / "half")
    with pytest.raises(ModelUnavailable, match="FACECHAIN_POSE_DETECTOR is empty") as empty:
        get_body_pose_detector("")
    assert missing.value.key == damaged.value.key == empty.value.key == POSE_DETECTOR_PROBLEM

    settings = load_settings(_env_file=None)
    with pytest.raises(FaceChainError, match="Choose a preset pose or a pose photo, not both"):
        check_pose(settings, "waving", from_photo=True)
    with pytest.raises(FaceChainError, match="This bot reads no poses from photos"):
        check_pose(settings.model_copy(update={"pose_detector": ""}), None, from_photo=True)
    kept = BodyPoseDetector(detectors["standing"]).pose(image_array("biden/biden1.jpg"))
    assert check_pose(settings, None, points=kept.model_dump(exclude={"file"})) == kept  # a re-roll's pose


def test_with_depth_a_pose_photos_depth_joins_the_pose(base, tiny_model, tiny_controlnet, detectors, tmp_path):
    from engine.generation.body_pose import read_pose_photo
    from engine.generation.depth import DEPTH_PROBLEM, get_depth_estimator
    from engine.models.random_models import make_random_controlnet, make_tiny_depth_estimator

    settings = load_settings(_env_file=None, pose_detector=str(detectors["standing"]), pose_depth=True,
                             depth_estimator=str(make_tiny_depth_estimator(tmp_path / "dpt")))
    data = (Path(__file__).parent / "data" / "biden" / "biden1.jpg").read_bytes()
    pose, depth = read_pose_photo(settings, data)
    assert pose.id == "photo" and depth.mode == "RGB" and abs(depth.height / depth.width - 1.5) < 0.01
    assert np.asarray(depth).max() > 0  # the photo's depth, inside the pose's frame
    assert read_pose_photo(settings.model_copy(update={"pose_depth": False}), data)[1] is None

    generator = PortraitGenerator(base, pose_controlnet=str(tiny_controlnet),
                                  depth_controlnet=str(make_random_controlnet(tmp_path / "depth-cn", tiny_model, seed=1)))
    style = load_styles().get("studio-headshot")
    style = style.model_copy(update={"sampler": style.sampler.model_copy(update={"steps": 3})})

    def draw_with(depth_map):
        request = PortraitRequest(style=style, trigger="a man", face_model=None, count=1, seed=3, size=64, pose=pose,
                                  depth=depth_map)
        return np.asarray(generator.generate(request)[0].image, dtype=np.int16)

    with_depth, without = draw_with(depth), draw_with(None)
    assert with_depth.shape == (96, 64, 3) and np.abs(with_depth - without).mean() > 0.5
    both = generator._derived["pose and depth"]
    assert len(both.controlnet.nets) == 2 and both.controlnet.nets[0] is generator._derived[
        "StableDiffusionControlNetPipeline"].controlnet  # one pose ControlNet, shared
    assert both.unet is base.pipeline.unet

    get_depth_estimator.cache_clear()
    with pytest.raises(ModelUnavailable, match="FACECHAIN_DEPTH_ESTIMATOR is empty") as empty:
        read_pose_photo(settings.model_copy(update={"depth_estimator": ""}), data)
    assert empty.value.key == DEPTH_PROBLEM


def test_a_pose_photo_that_cannot_be_read_or_is_gone_is_said_plainly(detectors, tmp_path):
    from types import SimpleNamespace

    from engine.generation.body_pose import read_pose_photo
    from engine.jobs.runners import _pose_photo

    settings = load_settings(_env_file=None, data_dir=tmp_path / "data", pose_detector=str(detectors["standing"]))
    with pytest.raises(FaceChainError, match="That pose photo can't be used: ") as unreadable:
        read_pose_photo(settings, b"not a picture at all")
    assert "Traceback" not in str(unreadable.value)
    worker = SimpleNamespace(settings=settings)
    job = SimpleNamespace(params={"pose_upload": str(tmp_path / "data" / "tmp" / "gone" / "photo.upload")})
    with pytest.raises(FaceChainError, match="That pose photo is no longer here: ask again with it."):
        _pose_photo(worker, job)
