"""Styles a server's admins add from Discord (`/facechain-admin style-add`): that server's alone.

They live in `<data>/styles/guilds/<server id>/`, beside the owner's styles, with the LoRA copied
under `loras/`, so an upgrade keeps them. The bot checks an upload without loading a model (it never
imports torch): a real safetensors LoRA of at most MAX_GUILD_LORA_MB, whose cross-attention reads the
text width of the running base model's UNet (a LoRA for another family is refused by name). Nothing
of a refused file is kept.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from engine.config import Settings
from engine.errors import FaceChainError, ModelMissing
from engine.generation.requests import check_style_words
from engine.models.family import FAMILIES, base_family
from engine.models.lora_header import cross_attention_width, read_lora_header, unet_cross_attention_width
from engine.models.references import hub_file, local_copy, parse_model_reference
from engine.styles import STYLE_ID, Style, guild_styles_folder, load_catalogue, new_style, style_toml

MAX_GUILD_LORA_MB = 256
log = logging.getLogger(__name__)


def add_guild_style(settings: Settings, guild_id: str, style_id: str, lora: Path, prompt: str,
                    weight: float = 0.35, negative: str = "", family: str = "photo") -> Style:
    """Check the LoRA file and the words, then keep the style for server `guild_id`; FaceChainError in
    words for the admin. `lora` (a downloaded upload) is copied, never moved: the caller deletes it."""
    style_id = style_id.strip().lower()
    if not re.match(STYLE_ID, style_id):
        raise FaceChainError(f"{style_id!r} can't be a style id: use 1-40 lowercase letters, digits, '-' or '_'.")
    catalogue = load_catalogue(settings, guild_id)
    if (taken := catalogue.get(style_id)) is not None:
        whose = "this server's" if catalogue.added_by_guild(taken) else "one of the bot's"
        raise FaceChainError(f"The id {style_id!r} is taken by {whose} styles: choose another"
                             + (", or remove that one first." if whose == "this server's" else "."))
    prompt = check_style_words(prompt)  # a negative prompt may name them: it keeps them out
    folder = guild_styles_folder(settings, guild_id)
    _check_room(settings, catalogue, folder, lora)
    base = _base_family(settings, lora)
    kept = folder / "loras" / f"{style_id}.safetensors"
    style = new_style(catalogue, {
        "id": style_id, "name": style_id.replace("-", " ").replace("_", " ").title(),
        "description": "Added by this server's admins.", "prompt": prompt, "negative_prompt": negative,
        "family": family, "lora": {"reference": str(kept), "weight": weight, "bases": [base]},
    })
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lora, kept)
    (folder / f"{style_id}.toml").write_text(style_toml(style), encoding="utf-8")
    return style


# Free disk left after a style's copy: below it the copy could starve the database and members' photos.
DISK_MARGIN_BYTES = 2 * 2**30


def _check_room(settings: Settings, catalogue, folder: Path, lora: Path) -> None:
    """The server's limits (FACECHAIN_GUILD_STYLES_MAX and _MAX_MB) and the disk, each refused in one line."""
    added = [style for style in catalogue.styles.values() if catalogue.added_by_guild(style)]
    if len(added) >= settings.guild_styles_max:
        raise FaceChainError(f"This server has {len(added)} styles of its own, the most it may have: remove one with "
                             "`/facechain-admin style-remove` first.")
    size = lora.stat().st_size
    kept = sum(path.stat().st_size for path in (folder / "loras").glob("*.safetensors")) if folder.is_dir() else 0
    if kept + size > settings.guild_styles_max_mb * 2**20:
        raise FaceChainError(f"This server's styles would take {(kept + size) / 2**20:.1f} MB, more than the "
                             f"{settings.guild_styles_max_mb} MB it may use: remove a style first.")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if shutil.disk_usage(existing).free < size + DISK_MARGIN_BYTES:
        log.warning("style-add refused: the disk holding %s has under %d GB free", existing,
                    DISK_MARGIN_BYTES // 2**30)
        raise FaceChainError("The bot's disk is nearly full, so no style can be added now: the bot's owner can see "
                             "it in the log.")


def _base_family(settings: Settings, lora: Path) -> str:
    """The running base model's family, once the LoRA is shown to fit its UNet."""
    try:
        header = read_lora_header(lora, MAX_GUILD_LORA_MB * 2**20)
    except ValueError as problem:
        raise FaceChainError(f"That file was refused: {problem}.") from None
    try:
        family = base_family(settings.base_model)  # its model_index.json alone, fetched once
    except ModelMissing:
        raise FaceChainError("The bot's image model can't be read right now, so a style LoRA can't be checked: try "
                             "again later.") from None
    width, expected = cross_attention_width(header), unet_cross_attention_width(_unet_config_folder(settings))
    if width is None:
        raise FaceChainError("That file was refused: it has no cross-attention weights, so it is not a style LoRA "
                             "for an image model.")
    if width != expected:
        made_for = next((f.label for f in FAMILIES.values() if f.text_width == width), "another image model")
        raise FaceChainError(f"That file was refused: it is a LoRA for {made_for}, and this bot draws with "
                             f"{family.label}. Find the {family.label} version of it.")
    return family.name


def _unet_config_folder(settings: Settings) -> Path:
    """The folder whose unet/config.json says the base UNet's text width: the model's own, or, on a machine that
    holds only its model_index.json (a bot beside a cluster of GPU machines), the hub's copy of that one file."""
    reference = parse_model_reference(settings.base_model)
    if (folder := local_copy(reference)) is not None:
        return folder
    if reference.kind == "local":
        raise FaceChainError("The bot's image model folder has no unet/config.json, so a style LoRA can't be checked: "
                             "the bot's owner can run `facechain doctor`.")
    try:
        return hub_file(reference, "unet/config.json", "FACECHAIN_BASE_MODEL").parent.parent
    except ModelMissing:
        raise FaceChainError("The bot's image model can't be read right now, so a style LoRA can't be checked: try "
                             "again later.") from None


def remove_guild_style(settings: Settings, guild_id: str, style_id: str) -> Style:
    """Delete a style this server's admins added, and its LoRA; the bot's own styles stay."""
    catalogue = load_catalogue(settings, guild_id)
    style = catalogue.get(style_id)
    if style is None or not catalogue.added_by_guild(style):
        raise FaceChainError(f"This server added no style {style_id!r}: only styles added with `/facechain-admin "
                             "style-add` can be removed (allowed_styles in settings hides the bot's own).")
    style.file.unlink()
    (guild_styles_folder(settings, guild_id) / "loras" / f"{style.id}.safetensors").unlink(missing_ok=True)
    return style
