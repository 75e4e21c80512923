"""The job that reads a member's face for instant portraits (engine.generation.instant), from their enrolled photos:
queued when photos are enrolled or removed, and at a worker's start for members enrolled before the mode was on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.jobs.job_types import Finished, JobContext, Runner
from engine.jobs.queue import Job
from engine.models.loaded import LoadedModels

if TYPE_CHECKING:
    from engine.jobs.worker import Worker


@dataclass
class EnrolledPhotos:
    user_id: str
    photos: list[bytes]  # their accepted selfies, as stored


def _gather(worker: Worker, job: Job):
    from engine.store.families import instant_portraits_on

    if not instant_portraits_on(worker.store, worker.settings):
        return Finished({"skipped": "instant portraits are off (or the base model is not SD1.5)"})
    photos = [selfie.path.read_bytes() for selfie in worker.store.accepted_selfies(job.user_id)]
    if not photos:  # forgotten, or every photo removed meanwhile
        return Finished({"skipped": "no enrolled photos"})
    return EnrolledPhotos(job.user_id, photos)


def _compute(models: LoadedModels, inputs: EnrolledPhotos, context: JobContext) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    context.update(0.2, "reading your face for instant portraits")
    photos = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in inputs.photos]
    try:
        return models.instant_reader.read(photos).to_bytes()
    finally:
        models.done_reading()


def _record(worker: Worker, job: Job, inputs: EnrolledPhotos, face: bytes) -> dict:
    from engine.store.members import instant_face_path

    if not worker.store.accepted_selfies(job.user_id):  # forgotten while it was read: nothing is kept
        return {"skipped": "forgotten meanwhile"}
    path = instant_face_path(worker.store, job.user_id)
    worker.store.private_dir(job.user_id, path.parent.name)
    worker.store.write_private_file(path, face)
    return {"instant": True}


def queue_missing_instant_reads(worker: Worker) -> int:
    """With instant portraits on, a read for each enrolled member who has none (nor one queued): the members
    enrolled before the mode was turned on."""
    from engine.store.members import has_instant_face, queue_instant_read

    if not worker.settings.instant:
        return 0
    queued = 0
    for user_id in [user["id"] for user in worker.store.list_users() if user["selfies"]]:
        if not has_instant_face(worker.store, user_id) and queue_instant_read(worker.queue, user_id) is not None:
            queued += 1
    return queued


INSTANT_RUNNERS = {"instant": Runner(_gather, _compute, _record)}
