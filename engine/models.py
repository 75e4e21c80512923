"""Where a model reference points: a local folder, a Hugging Face id, or `modelscope:<id>`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelReference:
    kind: Literal["local", "huggingface", "modelscope"]
    value: str  # folder path or hub id

    def __str__(self) -> str:
        return f"modelscope:{self.value}" if self.kind == "modelscope" else self.value


def parse_model_reference(reference: str) -> ModelReference:
    reference = reference.strip()
    if reference.startswith("modelscope:"):
        return ModelReference("modelscope", reference.removeprefix("modelscope:").strip("/"))
    path = Path(reference).expanduser()
    looks_like_path = reference.startswith((".", "/", "~")) or (os.sep in reference and not HF_ID.match(reference))
    if path.exists() or looks_like_path:
        return ModelReference("local", str(path))
    return ModelReference("huggingface", reference)


def local_copy(reference: ModelReference) -> Path | None:
    """The folder holding the model on this machine, if it is there already (no network)."""
    if reference.kind == "local":
        folder = Path(reference.value)
        return folder if (folder / "model_index.json").is_file() else None
    if reference.kind == "huggingface":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(reference.value, "model_index.json")
        return Path(found).parent if isinstance(found, str) else None
    cache = Path(os.environ.get("MODELSCOPE_CACHE", Path.home() / ".cache" / "modelscope" / "hub"))
    for folder in (cache / reference.value, cache / "models" / reference.value):
        if any(folder.rglob("model_index.json")) if folder.is_dir() else False:
            return folder
    return None
