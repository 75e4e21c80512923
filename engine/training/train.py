"""Train a user's face model from their enrolled selfies, as a new version in the store.

Three steps, so the training itself can run where the store is not (a GPU machine of the cluster):
`training_inputs` reads the store, `train_from_inputs` trains from bytes in a scratch folder and
hands back bytes, `record_training` writes the new version. Checkpoints go to the store as they come.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.config import Settings
from engine.errors import FaceChainError, ModelUnavailable
from engine.jobs.scratch import scratch_prefix
from engine.models.base_model import BasePipeline
from engine.models.family import base_family
from engine.preprocess.trigger import caption
from engine.store import FaceModelRecord, Store
from engine.store.families import record_family
from engine.training.files import CHECKPOINT_FILE
from engine.training.lora import TrainingCancelled, TrainOptions, TrainProgress, train_face_lora


@dataclass
class TrainingInputs:
    user_id: str
    model_id: int  # the face_models row being trained
    photos: list[tuple[str, bytes]]  # (file name, aligned crop JPEG)
    caption: str
    trigger: str
    options: TrainOptions
    checkpoint: bytes | None  # the last checkpoint of this version, to resume from
    family: str = "sd15"  # the base model family it is trained for


@dataclass
class TrainedWeights:
    files: dict[str, bytes]  # the version folder's files (LoRA weights, meta.json)
    meta: dict


def options_for(settings: Settings, photo_count: int, steps: int | None = None, family: str = "sd15") -> TrainOptions:
    total = steps or min(settings.train_max_steps, settings.train_steps_per_photo * photo_count)
    return TrainOptions(
        steps=total, rank=settings.lora_rank, alpha=settings.lora_alpha, learning_rate=settings.learning_rate,
        resolution=settings.train_resolution_for(family), checkpoint_every=max(10, total // 10),
        compile=settings.train_compile,
    )


def checkpoint_path(model: FaceModelRecord) -> Path:
    return model.path.with_name(model.path.name + ".partial") / CHECKPOINT_FILE


def training_inputs(store: Store, settings: Settings, user_id: str, base_reference: str,
                    steps: int | None = None) -> TrainingInputs:
    """The user's photos and the version to train (an unfinished one is resumed from its checkpoint)."""
    user = store.get_user(user_id)
    selfies = store.accepted_selfies(user_id)
    if user is None or not selfies:
        raise FaceChainError(f"User {user_id} has no enrolled selfies: run `facechain enroll --user {user_id}` first.")
    family = base_family(base_reference)
    if base_reference == settings.base_model:
        record_family(store, family)
    model = store.start_face_model(user_id, base_reference, family.name)
    checkpoint = checkpoint_path(model)
    return TrainingInputs(user_id, model.id, [(s.path.name, s.path.read_bytes()) for s in selfies],
                          caption(user.trigger), user.trigger, options_for(settings, len(selfies), steps, family.name),
                          checkpoint.read_bytes() if checkpoint.is_file() else None, family.name)


def train_from_inputs(
    base: BasePipeline,
    inputs: TrainingInputs,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[bytes], None] | None = None,
) -> TrainedWeights:
    """Train in a scratch folder (anywhere: no store); each checkpoint's bytes go to `on_checkpoint`."""
    if base.family.name != inputs.family:  # a machine left on another base model than the settings name
        raise ModelUnavailable(f"This machine's base model is {base.family.label}, but the face model is to be "
                               f"trained for {inputs.family}: give every machine the same FACECHAIN_BASE_MODEL.")
    with tempfile.TemporaryDirectory(prefix=scratch_prefix("train")) as scratch:
        photos = Path(scratch) / "photos"
        photos.mkdir()
        for name, data in inputs.photos:
            (photos / name).write_bytes(data)
        output = Path(scratch) / "model"
        if inputs.checkpoint is not None:
            partial = output.with_name("model.partial")
            partial.mkdir()
            (partial / CHECKPOINT_FILE).write_bytes(inputs.checkpoint)
        result = train_face_lora(
            base, [photos / name for name, _ in inputs.photos], inputs.caption, output, inputs.options,
            on_progress=on_progress, should_cancel=should_cancel,
            on_checkpoint=(lambda path: on_checkpoint(path.read_bytes())) if on_checkpoint else None,
        )
        return TrainedWeights({path.name: path.read_bytes() for path in output.iterdir() if path.is_file()},
                              result.meta)


def save_checkpoint(store: Store, model_id: int, data: bytes) -> None:
    """Keep a training's checkpoint with its version (written whole: never a half file)."""
    path = checkpoint_path(store.face_model(model_id))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_bytes(data)
    os.replace(scratch, path)


def record_training(store: Store, inputs: TrainingInputs, trained: TrainedWeights) -> FaceModelRecord:
    """Write the trained version's files and mark it ready; its checkpoint is no longer needed."""
    model = store.face_model(inputs.model_id)
    model.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, data in trained.files.items():
        store.write_private_file(model.path / name, data)
    shutil.rmtree(checkpoint_path(model).parent, ignore_errors=True)
    return store.finish_face_model(model.id, {**trained.meta, "trigger": inputs.trigger})


def changed_since(store: Store, inputs: TrainingInputs) -> bool:
    """Whether the member's photos or words changed while this training ran (it trained on what it read
    when it started): then another training is due."""
    user = store.get_user(inputs.user_id)
    photos = [s.path.name for s in store.accepted_selfies(inputs.user_id)]
    return user is not None and bool(photos) and (
        user.trigger != inputs.trigger or sorted(photos) != sorted(name for name, _ in inputs.photos))


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
    inputs = training_inputs(store, settings, user_id, base.reference, steps)
    try:
        trained = train_from_inputs(base, inputs, on_progress, should_cancel,
                                    on_checkpoint=lambda data: save_checkpoint(store, inputs.model_id, data))
    except TrainingCancelled:
        raise  # the row stays 'training' and its checkpoint waits to be resumed
    except Exception as error:
        store.fail_face_model(inputs.model_id, f"{type(error).__name__}: {error}")
        raise
    return record_training(store, inputs, trained)
