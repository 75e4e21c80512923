"""Checking a portrait request, with no model loaded: the bot calls this before it queues a job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import Settings
from engine.errors import FaceChainError
from engine.generation.poses import Pose, find_pose, load_poses
from engine.store import Store
from engine.styles import Style, StyleCatalogue, mentions

MAX_PROMPT_CHARS = 200
# Refused in members' own words everywhere (each server adds its own): the negative prompt and the
# safety check guard results, these keep the asking out.
ALWAYS_BLOCKED = ("nsfw", "nude", "naked", "nudity", "topless", "porn", "porno", "pornographic", "sex", "sexual",
                  "explicit", "hentai", "lingerie", "genitals", "nipples")


def check_prompt_words(words: str, blocked: list[str] | tuple[str, ...] = ()) -> str:
    """A member's own prompt words, tidied; FaceChainError names what is wrong (too long, a blocked word)."""
    words = " ".join(words.split())
    if len(words) > MAX_PROMPT_CHARS:
        raise FaceChainError(f"Keep your own words to {MAX_PROMPT_CHARS} characters (got {len(words)}).")
    found = mentions(words, [*ALWAYS_BLOCKED, *blocked])
    if found:
        raise FaceChainError(f"The word {found[0]!r} is not allowed in portrait prompts here.")
    return words


def check_style_words(words: str) -> str:
    """A new style's prompt or negative prompt, tidied; the words no prompt may hold are refused."""
    words = " ".join(words.split())
    if found := mentions(words, list(ALWAYS_BLOCKED)):
        raise FaceChainError(f"The word {found[0]!r} is not allowed in a style's words.")
    return words


@dataclass
class CheckedRequest:
    style: Style
    trigger: str
    face_model: Path | None  # None: the base model alone (a preview while the face model trains)


def check_request(store: Store, settings: Settings, catalogue: StyleCatalogue, user_id: str, style_id: str,
                  count: int, need_model: bool = True) -> CheckedRequest | None:
    """Everything that can be wrong with a portrait request, checked before any model loads.
    With `need_model` false (a portrait that waits for a training), only the style and count."""
    style = catalogue.get(style_id)
    if style is None:
        close = catalogue.suggest(style_id)
        hint = f"did you mean {' or '.join(close)}?" if close else "see `facechain styles list`."
        raise FaceChainError(f"Unknown style {style_id!r}: {hint}")
    if not 1 <= count <= settings.portrait_candidates:
        raise FaceChainError(f"Ask for 1 to {settings.portrait_candidates} portraits (got {count}).")
    if not need_model:
        return None
    user = store.get_user(user_id)
    model = store.ready_face_model(user_id)
    if user is not None and model is None and (older := store.face_models(user_id, status="ready")):
        raise FaceChainError(f"User {user_id}'s face model was trained on another base model family "
                             f"({older[0].family}): `facechain train --user {user_id}` retrains it from their "
                             "enrolled selfies.")
    if user is None or model is None:
        raise FaceChainError(
            f"User {user_id} has no trained face model yet: enroll selfies, then `facechain train --user {user_id}`.")
    # The words the face model learned the face with (a changed subject applies from its retraining on).
    return CheckedRequest(style, model.meta.get("trigger", user.trigger), model.path)


def check_pose(settings: Settings, pose_id: str | None, from_photo: bool = False,
               points: dict | None = None, people: int = 1) -> Pose | None:
    """The preset pose a request names (for `people` people), or the one kept from a photo (`points`, for a
    re-roll); None for none or for a photo still to be read. FaceChainError when it is unknown or poses are
    off."""
    if not pose_id and not from_photo and points is None:
        return None
    if not settings.pose_controlnet.strip():
        raise FaceChainError("This bot does not draw poses: ask again without one.")
    if pose_id and (from_photo or points is not None):
        raise FaceChainError("Choose a preset pose or a pose photo, not both.")
    if from_photo and not settings.pose_detector.strip():
        raise FaceChainError("This bot reads no poses from photos: choose one of the preset poses.")
    if points is not None:
        return Pose.model_validate(points)
    return find_pose(load_poses(), pose_id, people) if pose_id else None
