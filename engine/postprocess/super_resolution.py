"""Upscale x4: Real-ESRGAN's RRDB network, as FaceChain v3.0.0 ends its pipeline (to 2048 px).

The network is read from the `.pth` files Real-ESRGAN publishes (`RealESRGAN_x4plus.pth`, its x2 and
anime variants: BasicSR's key names, the weights under `params_ema` or `params`), with `torch.load`'s
weights-only reader, so a file can hold nothing but tensors. Its size (features, blocks, scale) is read
from the weights. The picture goes through in tiles with a margin each side, so a 512 px portrait
fits an 8 GB card (and a CPU's memory) whatever the model's size.

spandrel, the usual loader of such files, needs torchvision, whose builds must match torch's exactly;
the RRDB family alone is what FaceChain uses, and it is these few lines.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional

from engine.errors import ModelMissing

log = logging.getLogger(__name__)
TILE = 256  # input pixels a side per tile: about 1.5 GB of activations at fp16 with the full-size model
MARGIN = 16  # input pixels of context around each tile, cut off its output


class ResidualDenseBlock(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, growth, 3, 1, 1)
        self.conv2 = nn.Conv2d(features + growth, growth, 3, 1, 1)
        self.conv3 = nn.Conv2d(features + 2 * growth, growth, 3, 1, 1)
        self.conv4 = nn.Conv2d(features + 3 * growth, growth, 3, 1, 1)
        self.conv5 = nn.Conv2d(features + 4 * growth, features, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            outputs.append(functional.leaky_relu(conv(torch.cat(outputs, 1)), 0.2))
        return self.conv5(torch.cat(outputs, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (ResidualDenseBlock(features, growth) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """BasicSR's RRDBNet: x4 as is, x2 and x1 on a pixel-unshuffled input."""

    def __init__(self, scale: int = 4, features: int = 64, blocks: int = 23, growth: int = 32) -> None:
        super().__init__()
        self.scale = scale
        self.conv_first = nn.Conv2d(3 * (16 // scale ** 2 if scale < 4 else 1), features, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_hr = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_last = nn.Conv2d(features, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale < 4:
            x = functional.pixel_unshuffle(x, 4 // self.scale)
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for conv in (self.conv_up1, self.conv_up2):
            features = functional.leaky_relu(conv(functional.interpolate(features, scale_factor=2, mode="nearest")),
                                             0.2)
        return self.conv_last(functional.leaky_relu(self.conv_hr(features), 0.2))


def read_rrdb(path: Path, setting: str = "FACECHAIN_UPSCALER") -> RRDBNet:
    """The network in a Real-ESRGAN `.pth` file; ModelMissing in one line when it is not one."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a pickle with code in it, a truncated file, not a .pth
        raise ModelMissing(f"{setting}: {path.name} is not a weights-only .pth file ({type(error).__name__}): "
                           "use Real-ESRGAN's RealESRGAN_x4plus.pth.") from None
    if isinstance(weights, dict):
        weights = weights.get("params_ema") or weights.get("params") or weights
    first = weights.get("conv_first.weight") if isinstance(weights, dict) else None
    if not isinstance(first, torch.Tensor) or first.ndim != 4:
        raise ModelMissing(f"{setting}: {path.name} is not a Real-ESRGAN RRDB model (no conv_first weights in "
                           "BasicSR's names): use RealESRGAN_x4plus.pth.")
    scale = {3: 4, 12: 2, 48: 1}.get(first.shape[1])
    blocks = len({int(m[1]) for key in weights if (m := re.match(r"body\.(\d+)\.rdb1\.conv1\.weight$", key))})
    if scale is None or blocks == 0:
        raise ModelMissing(f"{setting}: {path.name} has an RRDB layout this bot cannot read "
                           f"(input channels {first.shape[1]}, {blocks} blocks).")
    network = RRDBNet(scale, first.shape[0], blocks, weights["body.0.rdb1.conv1.weight"].shape[0])
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise ModelMissing(f"{setting}: {path.name} does not match the RRDB network it describes "
                           f"({str(error).splitlines()[0][:200]}).") from None
    return network.eval().requires_grad_(False)


@dataclass
class Upscaler:
    network: RRDBNet
    device: torch.device
    dtype: torch.dtype

    @property
    def scale(self) -> int:
        return self.network.scale

    def upscale(self, image: Image.Image, tile: int = TILE) -> Image.Image:
        """The picture `scale` times larger, drawn tile by tile (each with MARGIN pixels of context)."""
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        height, width = pixels.shape[2:]
        scale = self.scale
        out = torch.zeros(1, 3, height * scale, width * scale)
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                y0, x0 = max(0, top - MARGIN), max(0, left - MARGIN)
                y1, x1 = min(height, bottom + MARGIN), min(width, right + MARGIN)
                piece = pixels[:, :, y0:y1, x0:x1]
                # x2 and x1 models unshuffle their input: a side that divides by 4, then the extra cut off
                piece = functional.pad(piece, (0, -piece.shape[3] % 4, 0, -piece.shape[2] % 4), mode="replicate")
                with torch.inference_mode():
                    drawn = self.network(piece.to(self.device, self.dtype)).float().cpu()
                out[:, :, top * scale:bottom * scale, left * scale:right * scale] = drawn[
                    :, :, (top - y0) * scale:(bottom - y0) * scale, (left - x0) * scale:(right - x0) * scale]
        array = (out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return Image.fromarray(array)


def load_upscaler(path: Path, device: torch.device, dtype: torch.dtype,
                  setting: str = "FACECHAIN_UPSCALER") -> Upscaler:
    network = read_rrdb(path, setting)
    log.info("upscaler: %s, x%d, %d blocks of %d features", path.name, network.scale, len(network.body),
             network.conv_first.out_channels)
    # fp16 on a GPU halves its memory; the CPU computes in fp32 (its fp16 convolutions are slow or missing).
    dtype = dtype if device.type != "cpu" else torch.float32
    return Upscaler(network.to(device, dtype), device, dtype)
