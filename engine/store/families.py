"""The base model family the workers draw with, and members whose face model is of another one.

Face models belong to a family (a LoRA for SD1.5 does not fit SDXL). The family is kept in the
database, so the bot, the CLI and every worker look up face models of the same one. After the owner
switches the base model, a member's next request retrains their face model from their stored
selfies first; nothing they enrolled is lost.
"""

from __future__ import annotations

from engine.config import Settings
from engine.errors import FaceChainError
from engine.jobs.queue import SqliteJobQueue
from engine.models.family import FAMILIES, Family, base_family, family_of_reference, scenes_unavailable
from engine.store.members import queue_training
from engine.store.store import Store


def recorded_family(store: Store) -> Family | None:
    row = store.db.execute("select value from runtime where key = 'base_family'").fetchone()
    return FAMILIES.get(row[0]) if row else None


def instant_portraits_on(store: Store, settings: Settings) -> bool:
    """Whether instant portraits are drawn: the owner turned them on and the base model is SD1.5's family (their
    adapter, IP-Adapter FaceID Plus v2, is made for it)."""
    if not settings.instant:
        return False
    family = recorded_family(store) or family_of_reference(settings.base_model)
    return family is None or family.name == "sd15"


def record_family(store: Store, family: Family) -> None:
    if recorded_family(store) is not family:
        with store.transaction():
            store.db["runtime"].upsert({"key": "base_family", "value": family.name}, pk="key")


def sync_family(store: Store, settings: Settings, fetch: bool = True) -> Family | None:
    """The family of the configured base model, recorded for every process. Without `fetch` (the bot)
    nothing is downloaded: a base model not on this machine yet leaves the record as it is."""
    family = base_family(settings.base_model) if fetch else family_of_reference(settings.base_model)
    if family is not None:
        record_family(store, family)
    return family


def needs_rebuild(store: Store, user_id: str) -> bool:
    """Whether the member's face model was trained on another family than the one drawn with now (and
    their selfies are there to train a new one from)."""
    return (store.ready_face_model(user_id) is None and bool(store.face_models(user_id, status="ready"))
            and bool(store.accepted_selfies(user_id)))


def rebuild_if_needed(store: Store, queue: SqliteJobQueue, user_id: str, guild_id: str | None,
                      channel_id: str | None) -> bool:
    """Queue the member's retraining when their face model is of another family (a training already
    queued is reused); True when their portrait must wait for it."""
    if not needs_rebuild(store, user_id):
        return False
    queue_training(queue, user_id, guild_id, channel_id)
    return True


def check_draws_scenes(store: Store) -> None:
    """Poses, redrawn photos and scenes, pictures together and sharper copies are SD1.5's for now."""
    family = recorded_family(store)
    if family is not None and not family.draws_scenes:
        raise FaceChainError(scenes_unavailable(family))


REBUILDING = ("The bot now draws with a new image model, so your face model is being rebuilt from your enrolled "
              "selfies first (a few minutes); your portraits follow on their own.")
