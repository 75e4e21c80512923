"""The `together` job: two members in one picture, on a photo one of them brought or in a scene in a
style (`engine/generation/together.py`). It belongs to the member who asked; the other member (`with`)
allowed it (`engine/store/together.py`), which is checked again here, before anything of theirs is read."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import FaceChainError
from engine.jobs.job_types import JobCancelled, JobContext, Runner, drawn_pictures, show_flagged, uploaded_file
from engine.jobs.queue import Job
from engine.models.loaded import LoadedModels
from engine.store.together import DEFAULT_POSE, DEFAULT_STYLE

if TYPE_CHECKING:
    from engine.jobs.worker import Worker

NOT_ALLOWED_NOW = "This picture can't be drawn: not allowed."


@dataclass
class Member:
    face: Any  # MemberFace: their enrolled selfies
    face_model: Any  # FaceModelFiles, or None (on a photo, their enrolled face is pasted on instead)
    trigger: str


@dataclass
class TogetherInputs:
    members: list[Member]  # the one who asked, then the one asked
    photo: Any  # UploadedPhoto, or None: a scene in `style` and `pose`
    faces: tuple[int, int] | None  # on a photo: which face is whose (from 1, left to right)
    style: Any  # Style
    pose: Any  # Pose (two people)
    seed: int
    show_flagged: bool


@dataclass
class TogetherOutputs:
    drawn: Any = None  # DrawnPortraits
    faces: tuple[int, int] | None = None
    faces_found: int = 0
    choose: int = 0  # a photo of more than two faces and no choice: how many, and their numbered preview
    preview: bytes = b""


def check_faces(faces: tuple[int, int] | None, found: int) -> tuple[int, int] | None:
    """Which face is whose on a photo showing `found` faces: the choice, checked; 1 and 2 when there are
    just two; None when the member must choose. FaceChainError in plain words."""
    if found < 2:
        raise FaceChainError("That photo shows one face: bring one with two people in it.")
    if faces is None:
        return (1, 2) if found == 2 else None
    if faces[0] == faces[1]:
        raise FaceChainError("Choose two different faces: one for each of you.")
    if not all(1 <= number <= found for number in faces):
        raise FaceChainError(f"That photo shows {found} faces: choose two of 1 to {found} (left to right).")
    return faces


def _member(store, user_id: str, need_model: bool, whose: str, use_model: bool = True) -> Member:
    from engine.generation.portrait import face_model_files, member_face

    user, model = store.get_user(user_id), store.ready_face_model(user_id) if use_model else None
    if user is None or not store.accepted_selfies(user_id):
        raise FaceChainError(f"{whose} enrolled selfies are gone." if whose == "Your" else NOT_ALLOWED_NOW)
    if model is None and need_model:
        raise FaceChainError(f"{whose} face model is not ready: a picture together in a style needs both.")
    return Member(member_face(store, user_id), face_model_files(store, user_id) if model else None,
                  model.meta.get("trigger", user.trigger) if model else user.trigger)


def together_inputs(store, settings, user_id: str, partner_id: str, request_id: int | None = None,
                    photo: Any = None, faces: tuple[int, int] | None = None, style_id: str | None = None,
                    pose_id: str | None = None, seed: int | None = None, show_flagged: bool = False,
                    guild_id: str | None = None) -> TogetherInputs:
    """Check that `partner_id` allows it now and read what drawing `user_id` with them needs: on `photo`
    (an UploadedPhoto), or else in a scene of `style_id` and `pose_id`. FaceChainError in plain words."""
    from engine.generation.generate import MAX_SEED
    from engine.generation.requests import check_pose
    from engine.generation.style_files import job_catalogue
    from engine.store.families import check_draws_scenes, recorded_family
    from engine.store.together import may_draw

    if not may_draw(store, user_id, partner_id, request_id):
        raise FaceChainError(NOT_ALLOWED_NOW)
    family = recorded_family(store)
    redraws = family is None or family.draws_scenes  # else faces are pasted from the selfies (SD1.5's inpainting)
    if photo is None:
        check_draws_scenes(store)
    members = [_member(store, user_id, photo is None, "Your", redraws),
               _member(store, partner_id, photo is None, "Their", redraws)]
    style = pose = None
    if photo is None:
        style = job_catalogue(settings, guild_id).get(style_id or DEFAULT_STYLE)
        if style is None:
            raise FaceChainError(f"There is no style {style_id!r}: choose one from the list.")
        if not settings.pose_controlnet.strip():
            raise FaceChainError("This bot draws two members together only on a photo: bring one of the two of you.")
        pose = check_pose(settings, pose_id or DEFAULT_POSE, people=2)
    return TogetherInputs(members, photo, faces, style, pose,
                          seed if seed is not None else random.randint(0, MAX_SEED), show_flagged)


def _upload(worker: Worker, job: Job) -> Path:
    return uploaded_file(worker, job.params.get("upload", ""),
                         "That photo is no longer here: send it again with `/facechain together`.")


def _gather(worker: Worker, job: Job) -> TogetherInputs:
    from engine.preprocess import UploadedPhoto

    params = job.params
    photo = None
    if params.get("upload"):
        upload = _upload(worker, job)
        photo = UploadedPhoto(params.get("name") or upload.name, upload.read_bytes())
    seed = params.get("seed")
    return together_inputs(worker.store, worker.settings, job.user_id, params.get("with", ""), params.get("request_id"),
                           photo, tuple(params["faces"]) if params.get("faces") else None, params.get("style"),
                           params.get("pose"), int(seed) if seed is not None else None, show_flagged(worker, job),
                           job.guild_id)


def draw_together(models: LoadedModels, inputs: TogetherInputs, context: JobContext) -> TogetherOutputs:
    from contextlib import ExitStack

    from engine.generation.portrait import DrawnPortraits, enrolled_face_from, face_model_folder, screen
    from engine.generation.swap import numbered_preview, photo_faces
    from engine.generation.together import TOGETHER_CANDIDATES, Person, draw_scene, redraw_people

    def progress(share: float, text: str) -> None:
        if context.cancelled():
            raise JobCancelled(f"cancelled while {text}")
        context.update(0.9 * share, text)

    faces = found = None
    if inputs.photo is not None:  # before any drawing: the member may have to choose the faces
        image, found = photo_faces(models.analyzer, models.settings, inputs.photo)
        faces = check_faces(inputs.faces, len(found))
        if faces is None:
            return TogetherOutputs(choose=len(found), preview=numbered_preview(image, found))
    with ExitStack() as stack:
        people = [Person(enrolled_face_from(models.analyzer, member.face),
                         stack.enter_context(face_model_folder(member.face_model)), member.trigger)
                  for member in inputs.members]
        if inputs.photo is None:
            ranked = draw_scene(models.generator, models.analyzer, models.settings, people, inputs.style, inputs.pose,
                                inputs.seed, TOGETHER_CANDIDATES, progress)
        else:
            seeds = [inputs.seed + index for index in range(TOGETHER_CANDIDATES)]
            ranked = redraw_people(models.generator, models.analyzer, models.settings, people, image,
                                   [found[number - 1] for number in faces], seeds, progress=progress)
    context.update(0.95, "checking the pictures")
    kept, held_back = screen(models.safety, ranked, inputs.show_flagged)
    notice = "This server's safety filter held the result back." if held_back and not kept else (
        pasted_notice(kept[0].pasted) if kept else None)
    return TogetherOutputs(DrawnPortraits(kept, notice, held_back), faces, len(found or []))


def pasted_notice(pasted: tuple[int, ...]) -> str | None:
    """Which faces of the best picture are enrolled selfies put on (their redrawing read less like them)."""
    if not pasted:
        return None
    whose = "both faces are" if len(pasted) == 2 else ("the face of the member who asked is" if pasted == (0,)
                                                      else "the face of the member asked is")
    return (f"On the first picture {whose} an enrolled selfie put on the photo: the face model's redrawing "
            "didn't look enough like them.")


def _record(worker: Worker, job: Job, inputs: TogetherInputs, outputs: TogetherOutputs) -> dict:
    """Inside the transaction that records the result: consent and cancellation are read once more, so a
    partner who switched to never, refused, or was forgotten while it was drawn is never recorded or shown (a
    forget that comes after this transaction deletes what it recorded, before the bot can show it)."""
    from engine.generation.portrait import save_portraits
    from engine.store.together import may_draw

    if not may_draw(worker.store, job.user_id, job.params.get("with", ""), job.params.get("request_id")):
        _abandon(worker, job, inputs, None)
        raise FaceChainError(NOT_ALLOWED_NOW)
    if worker.queue.cancel_was_requested(job.id):
        _abandon(worker, job, inputs, None)
        raise JobCancelled("cancelled before its pictures were kept")
    if outputs.choose:  # the photo stays for the member's choice
        preview = worker.store.private_dir(job.user_id, "portraits") / f"together-choose-job{job.id}.jpg"
        worker.store.write_private_file(preview, outputs.preview)
        return {"choose": outputs.choose, "preview": worker.store.relative(preview), "with": job.params["with"]}
    style = inputs.style.id if inputs.style is not None else "together"
    saved = save_portraits(worker.store, job.user_id, style, outputs.drawn.portraits, None, job.id,
                           partner_id=job.params["with"])
    if job.params.get("upload"):
        _upload(worker, job).unlink(missing_ok=True)
    return {"portraits": [p.to_json() for p in saved], "with": job.params["with"], "faces": outputs.faces,
            "faces_found": outputs.faces_found, "held_back": outputs.drawn.held_back, "notice": outputs.drawn.notice,
            "pose": inputs.pose.id if inputs.pose is not None else None}


def _abandon(worker: Worker, job: Job, inputs: Any, error: Exception | None) -> None:
    if job.params.get("upload"):
        Path(job.params["upload"]).unlink(missing_ok=True)  # the photo can't be used: it is not kept


TOGETHER_RUNNERS = {"together": Runner(_gather, draw_together, _record, abandon=_abandon, pictures=drawn_pictures)}
