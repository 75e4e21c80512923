"""Portrait styles, one TOML file each in `styles/`. Adding a style needs no code.

A style owns its whole look: its prompt, and the frame and negative prompt of its family
(`styles/_families.toml`: photo, illustration, painting, ...) unless it sets its own. An art
style never gets photo terms and never negates its own medium: loading checks both. A file that
fails validation is reported with its path and field; the other styles still load.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from engine.errors import FaceChainError

if TYPE_CHECKING:
    from engine.config import Settings

STYLES_DIR = Path(__file__).resolve().parent.parent / "styles"
OWNER_STYLES = "styles"  # the folder, in the data folder, of the styles a server owner added
FAMILIES_FILE = "_families.toml"
STYLE_ID = r"^[a-z0-9][a-z0-9_-]{0,39}$"
PHOTO_FAMILIES = ("photo", "monochrome-photo")


class Family(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frame: str = Field(min_length=1)
    negative: str = Field(min_length=1)
    medium: list[str] = Field(min_length=1)  # words of the family's own medium, never negated


class StyleLora(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference: str = Field(min_length=1)  # local .safetensors / folder, Hugging Face id, or modelscope:<id>
    weight_name: str | None = None  # the one file fetched from a hub repo, or read from a folder
    revision: str | None = None  # hub revision (branch, tag or commit); None = the default branch
    weight: float = Field(default=0.35, ge=0, le=1.5)  # FaceChain uses 0.25-0.45
    # The base model families it was trained for (engine.models.family): on another, the style is drawn
    # from its words alone.
    bases: list[Literal["sd15", "sdxl"]] = Field(default=["sd15"], min_length=1)
    # A file on the store's machine: its SHA-256, set where jobs are read (engine.generation.style_files),
    # never read from a style file.
    _digest: str | None = PrivateAttr(default=None)

    @property
    def digest(self) -> str | None:
        return self._digest

    @digest.setter
    def digest(self, value: str | None) -> None:
        self._digest = value

    def fits(self, family: str) -> bool:
        return family in self.bases

    @model_validator(mode="after")
    def _hub_needs_a_file(self) -> StyleLora:
        from engine.models.references import parse_model_reference

        if parse_model_reference(self.reference).kind != "local" and not self.weight_name:
            raise ValueError("weight_name is needed for a hub reference (only that one file is downloaded)")
        return self


# Samplers a style may name; DPM++ 2M Karras is what the default base model's card and FaceChain use.
SAMPLERS = ("dpmpp_2m_karras", "dpmpp_2m", "euler_a", "euler", "ddim", "unipc")


class Sampler(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal[SAMPLERS] = "dpmpp_2m_karras"
    steps: int = Field(default=40, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0, le=30)


class Style(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=STYLE_ID)
    name: str = Field(min_length=1, max_length=60)
    description: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1, max_length=600)
    negative_prompt: str = Field(default="", max_length=600)  # added to the family's negative prompt
    family: str = "photo"  # whose frame and negative prompt it inherits (styles/_families.toml)
    frame: str | None = Field(default=None, max_length=600)  # its own frame instead of the family's
    negative_frame: str | None = Field(default=None, max_length=600)  # its own negative instead of the family's
    face_weight: float = Field(default=0.9, ge=0, le=1.5)  # FaceChain uses 0.8-0.95
    lora: StyleLora | None = None
    sampler: Sampler = Sampler()
    preview: Path | None = None  # image shown in /facechain styles, relative to the styles folder
    tags: list[str] = []
    file: Path | None = Field(default=None, exclude=True)  # the file it was read from (not written in it)

    @property
    def lora_setting(self) -> str:
        """Where an owner changes this style's LoRA reference, for messages that tell them to."""
        return f"the `reference` under [lora] in {self.file or f'the style file {self.id}.toml'}"


@dataclass(frozen=True)
class StyleProblem:
    path: Path
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.message}"


@dataclass
class StyleCatalogue:
    styles: dict[str, Style]  # each with its frame and negative_frame filled in from its family
    problems: list[StyleProblem]
    folder: Path = STYLES_DIR
    families: dict[str, Family] | None = None
    owner_folder: Path | None = None  # the styles the owner added (`facechain styles add`), in the data folder
    guild_folder: Path | None = None  # a server's own styles (/facechain-admin style-add)

    def preview_path(self, style: Style) -> Path | None:
        """The style's preview image, if it exists inside the style's own folder."""
        if style.preview is None:
            return None
        folder = (style.file.parent if style.file else self.folder).resolve()
        path = (folder / style.preview).resolve()
        return path if path.is_relative_to(folder) and path.is_file() else None

    def added_by_owner(self, style: Style) -> bool:
        return self.owner_folder is not None and style.file is not None and style.file.parent == self.owner_folder

    def added_by_guild(self, style: Style) -> bool:
        return self.guild_folder is not None and style.file is not None and style.file.parent == self.guild_folder

    def get(self, style_id: str) -> Style | None:
        return self.styles.get(style_id)

    def suggest(self, typed: str, limit: int = 3) -> list[str]:
        """Style ids close to a mistyped one."""
        import difflib

        by_name = {s.name.lower(): s.id for s in self.styles.values()}
        close = difflib.get_close_matches(typed.lower(), [*self.styles, *by_name], n=limit, cutoff=0.6)
        return list(dict.fromkeys(by_name.get(match, match) for match in close))

    def search(self, typed: str, limit: int = 25) -> list[Style]:
        """Styles whose id, name or tags contain what was typed, names starting with it first."""
        text = typed.strip().lower()
        found = [s for s in self.styles.values() if not text or text in s.id or text in s.name.lower()
                 or any(text in tag for tag in s.tags)]
        found.sort(key=lambda s: (not s.name.lower().startswith(text), s.name.lower()))
        return found[:limit]


def load_style(path: Path) -> Style:
    style = _read_style(path, path.read_text(encoding="utf-8"))
    if style.lora is not None:  # a copy of the LoRA part, which callers annotate (its hash, its bases)
        style = style.model_copy(update={"lora": style.lora.model_copy(deep=True)})
    if style.preview is not None and not (path.parent / style.preview).is_file():
        raise ValueError(f"preview: file {style.preview} not found next to the style")
    return style


@functools.lru_cache(maxsize=1024)
def _read_style(path: Path, text: str) -> Style:
    """A style file parsed once per content (every job reads the catalogue: parsing it all took ~10 ms)."""
    data = tomllib.loads(text)
    data.setdefault("id", path.stem)
    data.pop("file", None)  # not a field a style file sets
    return Style.model_validate(data).model_copy(update={"file": path})


def load_families(folder: Path) -> dict[str, Family]:
    """The families in the styles folder's _families.toml, or the shipped ones."""
    path = folder / FAMILIES_FILE if (folder / FAMILIES_FILE).is_file() else STYLES_DIR / FAMILIES_FILE
    return dict(_read_families(path.read_text("utf-8")))


@functools.lru_cache(maxsize=64)
def _read_families(text: str) -> dict[str, Family]:
    return {name: Family.model_validate(data) for name, data in tomllib.loads(text).items()}


@functools.lru_cache(maxsize=8192)  # every job's catalogue checks the same styles' words again
def _words(text: str) -> str:
    return f" {re.sub(r'[^a-z0-9]+', ' ', text.lower())} "


def mentions(text: str, terms: list[str]) -> list[str]:
    """The terms that appear in `text` as whole words."""
    padded = _words(text)
    return [term for term in terms if _words(term) in padded]


def look_problems(style: Style, families: dict[str, Family]) -> list[tuple[str, str]]:
    """(field, message) for a look that fights itself: an art style with photo terms, a negative
    prompt that names the style's own medium."""
    family = families[style.family]
    problems = []
    negative = f"{style.negative_frame}, {style.negative_prompt}"
    if negated := mentions(negative, family.medium):
        problems.append(("negative_prompt", f"negates its own medium ({', '.join(negated)})"))
    if style.family not in PHOTO_FAMILIES:
        photo_terms = families["photo"].medium if "photo" in families else []
        if found := mentions(f"{style.prompt}, {style.frame}", photo_terms):
            article = "an" if style.family[0] in "aeiou" else "a"
            problems.append(("prompt", f"{article} {style.family} style with photo terms ({', '.join(found)})"))
    return problems


def style_files(folder: Path | None) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.toml") if not p.name.startswith("_")) if folder else []


def owner_styles_folder(settings: Settings) -> Path:
    return Path(settings.data_dir) / OWNER_STYLES


def guild_styles_folder(settings: Settings, guild_id: str) -> Path:
    """Where a server's admins' styles live: theirs alone, beside the owner's in the data folder."""
    return owner_styles_folder(settings) / "guilds" / re.sub(r"[^\w-]", "_", str(guild_id))  # never a path


def load_catalogue(settings: Settings, guild_id: str | None = None) -> StyleCatalogue:
    """The styles this bot offers: the shipped ones (or FACECHAIN_STYLES_DIR's), those its owner added,
    and with `guild_id` those that server's admins added."""
    return load_styles(settings.styles_dir, owner_styles_folder(settings),
                       guild_styles_folder(settings, guild_id) if guild_id else None)


def load_styles(folder: Path | None = None, owner_folder: Path | None = None,
                guild_folder: Path | None = None) -> StyleCatalogue:
    folder = folder or STYLES_DIR
    styles: dict[str, Style] = {}
    problems: list[StyleProblem] = []
    families = load_families(Path(folder))
    for path in [*style_files(folder), *style_files(owner_folder), *style_files(guild_folder)]:
        try:
            style = load_style(path)
        except tomllib.TOMLDecodeError as error:
            problems.append(StyleProblem(path, "file", f"not valid TOML ({error})"))
            continue
        except ValidationError as error:
            for item in error.errors():
                problems.append(StyleProblem(path, ".".join(map(str, item["loc"])) or "file", item["msg"]))
            continue
        except (ValueError, OSError) as error:
            field, _, message = str(error).partition(": ")
            problems.append(StyleProblem(path, field if message else "file", message or str(error)))
            continue
        if style.id in styles:
            problems.append(StyleProblem(path, "id", f"{style.id!r} is already used by another style"))
            continue
        if style.family not in families:
            problems.append(StyleProblem(path, "family", f"unknown family {style.family!r}: one of "
                                                         f"{', '.join(families)}"))
            continue
        family = families[style.family]
        style = style.model_copy(update={"frame": style.frame or family.frame,
                                         "negative_frame": style.negative_frame or family.negative})
        if look := look_problems(style, families):
            problems += [StyleProblem(path, field, message) for field, message in look]
            continue
        styles[style.id] = style
    return StyleCatalogue(styles, problems, Path(folder), families, Path(owner_folder) if owner_folder else None,
                          Path(guild_folder) if guild_folder else None)


def new_style(catalogue: StyleCatalogue, fields: dict) -> Style:
    """A style to add, from its fields, checked by the same rules as the shipped ones (FaceChainError
    names the first problem)."""
    try:
        style = Style.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        raise FaceChainError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    families = catalogue.families or {}
    if style.family not in families:
        raise FaceChainError(f"Unknown family {style.family!r}: one of {', '.join(families)}.")
    family = families[style.family]
    filled = style.model_copy(update={"frame": family.frame, "negative_frame": family.negative})
    if problems := look_problems(filled, families):
        field, message = problems[0]
        raise FaceChainError(f"{field}: {message}.")
    return style


def style_toml(style: Style) -> str:
    """The style file, in the fields styles/README.md documents."""
    def text(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string

    lines = [f"# {style.name}: {style.description}", "# Added by `facechain styles` (the data folder's styles).",
             f"name = {text(style.name)}", f"description = {text(style.description)}", f"prompt = {text(style.prompt)}"]
    if style.negative_prompt:
        lines.append(f"negative_prompt = {text(style.negative_prompt)}")
    lines += [f"family = {text(style.family)}", f"face_weight = {style.face_weight}"]
    if style.lora is not None:
        lines += ["", "[lora]", f"reference = {text(style.lora.reference)}"]
        if style.lora.weight_name:
            lines.append(f"weight_name = {text(style.lora.weight_name)}")
        if style.lora.revision:
            lines.append(f"revision = {text(style.lora.revision)}")
        lines.append(f"weight = {style.lora.weight}")
        lines.append(f"bases = {json.dumps(style.lora.bases)}")
    return "\n".join(lines) + "\n"
