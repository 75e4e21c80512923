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
    from engine.errors import SettingsError
    from engine.models.device import resolve_device

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


def check_models(settings: Settings) -> list[Check]:
    """One line per model the settings name (base, VAE, safety checker, fast-mode and style LoRAs),
    with where it is and its size on disk."""
    from engine.models.files import disk_size, named_models, where_is
    from engine.models.references import parse_model_reference

    checks = []
    for model in named_models(settings):
        reference = parse_model_reference(model.reference)
        try:
            path = where_is(model)
        except Exception as error:  # noqa: BLE001 - a broken hub cache should not stop the other checks
            checks.append(Check(model.name, "fail", f"{model.reference}: {error}",
                                f"set {model.setting} to a local copy"))
            continue
        if path is not None:
            checks.append(Check(model.name, "ok", f"{model.reference}: {disk_size(path) / 1e9:.2f} GB at {path}"))
        elif reference.kind == "local":
            checks.append(Check(model.name, "fail", f"{reference.value} is not there",
                                f"set {model.setting} to a downloaded model, a Hugging Face id or modelscope:<id>"))
        elif model.setting == "FACECHAIN_FACE_PARSER":  # never fetched on first use: enrollment must not wait
            checks.append(Check(model.name, "warn", f"{model.reference} is not downloaded yet: head masks come from "
                                                    "the face's landmarks until it is", "run `facechain models pull`"))
        else:
            where = "huggingface.co" if reference.kind == "huggingface" else "modelscope.cn"
            checks.append(Check(model.name, "warn", f"{model.reference} is not downloaded yet; it is fetched from "
                                                    f"{where} on first use", "run `facechain models pull` now"))
    return checks


def check_setup_problems(settings: Settings) -> Check:
    """What the worker found that only the owner can fix (members' jobs wait for it)."""
    from engine.store import Store
    from engine.store.setup_problems import open_setup_problems

    if not settings.db_path.is_file():
        return Check("worker", "ok", "no jobs run yet")
    store = Store(settings.data_dir)
    try:
        problems = open_setup_problems(store)
    finally:
        store.close()
    if not problems:
        return Check("worker", "ok", "no open setup problems")
    detail = "; ".join(f"{p.key} (since {p.first_seen[:16]}, {p.count}x): {p.message}" for p in problems)
    return Check("worker", "fail", detail, "fix the above; waiting jobs start by themselves once it works")


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
    from engine.models.safety import load_safety_checker

    if not settings.safety_checker:
        return Check("safety check", "ok", "off: the negative prompt is the only NSFW guard",
                     "set FACECHAIN_SAFETY_CHECKER to a Stable Diffusion safety checker to flag results")
    try:
        load_safety_checker(settings)
    except FaceChainError as error:
        return Check("safety check", "fail", str(error), "fix FACECHAIN_SAFETY_CHECKER, or leave it empty")
    return Check("safety check", "ok", f"{settings.safety_checker} loaded")


def check_face_parser(settings: Settings) -> Check | None:
    """Whether the face parser that is on this machine loads (one that is not is check_models' line)."""
    from engine.models.device import resolve_device
    from engine.models.files import face_parser_model, where_is
    from engine.preprocess.face_parser import FaceParser

    folder = where_is(face_parser_model(settings)) if settings.face_parser.strip() else None
    if folder is None:
        return None
    try:
        FaceParser(folder, resolve_device(settings.device))
    except Exception as error:  # noqa: BLE001 - whatever a damaged model raises, doctor reports it
        return Check("face parser loads", "fail", f"{folder}: {error}",
                     "point FACECHAIN_FACE_PARSER at a SegFormer face parser (jonathandinu/face-parsing), or leave "
                     "it empty for landmark masks")
    return Check("face parser loads", "ok", f"{settings.face_parser} loaded")


def check_instant(settings: Settings) -> Check:
    """Instant portraits: off, or on with the licence named and ArcFace's pack found (the adapter and the image
    encoder are check_models' lines)."""
    from engine.generation.instant import LICENCE

    if not settings.instant:
        return Check("instant portraits", "ok", "off: members wait for their face model's first portraits",
                     f"FACECHAIN_INSTANT=true draws a likeness right after enrolling. {LICENCE}")
    from engine.errors import ModelMissing
    from engine.faces.insightface_backend import InsightFaceAnalyzer
    from engine.models.files import known_family

    if known_family(settings.base_model).name != "sd15":
        return Check("instant portraits", "warn", "on, but the base model is not SD1.5: none are drawn (their "
                     "adapter, IP-Adapter FaceID Plus v2, is SD1.5's)", "use an SD1.5 base, or turn them off")

    try:
        InsightFaceAnalyzer(settings.insightface_model_dir)
    except ModelMissing as missing:
        return Check("instant portraits", "fail", f"on, but ArcFace is missing: {missing}",
                     "unpack insightface's buffalo_l pack and point FACECHAIN_INSIGHTFACE_MODEL_DIR at it")
    return Check("instant portraits", "warn", f"on. {LICENCE}", "keep this bot non-commercial, or turn them off")


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


def check_cluster(settings: Settings) -> Check:
    """With FACECHAIN_RAY_ADDRESS set: Ray installed, the address private and answering, GPUs in the cluster."""
    from engine.errors import FaceChainError
    from engine.jobs.cluster.status import cluster_status
    from engine.store import Store

    if not settings.ray_address:
        return Check("cluster", "ok", "off: jobs run on this machine's worker")
    store = Store(settings.data_dir)
    try:
        status = cluster_status(settings, store)
    except FaceChainError as error:
        return Check("cluster", "fail", str(error), "see the README's \"More than one GPU machine\"")
    finally:
        store.close()
    nodes = sum(node["alive"] for node in status["nodes"])
    detail = f"{settings.ray_address}: {nodes} nodes, {status['gpus']:g} GPUs, {len(status['actors'])} actors"
    if not status["gpus"]:
        return Check("cluster", "fail", detail, "on each GPU machine: ray start --address <this machine>:6379 --num-gpus 1")
    return Check("cluster", "ok", detail)


def check_cluster_auth(settings: Settings) -> Check | None:
    """With the cluster on: whether this machine talks to Ray with token authentication."""
    if not settings.ray_address:
        return None
    from engine.jobs.cluster.address import token_auth_on

    if token_auth_on():
        return Check("cluster authentication", "ok", "on (RAY_AUTH_MODE=token)")
    return Check("cluster authentication", "warn",
                 "off: anyone who reaches the cluster's ports can run code on its machines",
                 "`ray get-auth-token --generate`, copy ~/.ray/auth_token to every machine, and set RAY_AUTH_MODE=token "
                 "for `ray start` and the bot (see the README)")


def check_base_family(settings: Settings, usable_gib: float | None = None) -> Check | None:
    """Which family the base model is, and whether this machine's GPU can train its face models
    (`usable_gib`: the GPU memory free for it; None reads the card, or means no GPU)."""
    from engine.models.device import resolve_device
    from engine.models.family import family_of_reference, training_plan

    family = family_of_reference(settings.base_model)
    if family is None:
        return None  # not downloaded yet: check_models says so
    if usable_gib is None and resolve_device(settings.device) == "cuda":
        import torch

        usable_gib = torch.cuda.mem_get_info()[0] / 2**30
    plan = training_plan(family, usable_gib)
    if not plan.fits:
        return Check("base model family", "fail", f"{family.label}: {plan.reason}",
                     "set FACECHAIN_BASE_MODEL to a Stable Diffusion 1.5 model, or use a GPU with 12 GB or more")
    return Check("base model family", "ok", f"{family.label} ({plan.reason})")


def run_checks(settings: Settings) -> list[Check]:
    checks = [
        check_packages(), check_device(settings), *check_models(settings), check_base_family(settings),
        check_face_models(settings),
        check_face_parser(settings), check_safety_checker(settings), check_instant(settings), check_data_dir(settings),
        check_setup_problems(settings), check_token(settings),
        check_cluster(settings), check_cluster_auth(settings),
    ]
    return [check for check in checks if check is not None]


def checks_to_json(checks: list[Check]) -> list[dict]:
    return [asdict(check) for check in checks]
