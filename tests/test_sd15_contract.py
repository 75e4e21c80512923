"""The real shapes and file formats: a full-size SD1.5 (860M-parameter UNet, CLIP ViT-L/14 text encoder,
the 4-channel VAE) with random weights, saved in the default base model's layout, runs on the CPU at
64 px through training -> portraits -> fusion -> ranking, with a kohya-format style LoRA of the real key
names, the LCM-LoRA fast path, the separate VAE, the pose ControlNet (the full-size one, made from
that UNet) and the inpainting of a redrawn swap. Its pictures are noise; its contract is real."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from engine.config import load_settings
from engine.generation.generate import Candidate, PortraitGenerator
from engine.generation.instant import InstantReader, adapter_file
from engine.generation.portrait import enrolled_face, make_portraits
from engine.generation.redraw import draw_region, face_region
from engine.models.base_model import load_base_pipeline
from engine.models.random_instant import make_random_arcface, make_random_faceid_adapter, make_tiny_image_encoder
from engine.models.random_models import make_random_controlnet, make_random_lora, make_sd15_shaped_model
from engine.postprocess import make_fuser, rank_candidates
from engine.preprocess.enroll import enroll_user
from engine.store import Store
from engine.styles import load_styles
from engine.training.files import WEIGHTS_FILE
from engine.training.train import train_user
from tests.conftest import DATA, photo

# The real bot, worker processes, the cluster, the full-size model or the benchmarks: skipped by the
# edit loop's quick lane (`pytest -m "not slow"`), run by CI.
pytestmark = pytest.mark.slow

OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]
SIZE = 64  # 8x8 latents: every level of the UNet still runs (at 8, 4, 2 and 1)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """Built once per run: the pipeline in the default repository's layout (its model_index.json lists a
    feature extractor and a safety checker whose folders are not there), a separate VAE, and LoRA files
    in kohya's format for a style and for fast mode."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("sd15")
    folder = make_sd15_shaped_model(root / "Realistic_Vision_V5.1_noVAE", half=True)
    index = json.loads((folder / "model_index.json").read_text())
    index.update({"feature_extractor": ["transformers", "CLIPImageProcessor"],
                  "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]})
    (folder / "model_index.json").write_text(json.dumps(index))
    torch.manual_seed(1)
    vae_config = AutoencoderKL.load_config(folder / "vae")
    AutoencoderKL.from_config(vae_config).to(torch.float16).save_pretrained(root / "sd-vae-ft-mse")
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():  # the LoRAs need the modules' names and shapes, not 860M random weights
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    make_random_lora(unet, root / "styles-lora" / "watercolor.safetensors", rank=8, kohya=True, seed=2)
    make_random_lora(unet, root / "lcm-lora-sdv1-5" / WEIGHTS_FILE, rank=8, kohya=True, seed=3)
    # Instant portraits: FaceID Plus v2 at its real shapes (768 wide, CLIP ViT-H's 1280, its rank-128 LoRA), and a
    # CLIP vision model of ViT-H's width with two layers (not 32) to read faces with.
    make_random_faceid_adapter(unet, root / "IP-Adapter-FaceID" / "ip-adapter-faceid-plusv2_sd15.bin")
    make_tiny_image_encoder(root / "image_encoder", hidden=1280)
    del unet
    make_random_controlnet(root / "control_v11p_sd15_openpose", folder)
    return root


@pytest.fixture(scope="module")
def sd15_settings(sd15, tmp_path_factory):
    styles = tmp_path_factory.mktemp("styles")
    shutil.copytree(load_styles().folder, styles, dirs_exist_ok=True)
    with (styles / "watercolor.toml").open("a") as toml:
        toml.write(f'\n[lora]\nreference = "{sd15 / "styles-lora" / "watercolor.safetensors"}"\nweight = 0.3\n'
                   '\n[sampler]\nsteps = 2\n')
    return load_settings(_env_file=None, data_dir=tmp_path_factory.mktemp("data"), device="cpu",
                         base_model=str(sd15 / "Realistic_Vision_V5.1_noVAE"), vae=str(sd15 / "sd-vae-ft-mse"),
                         fast_lora=str(sd15 / "lcm-lora-sdv1-5"), styles_dir=styles, train_resolution=SIZE,
                         pose_controlnet=str(sd15 / "control_v11p_sd15_openpose"),
                         portrait_size=SIZE, portrait_candidates=2, lora_rank=4, lora_alpha=16, fast_steps=2)


def test_the_full_size_pipeline_trains_draws_fuses_and_ranks(sd15, sd15_settings, analyzer):
    settings = sd15_settings
    base = load_base_pipeline(settings)
    pipe = base.pipeline
    assert pipe.unet.config.block_out_channels == [320, 640, 1280, 1280]
    assert pipe.text_encoder.config.hidden_size == 768 and pipe.unet.config.cross_attention_dim == 768
    assert pipe.feature_extractor is None and pipe.safety_checker is None
    vae_file = sd15 / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(vae_file), "pt") as separate:
        key = "decoder.conv_out.weight"
        assert torch.equal(pipe.vae.state_dict()[key], separate.get_tensor(key).float())  # the separate VAE

    store = Store(settings.data_dir)
    enroll_user(store, analyzer, settings, "u", [photo(p) for p in OBAMA], subject="man")
    model = train_user(store, base, settings, "u", steps=2)
    assert model.status == "ready" and model.meta["steps"] == 2
    with safe_open(str(model.path / WEIGHTS_FILE), "pt") as weights:
        keys = list(weights.keys())
        metadata = json.loads(weights.metadata()["lora_adapter_metadata"])
    assert any("attn2.to_k" in k and "lora" in k for k in keys)  # cross-attention of the 768-wide text encoder
    assert metadata["unet.r"] == 4 and metadata["unet.lora_alpha"] == 16

    catalogue = load_styles(settings.styles_dir)
    generator = PortraitGenerator(base, fast_lora=settings.fast_lora, pose_controlnet=settings.pose_controlnet)
    result = make_portraits(store, generator, analyzer, settings, catalogue, "u", "watercolor", count=2, seed=1,
                            out_dir=settings.data_dir / "out")
    assert len(result.portraits) == 2 and all(Image.open(p.path).size == (SIZE, SIZE) for p in result.portraits)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler" and pipe.scheduler.config.use_karras_sigmas
    assert len(generator.loaded_adapters) == 2  # the face and the kohya style LoRA side by side

    fast = make_portraits(store, generator, analyzer, settings, catalogue, "u", "watercolor", count=1, seed=2,
                          out_dir=settings.data_dir / "fast", fast=True)
    assert len(fast.portraits) == 1 and type(pipe.scheduler).__name__ == "LCMScheduler"
    assert len(generator.loaded_adapters) == 3

    # In a pose: the full-size ControlNet beside the same UNet, face and style adapters included.
    posed = make_portraits(store, generator, analyzer, settings, catalogue, "u", "watercolor", count=1, seed=3,
                           out_dir=settings.data_dir / "posed", pose="sitting")
    assert Image.open(posed.portraits[0].path).size == (SIZE, SIZE * 3 // 2) and posed.portraits[0].pose == "sitting"
    posed_pipeline = generator._derived["StableDiffusionControlNetPipeline"]
    controlnet = posed_pipeline.controlnet
    assert controlnet.config.block_out_channels == [320, 640, 1280, 1280] and controlnet.config.cross_attention_dim == 768
    assert posed_pipeline.unet is pipe.unet and len(generator.loaded_adapters) == 3

    # A swap redrawn by the face model: the inpainting pipeline on the same models, one seed.
    picture = np.asarray(Image.open(DATA / "biden" / "biden2.jpg").convert("RGB"))
    face = analyzer.detect(picture)[0]
    region = face_region(face, picture.shape)
    [drawn_face] = draw_region(generator, picture, face, region, SIZE, model.path, "a man", [5], steps=4)
    assert drawn_face.image.size == (SIZE, SIZE)
    assert generator._derived["StableDiffusionInpaintPipeline"].unet is pipe.unet

    # Random weights draw noise, which has no face to fuse; a photo at the pipeline's output size stands in
    # for the face real weights draw, beside the real candidates: fusion and ranking take it and drop noise.
    drawn = [Candidate(Image.open(p.path), p.seed) for p in result.portraits]
    face_photo = Image.open(DATA / "biden" / "biden2.jpg").convert("RGB").resize((512, 512))
    ranked = rank_candidates(analyzer, [*drawn, Candidate(face_photo, 99)], enrolled_face(store, analyzer, "u"),
                             make_fuser(settings, analyzer))
    assert [r.seed for r in ranked] == [99] and ranked[0].similarity > 0.4
    assert np.asarray(ranked[0].image).shape == (512, 512, 3)

    # An instant portrait: the adapter beside the face, style and fast adapters, then put aside again.
    instant_settings = settings.model_copy(update={
        "instant": True, "instant_adapter": str(sd15 / "IP-Adapter-FaceID"), "instant_image_encoder":
        str(sd15 / "image_encoder"), "insightface_model_dir": make_random_arcface(sd15 / "arcface")})
    face = InstantReader(instant_settings).read([np.asarray(Image.open(DATA / p).convert("RGB")) for p in OBAMA])
    assert face.structure.shape == (257, 1280)
    generator.instant_adapter = lambda: adapter_file(instant_settings)
    instant = make_portraits(store, generator, analyzer, settings, catalogue, "u", "watercolor", count=1, seed=4,
                             out_dir=settings.data_dir / "instant", instant=face.to_bytes())
    assert len(instant.portraits) == 1 and instant.notice.startswith("Instant likeness")
    projection = generator._instant.projection.image_projection_layers[0]
    assert projection.proj_out.weight.shape == (768, 768) and projection.proj_in.weight.shape == (768, 1280)
    assert pipe.unet.encoder_hid_proj is None  # put aside: the next request draws as before
    after = make_portraits(store, generator, analyzer, settings, catalogue, "u", "watercolor", count=1, seed=1,
                           out_dir=settings.data_dir / "after")
    assert len(after.portraits) == 1 and "Instant" not in (after.notice or "")
    store.close()
