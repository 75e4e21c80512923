"""A LoRA file read by its safetensors header alone: is it one, and which UNet does it fit?

Nothing in the file is executed or loaded: the header is JSON (tensor names, dtypes and shapes), and a
pickle never gets past its first eight bytes. The bot checks an admin's upload with this (it never
imports torch); the owner's `facechain styles add` also loads the LoRA onto the base model.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

# Style LoRAs are 10-300 MB; anything far past that is not one.
MAX_LORA_BYTES = 1024 * 2**20
MAX_HEADER_BYTES = 32 * 2**20  # a safetensors header (the tensor index) is kilobytes
LORA_MARKERS = ("lora_down", "lora_A", "lora.down")
# The cross-attention key projection's down weight, in diffusers', peft's and kohya's spellings.
CROSS_ATTENTION_DOWN = re.compile(r"attn2[._]to_k.*(lora_down|lora_A|lora\.down)\.weight$")


def read_header(path: Path, max_bytes: int = MAX_LORA_BYTES) -> dict:
    """The tensor index of a safetensors file; ValueError says why it is not one (or too big)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"it is {size / 2**20:.0f} MB; a style LoRA is at most {max_bytes // 2**20} MB")
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise ValueError("it is not a .safetensors file (too short)")
        header_bytes = struct.unpack("<Q", head)[0]
        if not 2 <= header_bytes <= min(MAX_HEADER_BYTES, size - 8):
            raise ValueError("it is not a .safetensors file (a pickle or another format: only safetensors are loaded)")
        try:
            header = json.loads(file.read(header_bytes))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: JSON nested too deep
            raise ValueError("it is not a .safetensors file (its header is not a tensor index)") from None
    if not isinstance(header, dict):
        raise ValueError("it is not a .safetensors file (its header is not a tensor index)")
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    for name, entry in tensors.items():
        if problem := _tensor_problem(entry, size - 8 - header_bytes):
            raise ValueError(f"it is a damaged .safetensors file (tensor {str(name)[:80]!r}: {problem})")
    return tensors


# Bytes per element of each safetensors dtype.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def _tensor_problem(entry: object, data_bytes: int) -> str | None:
    """What is wrong with one tensor's index entry (None when it is sound): its dtype, its shape as whole numbers,
    and its bytes inside the file, as many as the shape and dtype need."""
    if not isinstance(entry, dict):
        return "not a tensor entry"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        return f"unknown dtype {str(dtype)[:20]!r}"
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return "its shape is not a list of whole numbers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_bytes):
        return "its data lies outside the file"
    elements = 1
    for n in shape:
        elements *= n
    if offsets[1] - offsets[0] != elements * DTYPE_BYTES[dtype]:
        return "its data does not match its shape"
    return None


def read_lora_header(path: Path, max_bytes: int = MAX_LORA_BYTES) -> dict:
    """The tensor index of a LoRA file; ValueError says why it is not one this bot will keep."""
    header = read_header(path, max_bytes)
    if not any(marker in name for name in header for marker in LORA_MARKERS):
        raise ValueError("it holds no LoRA weights (no lora_down / lora_A tensors)")
    return header


def lora_file_problem(path: Path, max_bytes: int = MAX_LORA_BYTES) -> str | None:
    """Why a file is not a LoRA this bot will keep (None when it is): size, format, contents."""
    try:
        read_lora_header(path, max_bytes)
    except ValueError as error:
        return str(error)
    return None


def cross_attention_width(header: dict) -> int | None:
    """The text-embedding width the LoRA's cross-attention reads (SD1.5 768, SDXL 2048), if it has one."""
    for name, entry in header.items():
        shape = entry.get("shape") or []
        if CROSS_ATTENTION_DOWN.search(name) and len(shape) == 2:
            return int(shape[1])
    return None


def unet_cross_attention_width(base_folder: Path) -> int:
    """The cross-attention width of the base model's UNet, from its config (no weights read)."""
    config = json.loads((Path(base_folder) / "unet" / "config.json").read_text())
    width = config.get("cross_attention_dim", 768)
    return int(width[0] if isinstance(width, list) else width)
