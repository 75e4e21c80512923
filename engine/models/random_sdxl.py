"""Random-weight SDXL pipelines the project writes itself, as random_models.py does for SD1.5.

- `make_tiny_sdxl_model`: a few MB with SDXL's parts and layout (two tokenizers and text encoders,
  the second with a projection for the pooled embedding, a UNet conditioned on text and time ids,
  the VAE's SDXL scaling). Tests use it.
- `make_sdxl_shaped_model`: SDXL 1.0's architecture at full size (a 2.6B-parameter UNet), in the
  real file layout, for the contract test and GPU benchmarks.
"""

from __future__ import annotations

from pathlib import Path

from engine.models.random_models import _tokenizer, made_with_random_weights

SDXL_VAE_SCALING = 0.13025


def _save_sdxl(folder: Path, text_encoder, text_encoder_2, unet, vae) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipeline = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=_tokenizer(), tokenizer_2=_tokenizer(), unet=unet,
                                         scheduler=scheduler)
    folder = Path(folder)
    pipeline.save_pretrained(folder)  # fp16 weights under the plain names, as RealVisXL publishes them
    return folder


def _text_encoders(vocab_size: int, first: dict, second: dict):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    common = {"vocab_size": vocab_size, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
              "pad_token_id": 1}
    return (CLIPTextModel(CLIPTextConfig(**common, **first)),
            CLIPTextModelWithProjection(CLIPTextConfig(**common, **second)))


def make_tiny_sdxl_model(folder: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from engine.models.base_model import quiet_loaders

    quiet_loaders()
    torch.manual_seed(seed)
    vocab = len(_tokenizer())
    text_encoder, text_encoder_2 = _text_encoders(
        vocab, {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2},
        {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
         "projection_dim": 32})
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids, then the pooled text embedding
        cross_attention_dim=64, norm_num_groups=8,  # both encoders' hidden states, side by side
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
        layers_per_block=1, scaling_factor=SDXL_VAE_SCALING, force_upcast=True,
    )
    return _save_sdxl(folder, text_encoder, text_encoder_2, unet, vae)


def make_sdxl_shaped_model(folder: Path, seed: int = 0, half: bool = True) -> Path:
    """SDXL 1.0's architecture and sizes with random weights, saved in fp16 when `half` (then also made
    in fp16: 3.5B parameters in fp32 would take 14 GB of memory to write 7 GB of files)."""
    import torch

    parts = made_with_random_weights(_sdxl_parts, torch.float16 if half else torch.float32, seed)
    return _save_sdxl(folder, *parts)


def _sdxl_parts():
    """SDXL 1.0's text encoders, UNet and VAE, as their configs describe them, with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    text_encoder, text_encoder_2 = _text_encoders(  # CLIP ViT-L, then OpenCLIP ViT-bigG
        49408, {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
                "hidden_act": "quick_gelu"},
        {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
         "hidden_act": "gelu", "projection_dim": 1280})
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=1024,
        scaling_factor=SDXL_VAE_SCALING, force_upcast=True,
    )
    return text_encoder, text_encoder_2, unet, vae
