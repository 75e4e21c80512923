"""What a job does, in three steps, so it can run where the store is not.

`gather` reads the store (on the machine that has it) and returns the job's inputs as plain values
and bytes; `compute` does the model work from those inputs anywhere (the local worker, or a Ray
actor on another GPU machine) and returns bytes and plain values; `record` writes them through the
store and returns the job's result. The local worker calls the three in a row; the cluster's
dispatcher calls `gather` and `record` and ships `compute` to an actor. No step is written twice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import FaceChainError, ModelUnavailable
from engine.jobs.instant_runner import INSTANT_RUNNERS
from engine.jobs.job_types import (  # noqa: F401 - JobContext and the outcomes are imported from here too
    FACE_ADAPTER_KINDS,
    Finished,
    HeartbeatContext,
    JobCancelled,
    JobContext,
    Runner,
    WaitForTraining,
    drawn_pictures,
    show_flagged,
    uploaded_file,
)
from engine.jobs.photo_runners import PHOTO_RUNNERS
from engine.jobs.queue import Job, LeaseLost, QueueLimit
from engine.jobs.together_runner import TOGETHER_RUNNERS
from engine.models.loaded import LoadedModels
from engine.store.moderation import audit

if TYPE_CHECKING:  # types only: the worker runs the runners, they never run it
    from engine.jobs.heartbeat import Heartbeat
    from engine.jobs.worker import Worker


class ComputeLost(Exception):
    """The computation's machine went away mid-job (a cluster node or actor died); the job is retried,
    and nothing about its inputs was wrong."""


def compute_job(kind: str, models: LoadedModels, inputs: Any, context: JobContext, low_memory: bool = False) -> Any:
    """The model work of a job, on whatever machine runs it."""
    runner = RUNNERS[kind]
    if runner.uses_gpu:
        models.fit_memory(low_memory)
    return runner.compute(models, inputs, context)


def run_job_with(worker: Worker, job: Job, beat: Heartbeat,
                 compute: Callable[[Any, JobContext], Any]) -> dict:
    """Gather, compute (with `compute`: here, or on a cluster actor) and record one job."""
    runner = RUNNERS[job.kind]
    if (kept := worker.queue.kept_result(job.lease)) is not None:  # recorded before; only its end was lost
        return kept
    inputs = runner.gather(worker, job)
    if isinstance(inputs, Finished):
        return inputs.result

    def keep(data: bytes) -> None:  # only the job's current holder writes its checkpoints
        if runner.keep_checkpoint is not None:
            worker.queue.check_lease(job.lease)
            runner.keep_checkpoint(worker, inputs, data)

    context = HeartbeatContext(beat, worker.stopping, keep)
    try:
        outputs = compute(inputs, context)
    except FaceChainError as error:  # final (bad input, a damaged file): the runner cleans up
        if runner.abandon is not None and not isinstance(error, (ModelUnavailable, LeaseLost, training_cancelled())):
            runner.abandon(worker, job, inputs, error)
        raise
    if runner.pictures is not None:
        from engine.generation.portrait import mark_ahead

        mark_ahead(runner.pictures(outputs), worker.store.data_dir)
    # A result for a job no longer ours is thrown away; ours is recorded once: with its note on the job,
    # in one transaction, so a retry after a failed `complete` finds it instead of recording it again.
    with worker.store.transaction():
        worker.queue.check_lease(job.lease)
        result = runner.record(worker, job, inputs, outputs)
        worker.queue.keep_result(job.lease, result)
    return result


def run_locally(worker: Worker, job: Job, beat: Heartbeat) -> dict:
    return run_job_with(worker, job, beat, lambda inputs, context: compute_job(
        job.kind, worker.models, inputs, context, bool(job.params.get("low_memory"))))


def training_cancelled() -> type:
    """Imported late: engine.training.lora pulls in torch."""
    from engine.training.lora import TrainingCancelled

    return TrainingCancelled


# --- enroll ------------------------------------------------------------------------------------------

def _enroll_gather(worker: Worker, job: Job):
    """The photos the bot saved under <data>/tmp/, and what the member has enrolled."""
    from engine.preprocess import UploadedPhoto
    from engine.preprocess.enroll import enrollment_inputs

    photos = []
    for upload in job.params.get("uploads", []):
        path = uploaded_file(worker, upload["path"], f"Upload {upload.get('name', '?')} is missing; send the photos "
                                                     "again.")
        photos.append(UploadedPhoto(upload.get("name") or path.name, path.read_bytes()))
    try:
        return enrollment_inputs(worker.store, worker.settings, job.user_id, photos, job.params.get("subject"))
    except FaceChainError:
        _delete_uploads(job)
        raise


def _enroll_compute(models: LoadedModels, inputs, context: JobContext):
    from engine.preprocess.enroll import check_photos

    context.update(0.1, "checking photos")
    return check_photos(models.analyzer, models.settings, inputs)


def _enroll_record(worker: Worker, job: Job, inputs, checked) -> dict:
    from engine.preprocess.enroll import record_enrollment
    from engine.store.members import queue_instant_read, queue_training

    report = record_enrollment(worker.store, inputs, checked)
    if report.face_match is not None:  # the server's admins see it; the member is named, the match is not
        audit(worker.store, job.guild_id, "enroll refused: face match" if report.face_match.strict
              else "enroll: face like another member", None, job.user_id,
              f"identity distance {report.face_match.distance:.2f} to another enrolled member")
    _delete_uploads(job)  # after any other error they stay for the retry (maintenance clears old ones)
    result = report.to_json()
    if report.result.accepted and (instant_job := queue_instant_read(worker.queue, job.user_id)):
        result["instant_job_id"] = instant_job  # before the preview and the training: they draw with it
    if job.params.get("train_after") and report.result.accepted:
        first_model = worker.store.ready_face_model(job.user_id) is None
        if first_model and worker.settings.training_previews:  # queued first: it runs before the training
            try:
                result["teaser_job_id"] = _queue_teaser(worker, job)
            except QueueLimit:
                pass
        try:
            result["train_job_id"] = queue_training(worker.queue, job.user_id, job.guild_id, job.channel_id)
        except QueueLimit as limit:  # the photos are enrolled; training can be asked for later
            result["train_error"] = str(limit)
    return result


def _delete_uploads(job: Job) -> None:
    for upload in job.params.get("uploads", []):
        Path(upload["path"]).unlink(missing_ok=True)


def _queue_teaser(worker: Worker, job: Job) -> int | None:
    """Two preview portraits while the first face model trains (behind trained members' portraits)."""
    import logging

    from engine.styles import load_catalogue

    style = worker.settings.training_preview_style
    if load_catalogue(worker.settings, job.guild_id).get(style) is None:
        logging.getLogger(__name__).warning(
            "FACECHAIN_TRAINING_PREVIEW_STYLE=%s is not a style: no preview portraits", style)
        return None
    return worker.queue.enqueue("teaser", job.user_id, {"style": style, "count": 2}, guild_id=job.guild_id,
                                channel_id=job.channel_id).id


# --- train ---------------------------------------------------------------------------------------------

def _train_gather(worker: Worker, job: Job):
    from engine.training.train import training_inputs

    return training_inputs(worker.store, worker.settings, job.user_id, worker.settings.base_model, job.params.get("steps"))


def _train_compute(models: LoadedModels, inputs, context: JobContext):
    from engine.training.train import train_from_inputs

    context.update(0.0, "loading the model")
    return train_from_inputs(
        models.base, inputs,
        on_progress=lambda p: context.update(p.step / p.total,
                                             f"training {p.step}/{p.total}, about {p.eta_seconds:.0f} s left"),
        should_cancel=context.should_stop, on_checkpoint=context.save_checkpoint)


def _train_record(worker: Worker, job: Job, inputs, trained) -> dict:
    from engine.training.train import changed_since, record_training

    model = record_training(worker.store, inputs, trained)
    result = {"version": model.version, "path": str(model.path), "steps": model.meta["steps"],
              "final_loss": model.meta["final_loss"], "resumed_from_step": model.meta["resumed_from_step"]}
    if changed_since(worker.store, inputs):  # a photo removed or new words while it ran: train again
        try:
            result["retrain_job_id"] = worker.queue.enqueue("train", job.user_id, {}, guild_id=job.guild_id,
                                                            channel_id=job.channel_id, follows=job.id).id
        except QueueLimit:  # a training already waits, or the quota: it reads the current photos and words
            pass
    return result


def _train_keep_checkpoint(worker: Worker, inputs, data: bytes) -> None:
    from engine.training.train import save_checkpoint

    save_checkpoint(worker.store, inputs.model_id, data)


def _train_abandon(worker: Worker, job: Job, inputs, error: Exception) -> None:
    worker.store.fail_face_model(inputs.model_id, f"{type(error).__name__}: {error}")


# --- generate and teaser -------------------------------------------------------------------------------

def current_face_model(worker: Worker, job: Job) -> None:
    """Record the base model's family; a member whose face model is of the previous one waits for its
    rebuild from their selfies (queued here) instead of failing."""
    from engine.store.families import REBUILDING, rebuild_if_needed, sync_family

    sync_family(worker.store, worker.settings)
    if rebuild_if_needed(worker.store, worker.queue, job.user_id, job.guild_id, job.channel_id):
        raise WaitForTraining(REBUILDING)


def _generate_gather(worker: Worker, job: Job):
    from engine.generation.portrait import portrait_inputs
    from engine.generation.style_files import job_catalogue
    from engine.nsfw_policy import may_show_flagged
    from engine.store.community import guild_settings

    params = job.params
    current_face_model(worker, job)
    # Requests from DMs and the CLI have no server: flagged portraits are blocked there.
    server = guild_settings(worker.store, job.guild_id) if job.guild_id else None
    return portrait_inputs(
        worker.store, worker.settings, job_catalogue(worker.settings, job.guild_id), job.user_id, params.get("style", ""),
        count=int(params.get("count", 4)), seed=params.get("seed"), variation_of=params.get("variation_of"),
        show_flagged=may_show_flagged(server.nsfw_policy if server else "block", bool(params.get("age_restricted"))),
        fast=params.get("fast"), words=params.get("prompt") or "", blocked_words=server.blocked_words if server else (),
        pose=params.get("pose"), pose_photo=_pose_photo(worker, job), pose_points=params.get("pose_points"),
        instant=_instant_face(worker, job) if params.get("instant") else None)


def _read_instant_face(worker: Worker, user_id: str) -> bytes | None:
    """The member's face as instant portraits read it, while they are drawn and it has been read."""
    from engine.store.families import instant_portraits_on
    from engine.store.members import instant_face_path

    path = instant_face_path(worker.store, user_id)
    return path.read_bytes() if instant_portraits_on(worker.store, worker.settings) and path.is_file() else None


def _instant_face(worker: Worker, job: Job) -> bytes | None:
    """The member's face as instant portraits read it, for a request that asked for one. Without it (the mode was
    turned off, or their photos are being read again), a member with a face model gets the usual portraits."""
    from engine.store.members import INSTANT_NOT_READY

    if (face := _read_instant_face(worker, job.user_id)) is not None:
        return face
    if worker.store.ready_face_model(job.user_id) is not None:
        return None
    raise FaceChainError(INSTANT_NOT_READY)


def _pose_photo(worker: Worker, job: Job) -> bytes | None:
    """The pose photo the member sent with a portrait request (saved by the bot under <data>/tmp/)."""
    if not job.params.get("pose_upload"):
        return None
    return uploaded_file(worker, job.params["pose_upload"], "That pose photo is no longer here: ask again with it."
                         ).read_bytes()


def _forget_pose_photo(job: Job) -> None:
    if job.params.get("pose_upload"):
        Path(job.params["pose_upload"]).unlink(missing_ok=True)


def _portraits_abandon(worker: Worker, job: Job, inputs, error: Exception) -> None:
    _forget_pose_photo(job)  # the request can't be drawn: its pose photo is not kept


def _resolve_model_problems(worker: Worker, fast: bool, pose) -> None:
    """The optional models a drawing used loaded: an open incident about them is over."""
    from engine.generation.body_pose import POSE_DETECTOR_PROBLEM
    from engine.generation.depth import DEPTH_PROBLEM
    from engine.generation.generate import FAST_PROBLEM
    from engine.generation.pose_control import POSE_PROBLEM
    from engine.store.setup_problems import resolve_setup_problems

    used = [FAST_PROBLEM] * fast + [POSE_PROBLEM] * (pose is not None)
    from_photo = pose is not None and pose.id == "photo"
    used += [POSE_DETECTOR_PROBLEM] * from_photo + [DEPTH_PROBLEM] * (from_photo and worker.settings.pose_depth)
    for key in used:
        resolve_setup_problems(worker.store, key)


def _teaser_gather(worker: Worker, job: Job):
    """The preview portraits: skipped when the face model finished first (the real ones are better)."""
    from engine.generation.portrait import portrait_inputs
    from engine.generation.style_files import job_catalogue
    from engine.nsfw_policy import may_show_flagged
    from engine.store.community import server_nsfw_policy
    from engine.store.families import sync_family

    sync_family(worker.store, worker.settings)
    if worker.store.ready_face_model(job.user_id) is not None:
        return Finished({"skipped": "the face model is ready", "portraits": []})
    policy = server_nsfw_policy(worker.store, job.guild_id)
    return portrait_inputs(worker.store, worker.settings, job_catalogue(worker.settings, job.guild_id), job.user_id,
                           job.params["style"], count=int(job.params.get("count", 2)),
                           show_flagged=may_show_flagged(policy, False), teaser=True,
                           instant=_read_instant_face(worker, job.user_id))  # read before this preview, mode on


def _portraits_compute(models: LoadedModels, inputs, context: JobContext):
    from engine.generation.portrait import draw_portraits

    def on_step(step: int, total: int) -> None:
        if context.cancelled():
            raise JobCancelled(f"cancelled at step {step}")
        if inputs.teaser:
            what = "your instant likeness" if inputs.instant else "your preview"
            context.update(0.9 * step / total, f"drawing {what}")
        else:
            context.update(0.9 * step / total, "ranking by likeness" if step == total else f"generating {100 * step // total}%")

    return draw_portraits(models.generator, models.analyzer, models.settings, inputs, models.safety, on_step)


def _portraits_record(worker: Worker, job: Job, inputs, drawn) -> dict:
    from engine.generation.portrait import record_portraits
    from engine.store.families import recorded_family

    result = record_portraits(worker.store, inputs, drawn, job_id=job.id)
    _forget_pose_photo(job)  # read: only its pose is kept, for re-rolls
    pose = drawn.pose
    _resolve_model_problems(worker, inputs.request.fast, pose)
    family = recorded_family(worker.store)
    return {"portraits": [p.to_json() for p in result.portraits], "notice": result.notice,
            "held_back": result.held_back, "pose": pose.id if pose else None, "instant": inputs.instant is not None,
            "sharper": family is None or family.draws_scenes,  # Sharper x2 is SD1.5's img2img
            "upscale_x4": bool(worker.settings.upscaler.strip()),  # Upscale x4, on any family
            "pose_points": pose.model_dump(exclude={"file"}) if pose and pose.id == "photo" else None}


# --- Sharper x2 and style previews ------------------------------------------------------------------

def _upscale_gather(worker: Worker, job: Job):
    """Sharper x2 (the portrait redrawn larger), or with `x4` Upscale x4 (Real-ESRGAN's network)."""
    from engine.generation.style_files import job_catalogue
    from engine.generation.upscale import upscale_inputs
    from engine.generation.upscale_x4 import x4_inputs

    if job.params.get("x4"):
        return x4_inputs(worker.store, job.user_id, int(job.params["portrait_id"]), show_flagged(worker, job))
    return upscale_inputs(worker.store, worker.settings, job_catalogue(worker.settings, job.guild_id), job.user_id,
                          int(job.params["portrait_id"]), show_flagged=show_flagged(worker, job))


def _upscale_compute(models: LoadedModels, inputs, context: JobContext):
    from engine.generation.upscale import draw_upscaled
    from engine.generation.upscale_x4 import X4Inputs, draw_x4

    if isinstance(inputs, X4Inputs):
        context.update(0.1, "upscaling x4")
        return draw_x4(models.upscaler, models.analyzer, models.settings, inputs, models.safety)
    return draw_upscaled(models.generator, models.analyzer, models.settings, inputs, models.safety,
                         on_step=lambda step, total: context.update(0.9 * step / total, "sharpening"))


def _upscale_record(worker: Worker, job: Job, inputs, drawn) -> dict:
    from engine.generation.portrait import record_portraits, save_portraits
    from engine.generation.upscale_x4 import UPSCALER_PROBLEM, X4Inputs
    from engine.store.setup_problems import resolve_setup_problems

    if isinstance(inputs, X4Inputs):
        resolve_setup_problems(worker.store, UPSCALER_PROBLEM)
        saved = save_portraits(worker.store, job.user_id, inputs.style_id, drawn.drawn.portraits, None, job.id)
        return {"portraits": [p.to_json() for p in saved], "notice": drawn.drawn.notice,
                "held_back": drawn.drawn.held_back, "x4": True, "sharper": False, "size": list(drawn.size),
                "fused_again": drawn.fused, "likeness_as_upscaled": drawn.likeness_as_upscaled}
    result = record_portraits(worker.store, inputs.portrait, drawn, job_id=job.id)
    return {"portraits": [p.to_json() for p in result.portraits], "notice": result.notice,
            "held_back": result.held_back}


def _preview_gather(worker: Worker, job: Job):
    from engine.generation.style_files import job_catalogue

    style = job_catalogue(worker.settings, job.guild_id).get(job.params.get("style", ""))
    if style is None:
        raise FaceChainError(f"No style {job.params.get('style')!r} to draw a preview of (removed meanwhile).")
    return style


def _preview_compute(models: LoadedModels, style, context: JobContext) -> bytes:
    """One style's preview image (the base model, no face), as PNG bytes."""
    from engine.generation.preview_drawing import draw_preview_image

    context.update(0.0, f"drawing the {style.name} preview")
    return draw_preview_image(models.generator, models.settings.portrait_size_for(models.base.family.name), style)


def _preview_record(worker: Worker, job: Job, style, png: bytes) -> dict:
    from engine.generation.previews import save_preview

    return {"path": str(save_preview(worker.settings, style.id, png))}


RUNNERS: dict[str, Runner] = {
    "enroll": Runner(_enroll_gather, _enroll_compute, _enroll_record, uses_gpu=False),
    "train": Runner(_train_gather, _train_compute, _train_record, keep_checkpoint=_train_keep_checkpoint,
                    abandon=_train_abandon),
    "generate": Runner(_generate_gather, _portraits_compute, _portraits_record, abandon=_portraits_abandon,
                       pictures=drawn_pictures),
    "teaser": Runner(_teaser_gather, _portraits_compute, _portraits_record, pictures=drawn_pictures),
    **INSTANT_RUNNERS,
    **PHOTO_RUNNERS,
    **TOGETHER_RUNNERS,
    "upscale": Runner(_upscale_gather, _upscale_compute, _upscale_record, pictures=drawn_pictures),
    "preview": Runner(_preview_gather, _preview_compute, _preview_record),
}
