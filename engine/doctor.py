"""`facechain doctor`: is this machine ready to run the bot? Each failed check says how to fix it."""

from __future__ import annotations

import importlib.metadata
import tempfile
from dataclasses import asdict, dataclass
from typing import Literal

from engine.config import Settings

Status = Literal["ok", "warn", "fail"]
REQUIRED_PACKAGES = (
    "torch", "diffusers", "peft", "accelerate", "transformers", "discord.py", "aiohttp", "sqlite-utils",
    "APScheduler", "opencv-python-headless", "Pillow", "dlib-bin", "face_recognition_models", "pydantic-settings",
)
MIN_GPU_GB = 8.0


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def check_packages() -> Check:
    missing = []
    for package in REQUIRED_PACKAGES:
        try:
            importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
    if missing:
        return Check("python packages", "fail", f"missing: {', '.join(missing)}", "pip install -e .  (from the project folder)")
    return Check("python packages", "ok", f"{len(REQUIRED_PACKAGES)} required packages installed")


def check_device(settings: Settings) -> Check:
    from engine.device import resolve_device
    from engine.errors import SettingsError

    try:
        import torch

        device = resolve_device(settings.device)
    except ImportError:
        return Check("torch device", "fail", "torch is not installed", "pip install -e .")
    except SettingsError as error:
        return Check("torch device", "fail", str(error), "set FACECHAIN_DEVICE=auto")
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name()
        detail = f"cuda: {name}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
        if free / 2**30 < MIN_GPU_GB:
            return Check("torch device", "warn", detail, "close other GPU programs; low memory means slower offloaded runs")
        return Check("torch device", "ok", detail)
    if device == "mps":
        return Check("torch device", "ok", "Apple MPS")
    return Check(
        "torch device", "warn", f"cpu only (torch {torch.__version__})",
        "a CUDA GPU makes training and portraits minutes faster; install a CUDA build of torch",
    )


def check_base_model(settings: Settings) -> Check:
    from engine.models import local_copy, parse_model_reference

    reference = parse_model_reference(settings.base_model)
    try:
        folder = local_copy(reference)
    except Exception as error:  # a broken hub cache should not stop the other checks
        return Check("base model", "fail", f"{reference}: {error}", "set FACECHAIN_BASE_MODEL to a local folder")
    if folder is not None:
        return Check("base model", "ok", f"{reference} found at {folder}")
    if reference.kind == "local":
        return Check(
            "base model", "fail", f"{reference.value} has no model_index.json",
            "set FACECHAIN_BASE_MODEL to a diffusers folder, a Hugging Face id or modelscope:<id>",
        )
    where = "huggingface.co" if reference.kind == "huggingface" else "modelscope.cn"
    return Check(
        "base model", "warn", f"{reference} is not downloaded yet; it will be fetched from {where} on first use",
        "pre-download it, or point FACECHAIN_BASE_MODEL at a local copy",
    )


def check_face_models(settings: Settings) -> Check:
    from engine.errors import FaceChainError
    from engine.faces import get_analyzer

    try:
        analyzer = get_analyzer(settings)
    except FaceChainError as error:
        return Check("face models", "fail", str(error), "see the message; FACECHAIN_FACE_BACKEND=dlib works offline")
    return Check("face models", "ok", f"{analyzer.name} backend loaded (match threshold {analyzer.threshold:g})")


def check_safety_checker(settings: Settings) -> Check:
    from engine.errors import FaceChainError
    from engine.safety import load_safety_checker

    if not settings.safety_checker:
        return Check("safety check", "ok", "off: the negative prompt is the only NSFW guard",
                     "set FACECHAIN_SAFETY_CHECKER to a Stable Diffusion safety checker to flag results")
    try:
        load_safety_checker(settings)
    except FaceChainError as error:
        return Check("safety check", "fail", str(error), "fix FACECHAIN_SAFETY_CHECKER, or leave it empty")
    return Check("safety check", "ok", f"{settings.safety_checker} loaded")


def check_data_dir(settings: Settings) -> Check:
    from engine.errors import FaceChainError
    from engine.store import Store

    folder = settings.data_dir.resolve()
    fix = f"make {folder} writable, or set FACECHAIN_DATA_DIR to a folder you own"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        store = Store(folder)
        version = store.schema_version
        store.close()
    except (OSError, FaceChainError) as error:
        return Check("data dir", "fail", f"{folder}: {error}", fix)
    return Check("data dir", "ok", f"{folder} writable, database schema v{version}")


def check_token(settings: Settings) -> Check:
    token = settings.discord_token.get_secret_value() if settings.discord_token else ""
    if not token:
        return Check(
            "discord token", "fail", "FACECHAIN_DISCORD_TOKEN is not set",
            "put FACECHAIN_DISCORD_TOKEN=... in .env (Developer Portal -> your app -> Bot -> Reset Token)",
        )
    if token.count(".") != 2:
        return Check("discord token", "warn", "set, but does not look like a bot token (three dot-separated parts)",
                     "copy the token again from the Developer Portal")
    return Check("discord token", "ok", "set")


def run_checks(settings: Settings) -> list[Check]:
    return [
        check_packages(), check_device(settings), check_base_model(settings),
        check_face_models(settings), check_safety_checker(settings), check_data_dir(settings), check_token(settings),
    ]


def checks_to_json(checks: list[Check]) -> list[dict]:
    return [asdict(check) for check in checks]
