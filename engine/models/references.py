"""Model references (a local folder, a Hugging Face id, or `modelscope:<id>`) and where they live.

`resolve_model_folder` is the one path every model folder takes onto the disk: the tiny test
model, a folder a server owner copied over, and hub downloads alike. A download fetches only the
files that loading reads (a base model's repository can hold 30 GB of single-file checkpoints
beside the 2-4 GB the pipeline needs), checks the free disk space first, and reports its bytes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from engine.errors import ModelUnavailable

log = logging.getLogger(__name__)
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
GB = 1e9
# The parts of a Stable Diffusion pipeline folder that the loader reads (no safety checker, no
# feature extractor: the optional check is its own setting).
PIPELINE_FOLDERS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae")
CONFIG_SUFFIXES = (".json", ".txt", ".model")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Free space kept beyond a download's size, so a model never fills the disk the database lives on.
DISK_MARGIN_BYTES = int(0.5 * GB)

Kind = Literal["pipeline", "component"]
# (bytes done, bytes in all) while a download runs.
ProgressCallback = Callable[[int, int], None]


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


# --- which files a model needs ----------------------------------------------------------------------

def _weight_class(name: str) -> tuple[bool, bool] | None:
    """(fp16 variant, safetensors) for a weights file or a shard index; None for anything else."""
    base = name.removesuffix(".index.json")
    if not base.endswith(WEIGHT_SUFFIXES):
        return None
    return ".fp16." in f".{base}" or base.split(".")[-2:-1] == ["fp16"], base.endswith(".safetensors")


def _preferred(classes: set[tuple[bool, bool]], half: bool) -> tuple[bool, bool] | None:
    order = [(True, True), (False, True), (True, False), (False, False)] if half else \
            [(False, True), (False, False), (True, True), (True, False)]
    return next((c for c in order if c in classes), None)


def select_files(listing: Iterable[str], kind: Kind, half: bool) -> list[str]:
    """The files of a repository that loading reads: for a pipeline, `model_index.json` and the
    PIPELINE_FOLDERS; for a component (a VAE, a safety checker), the top level. In each folder the
    configs and one set of weights: safetensors over .bin, the fp16 variant only when `half` and
    only when every folder has one (diffusers loads one variant for the whole pipeline)."""
    files = list(listing)
    folders = PIPELINE_FOLDERS if kind == "pipeline" else ("",)

    def in_folder(folder: str) -> list[str]:
        return [f for f in files if (f.rpartition("/")[0] == folder)]

    weights = {folder: {f: _weight_class(f) for f in in_folder(folder) if _weight_class(f)} for folder in folders}
    weighted = [folder for folder in folders if weights[folder]]
    use_fp16 = half and weighted and all(any(c[0] and c[1] for c in weights[f].values()) for f in weighted)
    chosen = ["model_index.json"] if kind == "pipeline" and "model_index.json" in files else []
    for folder in folders:
        chosen += [f for f in in_folder(folder) if f.endswith(CONFIG_SUFFIXES) and not _weight_class(f)
                   and f != "model_index.json"]
        classes = {c for c in weights[folder].values() if c[0] == use_fp16} or set(weights[folder].values())
        best = _preferred(classes, half)
        chosen += [f for f, c in weights[folder].items() if c == best]
    return sorted(set(chosen))


def weights_variant(folder: Path, half: bool, kind: Kind = "pipeline") -> str | None:
    """'fp16' when the folder (a pipeline's: for every component) holds fp16 weights and `half` is wanted."""
    if not half:
        return None
    listing = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    chosen = select_files(listing, kind, half=True)
    return "fp16" if any(_weight_class(f) == (True, True) for f in chosen) else None


# --- what is on this machine --------------------------------------------------------------------------

def local_copy(reference: ModelReference, marker: str = "model_index.json") -> Path | None:
    """The folder holding the model on this machine, if it is there already (no network). A hub's pipeline is here
    only with its components: a model_index.json fetched alone (to learn the family) is not the pipeline."""
    folder = index_copy(reference, marker)
    if (folder is not None and reference.kind != "local" and marker == "model_index.json"
            and not (folder / "unet" / "config.json").is_file()):
        return None
    return folder


def index_copy(reference: ModelReference, marker: str = "model_index.json") -> Path | None:
    """The folder on this machine that holds `marker` of the model (no network), whatever else it holds."""
    if reference.kind == "local":
        folder = Path(reference.value).expanduser()
        return folder if (folder / marker).is_file() else None
    if reference.kind == "huggingface":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(reference.value, marker)
        return Path(found).parent if isinstance(found, str) else None
    for folder in (modelscope_cache() / reference.value, modelscope_cache() / "models" / reference.value):
        if folder.is_dir() and any(folder.rglob(marker)):
            return next(folder.rglob(marker)).parent
    return None


def modelscope_cache() -> Path:
    return Path(os.environ.get("MODELSCOPE_CACHE", Path.home() / ".cache" / "modelscope" / "hub"))


def size_on_disk(path: Path) -> int:
    """Bytes under `path` (links followed once: the hub cache links snapshots to blobs)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


# --- downloading -----------------------------------------------------------------------------------------

def check_disk_space(folder: Path, needed_bytes: int, what: str) -> None:
    """Refuse a download that would not fit, in one line giving needed and free GB."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed_bytes + DISK_MARGIN_BYTES > free:
        raise ModelUnavailable(
            f"Not enough disk space for {what}: it needs {needed_bytes / GB:.1f} GB and {free / GB:.1f} GB are free "
            f"in {folder}: free some space, or set HF_HOME to a bigger disk."
        )


class FolderWatch:
    """Reports the bytes arriving under a folder from a thread, while a download runs there."""

    def __init__(self, folder: Path, total: int, on_progress: ProgressCallback | None, every: float = 0.5) -> None:
        self.folder, self.total, self.on_progress, self.every = folder, total, on_progress, every
        self._start = size_on_disk(folder)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-progress", daemon=True)

    def _report(self) -> None:
        done = min(self.total, max(0, size_on_disk(self.folder) - self._start))
        self.on_progress(done, self.total)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._report()

    def __enter__(self) -> FolderWatch:
        if self.on_progress is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.on_progress is not None:
            self._thread.join(timeout=5)
            if exc[0] is None:
                self.on_progress(self.total, self.total)


def _hf_cache_folder(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


def _unavailable(reference: ModelReference, setting: str, error: Exception, target: str = "folder"
                 ) -> ModelUnavailable:
    return ModelUnavailable(
        f"Could not get {reference.value} from {HUB_NAMES[reference.kind]} ({type(error).__name__}): check the "
        f"network, or download it elsewhere (`facechain models pull` there) and set {setting} to the {target}."
    )


HUB_NAMES = {"huggingface": "Hugging Face", "modelscope": "ModelScope"}


def hub_endpoint(kind: str) -> str:
    """The address a hub's client talks to (HF_ENDPOINT, MODELSCOPE_DOMAIN, or their defaults)."""
    if kind == "huggingface":
        from huggingface_hub import constants

        return constants.ENDPOINT
    from modelscope.hub.utils.utils import get_endpoint

    return get_endpoint()


def hub_silent(kind: str, timeout: float = 3.0) -> str | None:
    """Why a hub cannot be reached at all (its host takes no connection within `timeout`), in one line;
    None when it answers, or when a proxy stands between (the proxy is asked instead, by the client).
    The hubs' own clients retry for minutes before giving up on a host that never answers."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    try:
        address = urlsplit(hub_endpoint(kind))
        port = address.port or (443 if address.scheme == "https" else 80)
        socket.create_connection((address.hostname, port), timeout=timeout).close()
        return None
    except ImportError:  # no modelscope package: the download itself says how to install it
        return None
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        return f"{HUB_NAMES[kind]} ({address.hostname}) does not answer ({reason})"


def _download_huggingface(reference: ModelReference, kind: Kind, half: bool, setting: str, what: str,
                          on_progress: ProgressCallback | None) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.hf_api import RepoFile

    try:
        if silent := hub_silent("huggingface"):  # no network: do not wait out the client's retries
            raise ConnectionError(silent)
        sizes = {f.path: f.size or 0 for f in HfApi().list_repo_tree(reference.value, recursive=True)
                 if isinstance(f, RepoFile)}
    except Exception as error:  # offline, unknown id, gated repo: a copy fetched before still serves
        cached = local_copy(reference, "model_index.json" if kind == "pipeline" else "config.json")
        if cached is not None:
            log.info("the hub is out of reach (%s); using the copy of %s fetched before", type(error).__name__,
                     reference.value)
            return cached
        raise _unavailable(reference, setting, error) from None
    wanted = select_files(sizes, kind, half)
    if kind == "pipeline" and "model_index.json" not in wanted:
        raise ModelUnavailable(f"{setting}={reference.value} is not a diffusers pipeline (no model_index.json in "
                               "the repository): pick a diffusers-format model.")
    cache = _hf_cache_folder(reference.value)
    total = sum(sizes[f] for f in wanted)
    check_disk_space(cache, total - size_on_disk(cache / "blobs"), what)
    log.info("downloading %s (%s files, %.1f GB) for %s", reference.value, len(wanted), total / GB, what)
    try:
        with FolderWatch(cache / "blobs", total, on_progress):
            return Path(snapshot_download(reference.value, allow_patterns=wanted))
    except Exception as error:
        raise _unavailable(reference, setting, error) from None


def modelscope_patterns(kind: Kind) -> list[str]:
    """What to fetch from ModelScope, by pattern: its client lists no sizes before a download, so
    configs and safetensors of the folders loading reads (no .bin duplicates, no checkpoints)."""
    folders = [f"{folder}/" for folder in PIPELINE_FOLDERS] if kind == "pipeline" else [""]
    patterns = ["model_index.json"] if kind == "pipeline" else []
    return patterns + [f"{folder}*{suffix}" for folder in folders for suffix in (*CONFIG_SUFFIXES, ".safetensors")]


def _download_modelscope(reference: ModelReference, kind: Kind, setting: str, what: str,
                         on_progress: ProgressCallback | None) -> Path:
    try:
        from modelscope import snapshot_download as modelscope_download
    except ImportError:
        raise ModelUnavailable(
            f"{setting}={reference} needs the modelscope package: pip install modelscope."
        ) from None
    try:
        if silent := hub_silent("modelscope"):  # no network: a copy fetched before, else say so at once
            cached = local_copy(reference, "model_index.json" if kind == "pipeline" else "config.json")
            if cached is not None:
                return cached
            raise ConnectionError(silent)
        check_disk_space(modelscope_cache(), int(2.5 * GB) if kind == "pipeline" else 0, what)
        return Path(modelscope_download(reference.value, allow_patterns=modelscope_patterns(kind)))
    except ModelUnavailable:
        raise
    except Exception as error:
        raise _unavailable(reference, setting, error) from None


def resolve_model_folder(reference: ModelReference, setting: str = "FACECHAIN_BASE_MODEL", kind: Kind = "pipeline",
                         half: bool = False, what: str = "the base model",
                         on_progress: ProgressCallback | None = None) -> Path:
    """A local folder holding the model, downloading only what loading reads when needed."""
    marker = "model_index.json" if kind == "pipeline" else "config.json"
    if reference.kind == "local":
        folder = local_copy(reference, marker)
        if folder is None:
            what_it_is = "a diffusers model folder (no model_index.json there)" if kind == "pipeline" else \
                "a model folder (no config.json there)"
            raise ModelUnavailable(
                f"{setting}={reference.value} is not {what_it_is}: point it at one, or use a Hugging Face id or "
                "modelscope:<id>."
            )
        return folder
    if reference.kind == "huggingface":
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:  # no listing to ask for: take a complete-looking cached copy
            folder = local_copy(reference, marker)
            if folder is None:
                raise _unavailable(reference, setting, ConnectionError("HF_HUB_OFFLINE is set"))
            return folder
        return _download_huggingface(reference, kind, half, setting, what, on_progress)
    return _download_modelscope(reference, kind, setting, what, on_progress)


def hub_file(reference: ModelReference, filename: str, setting: str, revision: str | None = None) -> Path:
    """One file of a hub repository (a style LoRA, the fast-mode LoRA): nothing else is fetched."""
    try:
        if reference.kind == "huggingface":
            from huggingface_hub import hf_hub_download, try_to_load_from_cache

            cached = try_to_load_from_cache(reference.value, filename, revision=revision)
            if isinstance(cached, str):
                return Path(cached)
            if silent := hub_silent("huggingface"):
                raise ConnectionError(silent)
            return Path(hf_hub_download(reference.value, filename, revision=revision))
        try:
            from modelscope.hub.file_download import model_file_download
        except ImportError:
            raise ModelUnavailable(
                f"{setting}={reference} needs the modelscope package: pip install modelscope."
            ) from None
        if silent := hub_silent("modelscope"):
            found = local_copy(reference, filename)
            if found is not None:
                return found / filename
            raise ConnectionError(silent)
        return Path(model_file_download(reference.value, filename, revision=revision))
    except ModelUnavailable:
        raise
    except Exception as error:
        raise _unavailable(reference, setting, error, target=f"downloaded {filename}") from None
