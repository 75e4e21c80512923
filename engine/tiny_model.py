"""A tiny random Stable Diffusion 1.5-shaped pipeline for tests and CI.

Same component types and file layout as a real SD1.5 model (tokenizer, CLIP text encoder,
UNet, VAE with an 8x downscale, DPM-Solver scheduler), a few MB in size; it is saved with
`save_pretrained` and loaded back through the production loader. Its pictures are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

# A character-level vocabulary: every prompt tokenizes, with no merges to ship.
SYMBOLS = list("abcdefghijklmnopqrstuvwxyz0123456789") + list("<>,()[]:_-.'!?/&+")


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in SYMBOLS:
        vocab.setdefault(symbol, len(vocab))
        vocab.setdefault(symbol + "</w>", len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder / "vocab.json", folder / "merges.txt"


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = write_tokenizer_files(Path(scratch))
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
        layers_per_block=1,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    folder = Path(folder)
    pipeline.save_pretrained(folder)
    return folder
