"""The real SDXL shapes and file formats: SDXL 1.0's architecture at full size (a 2.6B-parameter UNet
conditioned on text and time ids, CLIP ViT-L and OpenCLIP ViT-bigG text encoders, the VAE with SDXL's
scaling) with random weights, in fp16 files in the layout SDXL repositories use, loaded by the
production loader and run on the CPU at 64 px: one training step of a face LoRA, then one portrait
with it. Its pictures are noise; its contract is real."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from safetensors import safe_open

from engine.config import load_settings
from engine.generation.generate import PortraitGenerator, PortraitRequest
from engine.models.base_model import load_base_pipeline
from engine.models.family import SDXL
from engine.models.random_sdxl import make_sdxl_shaped_model
from engine.preprocess.enroll import enroll_user
from engine.store import Store
from engine.styles import Sampler, load_styles
from engine.training.files import WEIGHTS_FILE
from engine.training.train import train_user
from tests.conftest import photo

pytestmark = pytest.mark.slow

OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]
SIZE = 64  # 8x8 latents: the UNet's three levels still run at 8, 4 and 2


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return make_sdxl_shaped_model(tmp_path_factory.mktemp("sdxl") / "stable-diffusion-xl-base-1.0", half=True)


def test_the_full_size_sdxl_pipeline_trains_a_face_lora_and_draws_with_it(sdxl, analyzer, tmp_path):
    index = json.loads((sdxl / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and "text_encoder_2" in index
    settings = load_settings(_env_file=None, data_dir=tmp_path / "data", base_model=str(sdxl), vae="", device="cpu",
                             sdxl_size=SIZE, lora_rank=4, lora_alpha=8)
    base = load_base_pipeline(settings)
    pipe = base.pipeline
    assert base.family is SDXL and type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.unet.config.cross_attention_dim == 2048 and pipe.unet.config.addition_embed_type == "text_time"
    assert list(pipe.unet.config.transformer_layers_per_block) == [1, 2, 10]
    assert sum(p.numel() for p in pipe.unet.parameters()) > 2.5e9
    assert pipe.text_encoder_2.config.hidden_size == 1280 and pipe.text_encoder_2.config.projection_dim == 1280
    assert pipe.vae.config.scaling_factor == SDXL.vae_scaling

    store = Store(settings.data_dir)
    enroll_user(store, analyzer, settings, "u", [photo(p) for p in OBAMA], subject="man")
    model = train_user(store, base, settings, "u", steps=1)
    assert (model.status, model.family, model.meta["resolution"]) == ("ready", "sdxl", SIZE)
    with safe_open(str(model.path / WEIGHTS_FILE), "pt") as weights:
        widths = {weights.get_slice(key).get_shape()[1] for key in weights.keys()
                  if key.endswith("attn2.to_k.lora.down.weight")}
        metadata = json.loads(weights.metadata()["lora_adapter_metadata"])
    assert widths == {2048}  # cross-attention reads both text encoders' states, 768 + 1280 wide
    assert metadata["unet.r"] == 4 and metadata["unet.lora_alpha"] == 8

    style = load_styles().get("cyberpunk").model_copy(update={"sampler": Sampler(steps=1)})
    generator = PortraitGenerator(base)
    [candidate] = generator.generate(PortraitRequest(style, "man", model.path, count=1, seed=1, size=SIZE))
    assert candidate.image.size == (SIZE, SIZE) and isinstance(candidate.image, Image.Image)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler" and pipe.scheduler.config.use_karras_sigmas
    assert len(generator.loaded_adapters) == 1  # the face model, on the full-size SDXL UNet
    store.close()
