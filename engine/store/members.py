"""What a member can see and change of their own data: their enrolled photos (numbered), their face
model, removing one photo (then a retrain on the rest). `facechain users show/remove-photo` and
`/facechain me` use these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import FaceChainError
from engine.jobs.queue import QueueLimit, SqliteJobQueue
from engine.store import SelfieRecord, Store
from engine.store.identities import save_identity
from engine.subjects import trigger_for_subject


@dataclass
class RemovedPhoto:
    number: int
    name: str
    remaining: int
    train_job_id: int | None  # the retraining on the remaining photos (None when none remain)


def numbered_photos(store: Store, user_id: str) -> list[tuple[int, SelfieRecord]]:
    """The member's enrolled photos as the contact sheet numbers them (best quality first, from 1)."""
    return list(enumerate(store.accepted_selfies(user_id), start=1))


def describe_member(store: Store, user_id: str) -> dict:
    user = store.get_user(user_id)
    if user is None:
        raise FaceChainError(f"Nothing is stored for {user_id}.")
    model = store.ready_face_model(user_id)
    return {
        "id": user_id, "subject": user.subject, "trigger": user.trigger, "consent_at": user.consent_at,
        "suggested_subject": user.suggested_subject, "together": user.together or "ask",
        "photos": [{"number": number, "name": selfie.original_name, "path": str(selfie.path),
                    "quality": round(selfie.quality, 3), "created_at": selfie.created_at}
                   for number, selfie in numbered_photos(store, user_id)],
        "face_model": None if model is None else {
            "version": model.version, "created_at": model.created_at, "finished_at": model.finished_at,
            "photos": len(model.meta.get("photos", [])), "steps": model.meta.get("steps")},
    }


def remove_photo(store: Store, queue: SqliteJobQueue, user_id: str, number: int,
                 guild_id: str | None = None, channel_id: str | None = None) -> RemovedPhoto:
    """Delete enrolled photo `number` (file and row) and retrain on the rest: a queued training is
    reused (it reads the photos when it starts)."""
    photos = numbered_photos(store, user_id)
    if not photos:
        raise FaceChainError("You have no enrolled photos.")
    if not 1 <= number <= len(photos):
        raise FaceChainError(f"There is no photo {number}: you have {len(photos)} (1 to {len(photos)}).")
    selfie = photos[number - 1][1]
    store.delete_selfie(selfie.id)
    save_identity(store, user_id, selfie.embedding_backend)
    instant_face_path(store, user_id).unlink(missing_ok=True)  # it was read from that photo too
    remaining = len(photos) - 1
    if remaining:
        queue_instant_read(queue, user_id)
    train_job_id = retrain(queue, user_id, guild_id, channel_id) if remaining else None
    return RemovedPhoto(number, selfie.original_name, remaining, train_job_id)


@dataclass
class SubjectChange:
    subject: str
    trigger: str
    changed: bool
    train_job_id: int | None  # the retraining with the new words (None when nothing to train on)


def change_subject(store: Store, queue: SqliteJobQueue, user_id: str, subject: str,
                   guild_id: str | None = None, channel_id: str | None = None) -> SubjectChange:
    """The member's own words for who they are (man, woman, boy, girl, person): the trigger phrase
    their face model learns, so a change retrains it on their enrolled photos."""
    trigger = trigger_for_subject(subject)
    user = store.get_user(user_id)
    if user is None:
        raise FaceChainError(f"Nothing is stored for {user_id}.")
    if user.subject == subject and user.trigger == trigger:
        return SubjectChange(subject, trigger, False, None)
    store.ensure_user(user_id, subject, trigger)
    train_job_id = retrain(queue, user_id, guild_id, channel_id) if store.accepted_selfies(user_id) else None
    return SubjectChange(subject, trigger, True, train_job_id)


def queue_training(queue: SqliteJobQueue, user_id: str, guild_id: str | None = None,
                   channel_id: str | None = None) -> int:
    """A training on the member's current photos and words: one already waiting is reused (it reads them
    when it starts); a running one trains again when it ends if they changed meanwhile. QueueLimit
    when the server's quota is spent."""
    active = [job for job in queue.active_jobs(user_id=user_id) if job.kind == "train"]
    return active[0].id if active else queue.enqueue("train", user_id, {}, guild_id=guild_id,
                                                     channel_id=channel_id).id


def retrain(queue: SqliteJobQueue, user_id: str, guild_id: str | None, channel_id: str | None) -> int | None:
    """`queue_training` after a change the member made: the change stands even when the quota is spent
    (None: training can be asked for later)."""
    try:
        return queue_training(queue, user_id, guild_id, channel_id)
    except QueueLimit:
        return None


# Said to a member who asks for an instant portrait (the bot says it; light: the bot imports this module).
INSTANT_NOT_READY = ("Instant portraits aren't ready for you yet: ask again in a minute, or once your face model "
                     "is trained.")
INSTANT_OFF = "This bot doesn't draw instant portraits: ask for a portrait from your face model."


def instant_face_path(store: Store, user_id: str) -> Path:
    """Where the member's face as instant portraits read it is kept (engine.generation.instant): with their data,
    so `forget` erases it with the rest."""
    return store.user_dir(user_id) / "instant" / "instant.safetensors"


def has_instant_face(store: Store, user_id: str) -> bool:
    return instant_face_path(store, user_id).is_file()


def queue_instant_read(queue: SqliteJobQueue, user_id: str) -> int | None:
    """With instant portraits on, a job reading the member's face from their enrolled photos for them (one
    already waiting is reused). Counted against no server's quota: it is part of their enrollment."""
    if not queue.settings.instant:
        return None
    waiting = [job for job in queue.active_jobs(user_id=user_id) if job.kind == "instant" and job.state == "queued"]
    if waiting:  # it reads the photos when it starts; a running one may have read them before the change
        return waiting[0].id
    try:
        return queue.enqueue("instant", user_id, {}).id
    except QueueLimit:
        return None
