"""Model references (a local folder, a Hugging Face id, or `modelscope:<id>`) and where they live.

`resolve_model_folder` is the one path every model takes onto the disk: the tiny test model, a
folder a server owner copied over, and hub downloads alike.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.errors import ModelMissing

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


def resolve_model_folder(reference: ModelReference, setting: str = "FACECHAIN_BASE_MODEL") -> Path:
    """A local folder holding the model, downloading it from its hub when needed."""
    if reference.kind == "local":
        folder = local_copy(reference)
        if folder is None:
            raise ModelMissing(
                f"{setting}={reference.value} is not a diffusers model folder (no model_index.json there): "
                "point it at one, or use a Hugging Face id or modelscope:<id>."
            )
        return folder
    if reference.kind == "huggingface":
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(reference.value))
        except Exception as error:  # offline, unknown id, gated repo, disk full: all say the same thing
            raise ModelMissing(
                f"Could not get {reference.value} from Hugging Face ({type(error).__name__}): check the network, "
                f"or download it elsewhere and set {setting} to the folder."
            ) from None
    try:
        from modelscope import snapshot_download as modelscope_download
    except ImportError:
        raise ModelMissing(
            f"{setting}={reference} needs the modelscope package: pip install 'facechain-discord[modelscope]'."
        ) from None
    try:
        return Path(modelscope_download(reference.value))
    except Exception as error:
        raise ModelMissing(
            f"Could not get {reference.value} from ModelScope ({type(error).__name__}): check the network, "
            f"or set {setting} to a local folder."
        ) from None
