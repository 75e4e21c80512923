"""Every model the settings name, where each one is on this machine, and fetching the missing ones.

`facechain models pull` and `doctor` read this list: the base pipeline, its separate VAE, the
safety checker, the pose ControlNet, the upscaler, the fast-mode LoRA and each style's LoRA. Only the files loading reads are fetched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.config import Settings
from engine.errors import ModelMissing, ModelUnavailable
from engine.models.family import SD15, Family, base_family, family_of_reference
from engine.models.lora_header import lora_file_problem
from engine.models.references import hub_file, local_copy, parse_model_reference, resolve_model_folder, size_on_disk
from engine.training.files import WEIGHTS_FILE


@dataclass(frozen=True)
class NamedModel:
    name: str  # what it is, for people: "base model", "style anime LoRA"
    reference: str
    setting: str  # where it is set, for the fix
    kind: Literal["pipeline", "component", "file"] = "pipeline"  # "file": one LoRA file of a repository
    filename: str | None = None  # for one-file models
    revision: str | None = None

    @property
    def one_file(self) -> bool:
        return self.kind == "file"


def named_models(settings: Settings, include_styles: bool = True) -> list[NamedModel]:
    family = known_family(settings.base_model)
    models = [NamedModel("base model", settings.base_model, "FACECHAIN_BASE_MODEL", "pipeline")]
    if vae := settings.vae_for(settings.base_model, family.half_vae):
        models.append(NamedModel("VAE", vae, "FACECHAIN_VAE", "component"))
    if settings.face_parser.strip():
        models.append(face_parser_model(settings))
    if settings.safety_checker.strip():
        models.append(NamedModel("safety checker", settings.safety_checker, "FACECHAIN_SAFETY_CHECKER", "component"))
    if settings.pose_controlnet.strip() and family.draws_scenes:
        models.append(pose_controlnet_model(settings))
    if settings.pose_depth and family.draws_scenes:
        models += [NamedModel("depth ControlNet", settings.depth_controlnet, "FACECHAIN_DEPTH_CONTROLNET", "component"),
                   NamedModel("depth estimator", settings.depth_estimator, "FACECHAIN_DEPTH_ESTIMATOR", "component")]
    if settings.pose_detector.strip():
        from engine.generation.body_pose import DETECTOR_FILE, KEYPOINTS_FILE

        models += [NamedModel(f"pose detector ({what})", settings.pose_detector, "FACECHAIN_POSE_DETECTOR", "file",
                              filename) for what, filename in (("people", DETECTOR_FILE), ("body points", KEYPOINTS_FILE))]
    if settings.upscaler.strip():
        models.append(upscaler_model(settings))
    if settings.instant and family.name == "sd15":  # FaceID Plus v2 is SD1.5's
        models += instant_models(settings)
    if fast := settings.fast_lora_for(family.name).strip():
        models.append(NamedModel("fast-mode LoRA", fast, family.fast_setting, "file", WEIGHTS_FILE))
    if include_styles:
        from engine.styles import load_catalogue

        for style in load_catalogue(settings).styles.values():
            if style.lora is not None and style.lora.fits(family.name):
                models.append(NamedModel(f"style {style.id} LoRA", style.lora.reference, style.lora_setting, "file",
                                         style.lora.weight_name or WEIGHTS_FILE, style.lora.revision))
    return models


def known_family(base_model: str) -> Family:
    """The base model's family, to list its own extras (SDXL's fp16-safe VAE and LCM-LoRA, no SD1.5 ControlNet): from
    the model on this machine, else from its model_index.json alone (a few hundred bytes, fetched once); SD1.5 when
    the hub can't be reached (its pull then fails with the base model's own line)."""
    known = family_of_reference(base_model)
    if known is not None:
        return known
    try:
        return base_family(base_model)
    except (ModelMissing, OSError, ValueError):
        return SD15


def pose_controlnet_model(settings: Settings) -> NamedModel:
    return NamedModel("pose ControlNet", settings.pose_controlnet, "FACECHAIN_POSE_CONTROLNET", "component")


def upscaler_model(settings: Settings) -> NamedModel:
    return NamedModel("upscaler (Upscale x4)", settings.upscaler, "FACECHAIN_UPSCALER", "file", settings.upscaler_file)


def instant_models(settings: Settings) -> list[NamedModel]:
    """Instant portraits' adapter and the two files of its image encoder (ArcFace comes from the insightface pack,
    FACECHAIN_INSIGHTFACE_MODEL_DIR, which no hub serves)."""
    folder = settings.instant_image_encoder_folder.strip("/")
    return [NamedModel("instant portraits adapter", settings.instant_adapter, "FACECHAIN_INSTANT_ADAPTER", "file",
                       settings.instant_adapter_file)] + [
        NamedModel(f"instant portraits image encoder ({what})", settings.instant_image_encoder,
                   "FACECHAIN_INSTANT_IMAGE_ENCODER", "file", f"{folder}/{name}" if folder else name)
        for what, name in (("config", "config.json"), ("weights", "model.safetensors"))]


def face_parser_model(settings: Settings) -> NamedModel:
    return NamedModel("face parser", settings.face_parser, "FACECHAIN_FACE_PARSER", "component")


def where_is(model: NamedModel) -> Path | None:
    """The model's folder or file on this machine, or None when it is not here (no network)."""
    reference = parse_model_reference(model.reference)
    if model.one_file:
        if reference.kind == "local":
            path = Path(reference.value).expanduser()
            if path.is_dir():  # the file where the repository has it, or at the folder's top
                path = next((found for found in (path / model.filename, path / Path(model.filename).name)
                             if found.is_file()), path / model.filename)
            return path if path.is_file() else None
        if reference.kind == "huggingface":
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(reference.value, model.filename, revision=model.revision)
            return Path(found) if isinstance(found, str) else None
        found = local_copy(reference, model.filename)
        return found / model.filename if found else None
    if model.setting == "FACECHAIN_SAFETY_CHECKER" and reference.kind == "local":
        folder = Path(reference.value).expanduser()
        return folder if any((folder / sub / "config.json").is_file() for sub in ("", "safety_checker")) else None
    return local_copy(reference, "model_index.json" if model.kind == "pipeline" else "config.json")


def fetch(model: NamedModel, half: bool, on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Fetch the model (only what loading reads); ModelUnavailable says why it could not be had."""
    reference = parse_model_reference(model.reference)
    if model.one_file:
        return hub_file(reference, model.filename, model.setting, model.revision) if reference.kind != "local" \
            else _local_file(model)
    return resolve_model_folder(reference, setting=model.setting, kind=model.kind, half=half, what=model.name,
                                on_progress=on_progress)


def _local_file(model: NamedModel) -> Path:
    path = where_is(model)
    if path is None:
        raise ModelUnavailable(f"{model.setting}: {model.reference} does not exist: download the file there.")
    return path


def disk_size(path: Path | None) -> int:
    if path is None:
        return 0
    # A hub snapshot links to blobs: count what the links point at.
    if path.is_dir():
        return sum(p.resolve().stat().st_size for p in path.rglob("*") if p.is_file())
    return size_on_disk(path.resolve())


def style_lora_problems(catalogue) -> list:
    """Problems with the styles' LoRA references that can be seen without a network: a local file
    that is not there or is no LoRA, a downloaded file that is no LoRA. Hub files not downloaded yet
    are fine (`facechain models pull` fetches them)."""
    from engine.styles import StyleProblem

    problems = []
    for style in catalogue.styles.values():
        if style.lora is None:
            continue
        model = NamedModel(f"style {style.id} LoRA", style.lora.reference, style.lora_setting, "file",
                           style.lora.weight_name or WEIGHTS_FILE, style.lora.revision)
        path = where_is(model)
        where = style.file or catalogue.folder / f"{style.id}.toml"
        if path is None:
            if parse_model_reference(model.reference).kind == "local":
                problems.append(StyleProblem(where, "lora.reference", f"{model.reference} does not exist"))
            continue
        if reason := lora_file_problem(path):
            problems.append(StyleProblem(where, "lora.reference", f"{path}: {reason}"))
    return problems
