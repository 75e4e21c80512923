"""The jobs on a photo a member brings: their face pasted on it (`swap`, no GPU) or redrawn into it
with their face model (`redraw`). Both choose the face the same way and end the same way."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import FaceChainError
from engine.jobs.job_types import JobCancelled, JobContext, Runner, drawn_pictures, show_flagged, uploaded_file
from engine.jobs.queue import Job
from engine.models.loaded import LoadedModels

if TYPE_CHECKING:
    from engine.jobs.worker import Worker


# --- the classical swap ---------------------------------------------------------------------------------

@dataclass
class SwapInputs:
    photo: Any  # UploadedPhoto
    face_number: int | None
    face: Any  # MemberFace
    show_flagged: bool


@dataclass
class RedrawInputs(SwapInputs):
    face_model: Any = None  # FaceModelFiles: the member's trained face model
    trigger: str = ""  # the words it learned the face with
    seed: int = 0


@dataclass
class SwapOutputs:
    drawn: Any = None  # DrawnPortraits: the swapped photo(s), screened, best first
    face: int = 0
    faces_found: int = 0
    choose: int = 0  # several faces and none chosen: how many, and their numbered preview
    preview: bytes = b""
    method: str = "classical"  # "redrawn": the face model drew it; "pasted": its redrawing read worse than the paste


def _upload(job: Job, worker: Worker) -> Path:
    return uploaded_file(worker, job.params.get("upload", ""), "That photo is no longer here: send it again with "
                                                               "`/facechain swap`.")


def _swap_gather(worker: Worker, job: Job):
    """The photo the member sent (saved by the bot under <data>/tmp/) and their enrolled face."""
    from engine.generation.portrait import member_face
    from engine.preprocess import UploadedPhoto

    upload = _upload(job, worker)
    return SwapInputs(UploadedPhoto(job.params.get("name") or upload.name, upload.read_bytes()),
                      job.params.get("face"), member_face(worker.store, job.user_id), show_flagged(worker, job))


def _swap_compute(models: LoadedModels, inputs: SwapInputs, context: JobContext) -> SwapOutputs:
    from PIL import Image

    from engine.generation.portrait import DrawnPortraits, enrolled_face_from, screen
    from engine.generation.swap import SeveralFaces, swap_face_on
    from engine.postprocess import RankedPortrait

    context.update(0.2, "putting your face on the photo")
    enrolled = enrolled_face_from(models.analyzer, inputs.face)
    try:
        result = swap_face_on(models.analyzer, models.settings, enrolled, inputs.photo, inputs.face_number)
    except SeveralFaces as several:
        return SwapOutputs(choose=several.count, preview=several.preview)
    kept, held_back = screen(models.safety, [RankedPortrait(Image.fromarray(result.image), 0, result.similarity)],
                             inputs.show_flagged)
    return SwapOutputs(DrawnPortraits(kept, _held_back_notice(held_back), held_back), result.face, result.faces_found)


def _held_back_notice(held_back: int) -> str | None:
    return "This server's safety filter held the result back." if held_back else None


def _swap_record(worker: Worker, job: Job, inputs: SwapInputs, outputs: SwapOutputs) -> dict:
    from engine.generation.portrait import save_portraits

    if outputs.choose:  # the photo stays for the member's choice
        preview = worker.store.private_dir(job.user_id, "portraits") / f"swap-choose-job{job.id}.jpg"
        worker.store.write_private_file(preview, outputs.preview)
        return {"choose": outputs.choose, "preview": worker.store.relative(preview)}
    saved = save_portraits(worker.store, job.user_id, "swap", outputs.drawn.portraits, None, job.id)
    _upload(job, worker).unlink(missing_ok=True)
    return {"portraits": [p.to_json() for p in saved], "face": outputs.face, "faces_found": outputs.faces_found,
            "held_back": outputs.drawn.held_back, "notice": outputs.drawn.notice, "method": outputs.method}


def _swap_abandon(worker: Worker, job: Job, inputs: SwapInputs, error: Exception) -> None:
    Path(job.params["upload"]).unlink(missing_ok=True)  # the photo can't be used: it is not kept




# --- redrawn with the face model ------------------------------------------------------------------------

def _redraw_gather(worker: Worker, job: Job) -> RedrawInputs:
    """As a swap's, with the member's face model and its words; a fresh seed unless one was asked for."""
    from engine.generation.generate import MAX_SEED
    from engine.generation.portrait import face_model_files
    from engine.store.families import check_draws_scenes

    check_draws_scenes(worker.store)
    swap = _swap_gather(worker, job)
    model, user = worker.store.ready_face_model(job.user_id), worker.store.get_user(job.user_id)
    if model is None or user is None:
        raise FaceChainError("Your face model is gone: enroll again, or ask for the quick version of this swap.")
    seed = job.params.get("seed")
    return RedrawInputs(swap.photo, swap.face_number, swap.face, swap.show_flagged, face_model_files(worker.store,
                        job.user_id), model.meta.get("trigger", user.trigger),
                        int(seed) if seed is not None else random.randint(0, MAX_SEED))


def _redraw_compute(models: LoadedModels, inputs: RedrawInputs, context: JobContext) -> SwapOutputs:
    from engine.generation.portrait import DrawnPortraits, enrolled_face_from, face_model_folder, screen
    from engine.generation.redraw import PASTED_NOTICE, redraw_face
    from engine.generation.swap import SeveralFaces, choose_face

    try:
        chosen = choose_face(models.analyzer, models.settings, inputs.photo, inputs.face_number)
    except SeveralFaces as several:
        return SwapOutputs(choose=several.count, preview=several.preview)

    def on_step(step: int, total: int) -> None:
        if context.cancelled():
            raise JobCancelled(f"cancelled at step {step}")
        context.update(0.9 * step / total, "ranking by likeness" if step == total else f"redrawing {100 * step // total}%")

    enrolled = enrolled_face_from(models.analyzer, inputs.face)
    with face_model_folder(inputs.face_model) as folder:
        ranked = redraw_face(models.generator, models.analyzer, models.settings, enrolled, chosen.image, chosen.face,
                             folder, inputs.trigger, inputs.seed, on_step=on_step)
    kept, held_back = screen(models.safety, ranked, inputs.show_flagged)
    pasted = bool(kept) and bool(kept[0].pasted)
    return SwapOutputs(DrawnPortraits(kept, _held_back_notice(held_back) or (PASTED_NOTICE if pasted else None),
                                      held_back), chosen.number, chosen.faces_found,
                       method="pasted" if pasted else "redrawn")


PHOTO_RUNNERS = {
    # The face analysis of a swap runs on the CPU; on a cluster it still goes to an actor, which has the models.
    "swap": Runner(_swap_gather, _swap_compute, _swap_record, uses_gpu=False, abandon=_swap_abandon,
                   pictures=drawn_pictures),
    "redraw": Runner(_redraw_gather, _redraw_compute, _swap_record, abandon=_swap_abandon, pictures=drawn_pictures),
}
