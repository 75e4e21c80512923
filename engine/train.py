"""Train a user's face model from their enrolled selfies, as a new version in the store."""

from __future__ import annotations

from collections.abc import Callable

from engine.base_model import BasePipeline
from engine.config import Settings
from engine.errors import FaceChainError
from engine.lora_training import TrainingCancelled, TrainOptions, TrainProgress, train_face_lora
from engine.preprocess.trigger import caption
from engine.store import FaceModelRecord, Store


def options_for(settings: Settings, photo_count: int, steps: int | None = None) -> TrainOptions:
    total = steps or min(settings.train_max_steps, settings.train_steps_per_photo * photo_count)
    return TrainOptions(
        steps=total, rank=settings.lora_rank, alpha=settings.lora_alpha, learning_rate=settings.learning_rate,
        resolution=settings.train_resolution, checkpoint_every=max(10, total // 10),
    )


def train_user(
    store: Store,
    base: BasePipeline,
    settings: Settings,
    user_id: str,
    steps: int | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> FaceModelRecord:
    """Train (or resume training) the user's next face model version; ready only when it succeeds."""
    user = store.get_user(user_id)
    selfies = store.accepted_selfies(user_id)
    if user is None or not selfies:
        raise FaceChainError(f"User {user_id} has no enrolled selfies: run `facechain enroll --user {user_id}` first.")
    model = store.start_face_model(user_id, base.reference)
    options = options_for(settings, len(selfies), steps)
    try:
        result = train_face_lora(
            base, [selfie.path for selfie in selfies], caption(user.trigger), model.path, options,
            on_progress=on_progress, should_cancel=should_cancel,
        )
    except TrainingCancelled:
        raise  # the row stays 'training' and its checkpoint waits to be resumed
    except Exception as error:
        store.fail_face_model(model.id, f"{type(error).__name__}: {error}")
        raise
    return store.finish_face_model(model.id, {**result.meta, "trigger": user.trigger})
