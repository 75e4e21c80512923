"""Random-weight stand-ins, in their real file formats, for what instant portraits load (no hub needed):

- `make_random_faceid_adapter`: IP-Adapter FaceID Plus v2's `.bin` (a torch pickle of `image_proj` and `ip_adapter`
  with the original repository's key names: the perceiver resampler, `to_k_ip`/`to_v_ip`, and the LoRA that ships
  inside it as `to_q_lora`...), shaped for a given UNet;
- `make_tiny_image_encoder`: a small CLIP vision model (`CLIPVisionModelWithProjection`, 224 px, 257 tokens);
- `make_random_arcface`: an ArcFace-shaped ONNX model (112x112 face in, 512 numbers out), as insightface's packs
  name it (`w600k_r50.onnx`).

Their pictures are noise; what they prove is that the production loaders read these formats and shapes.
"""

from __future__ import annotations

from pathlib import Path

DIM_HEAD = 64  # the resampler's attention head size, which diffusers assumes when it reads the file
DEPTH = 4  # its blocks, as diffusers reads them
NUM_TOKENS = 4  # identity tokens the projection makes


def make_random_faceid_adapter(unet, path: Path, image_encoder_dim: int = 1280, embed_dims: int | None = None,
                               lora_rank: int = 128, seed: int = 0) -> Path:
    """A FaceID Plus v2 checkpoint for `unet` (ip-adapter-faceid-plusv2_sd15.bin: embed_dims = output = the UNet's
    cross-attention width, 768, and a CLIP ViT-H encoder, 1280)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    embed = embed_dims or cross  # Plus v2 adds the identity tokens to the resampler's: the same width
    inner = max(embed // DIM_HEAD, 1) * DIM_HEAD

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    image_proj = {
        "proj.0.weight": random(1024, 512), "proj.0.bias": random(1024),
        "proj.2.weight": random(embed * NUM_TOKENS, 1024), "proj.2.bias": random(embed * NUM_TOKENS),
        "norm.weight": torch.ones(embed), "norm.bias": torch.zeros(embed),
        "perceiver_resampler.proj_in.weight": random(embed, image_encoder_dim),
        "perceiver_resampler.proj_in.bias": random(embed),
        "perceiver_resampler.proj_out.weight": random(cross, embed), "perceiver_resampler.proj_out.bias": random(cross),
        "perceiver_resampler.norm_out.weight": torch.ones(cross),
        "perceiver_resampler.norm_out.bias": torch.zeros(cross),
    }
    for layer in range(DEPTH):
        prefix = f"perceiver_resampler.layers.{layer}"
        image_proj |= {
            f"{prefix}.0.norm1.weight": torch.ones(embed), f"{prefix}.0.norm1.bias": torch.zeros(embed),
            f"{prefix}.0.norm2.weight": torch.ones(embed), f"{prefix}.0.norm2.bias": torch.zeros(embed),
            f"{prefix}.0.to_q.weight": random(inner, embed), f"{prefix}.0.to_kv.weight": random(2 * inner, embed),
            f"{prefix}.0.to_out.weight": random(embed, inner),
            f"{prefix}.1.0.weight": torch.ones(embed), f"{prefix}.1.0.bias": torch.zeros(embed),
            f"{prefix}.1.1.weight": random(4 * embed, embed), f"{prefix}.1.3.weight": random(embed, 4 * embed),
        }
    ip_adapter = {}
    for key_id, (name, width) in enumerate(_attention_widths(unet)):
        cross_attention = name.endswith("attn2.processor")
        source = cross if cross_attention else width
        for projection, inputs in (("q", width), ("k", source), ("v", source), ("out", width)):
            ip_adapter[f"{key_id}.to_{projection}_lora.down.weight"] = random(lora_rank, inputs)
            ip_adapter[f"{key_id}.to_{projection}_lora.up.weight"] = random(width, lora_rank)
        if cross_attention:
            for projection in ("k", "v"):
                ip_adapter[f"{key_id}.to_{projection}_ip.weight"] = random(width, cross)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, path)
    return path


def _attention_widths(unet) -> list[tuple[str, int]]:
    """Each attention processor of the UNet, in its order, with the width of the block it is in."""
    widths = list(unet.config.block_out_channels)
    found = []
    for name in unet.attn_processors:
        if name.startswith("mid_block"):
            width = widths[-1]
        elif name.startswith("up_blocks"):
            width = list(reversed(widths))[int(name[len("up_blocks.")])]
        else:
            width = widths[int(name[len("down_blocks.")])]
        found.append((name, width))
    return found


def make_tiny_image_encoder(folder: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A CLIP vision model of CLIP ViT-H's layout (224 px in 14 px patches: 257 tokens), a few MB."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=4, image_size=224, patch_size=14, projection_dim=hidden)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return Path(folder)


def make_random_arcface(folder: Path, seed: int = 0) -> Path:
    """A folder holding an ArcFace-shaped recognition model (`w600k_r50.onnx`: 1x3x112x112 in, 1x512 out), which the
    insightface backend and instant portraits find by its shapes."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 14 * 14, 512)).eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, torch.randn(1, 3, 112, 112), str(folder / "w600k_r50.onnx"), input_names=["data"],
                      output_names=["embedding"], dynamo=False)
    return folder


def make_tiny_instant_models(folder: Path, base_model: Path) -> dict[str, str]:
    """All three for a tiny model, and the settings that point at them (instant portraits stay off until
    FACECHAIN_INSTANT=true)."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    encoder = make_tiny_image_encoder(folder / "image-encoder")
    unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet")
    adapter = make_random_faceid_adapter(unet, folder / "ip-adapter-faceid-plusv2_sd15.bin",
                                         image_encoder_dim=32, lora_rank=4)
    return {"FACECHAIN_INSTANT_ADAPTER": str(adapter), "FACECHAIN_INSTANT_IMAGE_ENCODER": str(encoder),
            "FACECHAIN_INSIGHTFACE_MODEL_DIR": str(make_random_arcface(folder / "arcface"))}
