"""Styles a server owner adds without code: `facechain styles add`, `remove` and `import`.

They live in the data folder (`<data>/styles/<id>.toml`, a local LoRA copied beside them under
`loras/`), never in the project's `styles/`, so an upgrade keeps them. A LoRA is checked before
anything is kept: a real .safetensors file (never a pickle), of a sane size, holding LoRA pairs, that
the running base model's UNet loads. A damaged or hostile file is refused in one line.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.config import Settings
from engine.errors import FaceChainError
from engine.generation.requests import check_style_words
from engine.models.family import Family
from engine.models.lora_header import lora_file_problem
from engine.models.references import parse_model_reference
from engine.styles import STYLE_ID, Style, load_catalogue, new_style, owner_styles_folder, style_toml


@dataclass
class AddedStyle:
    style: Style
    path: Path  # the style file written


def add_style(settings: Settings, style_id: str, lora: str | None, prompt: str, weight: float = 0.35,
              negative: str = "", family: str = "photo", name: str | None = None, description: str | None = None,
              weight_name: str | None = None, revision: str | None = None, face_weight: float = 0.9,
              check_lora: bool = True, bases: list[str] | None = None) -> AddedStyle:
    """Check everything, then write the style (and copy a local LoRA) into the data folder. Without
    `check_lora` (an import) a hub LoRA is only referenced: `facechain models pull` fetches it and
    `facechain styles check` reads it then. A checked LoRA fits the running base model's family (its
    `bases`); an unchecked one is taken to be for `bases` (default SD1.5)."""
    folder = owner_styles_folder(settings)
    style_id = style_id.strip().lower()
    if not re.match(STYLE_ID, style_id):
        raise FaceChainError(f"{style_id!r} is not a style id: use 1-40 lowercase letters, digits, '-' or '_'.")
    prompt = check_style_words(prompt)
    catalogue = load_catalogue(settings)
    if (taken := catalogue.get(style_id)) is not None:
        where = "one you added" if catalogue.added_by_owner(taken) else "a shipped style"
        raise FaceChainError(f"The style id {style_id!r} is taken ({where}): choose another, or "
                             + ("`facechain styles remove` it first." if where == "one you added" else "another id."))
    lora_file = weights = None
    kept_copy = folder / "loras" / f"{style_id}.safetensors"  # where a local LoRA is copied, to survive upgrades
    if lora:
        local = parse_model_reference(lora).kind == "local"
        lora_file = _lora_file(lora, weight_name, revision) if check_lora or local else None
        weights = {"reference": str(kept_copy) if local else lora, "weight_name": None if local else weight_name,
                   "revision": None if local else revision, "weight": weight, "bases": bases or ["sd15"]}
    style = new_style(catalogue, {
        "id": style_id, "name": name or style_id.replace("-", " ").replace("_", " ").title(),
        "description": description or "Added by this server's owner.", "prompt": prompt,
        "negative_prompt": negative, "family": family, "face_weight": face_weight,
        "lora": {k: v for k, v in (weights or {}).items() if v is not None} or None,
    })
    if lora_file is not None and check_lora:
        family = refuse_unless_it_fits(settings, lora_file)
        style.lora.bases = [family.name]
    folder.mkdir(parents=True, exist_ok=True)
    if lora_file is not None and style.lora.reference == str(kept_copy):
        kept_copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(lora_file, kept_copy)
    path = folder / f"{style_id}.toml"
    path.write_text(style_toml(style), encoding="utf-8")
    return AddedStyle(style, path)


def remove_style(settings: Settings, style_id: str) -> Path:
    """Delete a style the owner added, and its copied LoRA; shipped styles stay."""
    catalogue = load_catalogue(settings)
    style = catalogue.get(style_id)
    folder = owner_styles_folder(settings)
    path = folder / f"{style_id}.toml"
    if style is not None and not catalogue.added_by_owner(style):
        raise FaceChainError(f"{style_id!r} is a shipped style: only styles added with `facechain styles add` or "
                             "`import` can be removed (a server's admins can hide others with allowed_styles).")
    if not path.is_file():
        raise FaceChainError(f"No added style {style_id!r}: `facechain styles list` shows the styles.")
    path.unlink()
    (folder / "loras" / f"{style_id}.safetensors").unlink(missing_ok=True)
    return path


def import_facechain_styles(settings: Settings, files: list[Path]) -> list[AddedStyle]:
    """FaceChain's own style files (styles/<base>/*.json: name, add_prompt_style, model_id, revision,
    bin_file, multiplier_style, multiplier_human) as styles; the LoRA is fetched by `models pull`. The
    folder names the base: FaceChain's styles/sdxl_1.0/ hold SDXL LoRAs, the others SD1.5 ones."""
    read = [(path, _facechain_style(path)) for path in files]  # every file checked before one is written
    names = [_imported_names(path, data) for path, data in read]
    ids = [style_id for style_id, _ in names]
    catalogue = load_catalogue(settings)
    if taken := [i for n, i in enumerate(ids) if catalogue.get(i) is not None or i in ids[:n]]:
        raise FaceChainError(f"Style id(s) taken: {', '.join(taken)} (imported before, or shipped); nothing was "
                             "imported. `facechain styles remove` an imported one to import it again.")
    added = []
    for (path, data), (style_id, title) in zip(read, names):
        model_id = data.get("model_id")
        added.append(add_style(
            settings, style_id, f"modelscope:{model_id}" if model_id else None, data["add_prompt_style"],
            weight=float(data.get("multiplier_style", 0.35)), name=title[:60],
            description=f"FaceChain's {title} style"[:200], weight_name=data.get("bin_file") if model_id else None,
            revision=data.get("revision") if model_id else None,
            face_weight=float(data.get("multiplier_human", 0.9)), check_lora=False,
            bases=["sdxl"] if "sdxl" in path.parent.name.lower() else ["sd15"]))
    return added


def _imported_names(path: Path, data: dict) -> tuple[str, str]:
    """(id, name): from the English name FaceChain puts in brackets ("拍立得风(Polaroid style)"), else
    the whole name and the file's name."""
    english = re.search(r"\(([^()]+)\)\s*$", data["name"])
    title = (english.group(1) if english else data["name"]).strip()
    style_id = re.sub(r"[^a-z0-9]+", "-", (english.group(1) if english else path.stem).lower()).strip("-")[:40]
    return style_id or "style", title


def _facechain_style(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FaceChainError(f"{path} is not a FaceChain style file: not readable JSON ({type(error).__name__}).")\
            from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(
            data.get("add_prompt_style"), str):
        raise FaceChainError(f"{path} is not a FaceChain style file: it has no name and add_prompt_style "
                             "(FaceChain's styles/<base model>/*.json format).")
    if data.get("model_id") and not data.get("bin_file"):
        raise FaceChainError(f"{path}: model_id {data['model_id']} without bin_file (the LoRA file to fetch).")
    return data


def _lora_file(reference: str, weight_name: str | None, revision: str | None) -> Path:
    """The LoRA file on this machine (a hub file is fetched), checked to be a sane safetensors LoRA."""
    from engine.models.references import hub_file

    parsed = parse_model_reference(reference)
    if parsed.kind == "local":
        path = Path(parsed.value).expanduser()
        if path.is_dir():
            raise FaceChainError(f"{path} is a folder: give the .safetensors file itself.")
        if not path.is_file():
            raise FaceChainError(f"{path} does not exist.")
    else:
        if not weight_name:
            raise FaceChainError("A hub LoRA needs --file: the one .safetensors file of the repository to use.")
        path = hub_file(parsed, weight_name, "--lora", revision)
    if reason := lora_file_problem(path):
        raise FaceChainError(f"{path.name} was refused: {reason}.")
    return path


def refuse_unless_it_fits(settings: Settings, path: Path) -> Family:
    """Load the LoRA onto the running base model's UNet (and take it off again): a LoRA for another
    family or architecture has other module names or shapes, and is refused. Returns the family it fits."""
    from engine.models.base_model import diffusers_silenced, load_base_pipeline

    base = load_base_pipeline(settings)
    pipeline = base.pipeline
    check = "facechain-style-check"
    try:
        with diffusers_silenced():
            pipeline.load_lora_weights(path.parent, weight_name=path.name, adapter_name=check)
        loaded = check in pipeline.get_list_adapters().get("unet", [])
    except Exception as error:  # noqa: BLE001 - any failure to load means it does not fit
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise FaceChainError(f"{path.name} does not fit this bot's base model ({reason}): a LoRA made for "
                             f"{base.family.label} is needed.") from None
    finally:
        try:
            pipeline.delete_adapters(check)
        except (ValueError, KeyError):
            pass
    if not loaded:
        raise FaceChainError(f"{path.name} does not fit this bot's base model: none of its weights match the "
                             f"UNet (a LoRA for another model family: {base.family.label} is needed).")
    return base.family
