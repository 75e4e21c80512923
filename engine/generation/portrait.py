"""A user's portraits in a style: generate candidates, fuse, rank, save, record."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from engine.config import Settings
from engine.errors import FaceChainError
from engine.faces import FaceAnalyzer
from engine.generation.generate import PortraitGenerator, PortraitRequest, build_prompt
from engine.generation.instant import ASKED_NOTICE, INSTANT_NOTICE, read_instant_face
from engine.generation.poses import Pose
from engine.generation.requests import CheckedRequest, check_pose, check_prompt_words, check_request
from engine.models.safety import SafetyChecker
from engine.postprocess import EnrolledFace, RankedPortrait, make_fuser, rank_candidates
from engine.provenance import mark, save_marked
from engine.store import Store
from engine.store.families import check_draws_scenes, recorded_family
from engine.store.store import utc_now
from engine.styles import StyleCatalogue
from engine.training.files import WEIGHTS_FILE

log = logging.getLogger(__name__)
UNRANKED_NOTICE = ("No candidate showed one clear face, even after a second batch, so these portraits are not "
                   "ranked by likeness.")
ALL_HELD_BACK = "Every candidate was held back by this server's safety filter: try another style or a re-roll."
# Face models are unpacked here for the time of one drawing (see face_model_folder).
SCRATCH = Path(tempfile.gettempdir()) / f"facechain-faces-{os.getpid()}"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FACE_KEY = re.compile(r"^(?P<user>.+)-v(?P<version>\d+)-(?P<digest>[0-9a-f]{16})$")
TEASER_NOTICE = "Preview: your face model is still training. These use the base model with your face put on."


@dataclass
class SavedPortrait:
    path: Path
    similarity: float | None
    seed: int
    style: str
    nsfw: bool = False
    prompt: str = ""  # the full prompt it was drawn with
    pose: str | None = None  # the preset pose it was drawn in, or "photo" for one read from a photo

    def to_json(self) -> dict:
        return {"path": str(self.path), "similarity": self.similarity, "seed": self.seed, "style": self.style,
                "nsfw": self.nsfw, "prompt": self.prompt, "pose": self.pose}


@dataclass
class PortraitResult:
    portraits: list[SavedPortrait]
    notice: str | None = None
    held_back: int = 0  # candidates the safety check flagged that the policy kept from being shown


@dataclass
class MemberFace:
    """A member's enrolled selfies as bytes (best quality first), for the fusion and ranking."""

    selfies: list[tuple[str, bytes, np.ndarray]]  # (face backend, aligned crop JPEG, embedding)


@dataclass
class FaceModelFiles:
    """A trained face model's files as bytes; `key` names these exact weights (user, version, content)."""

    key: str
    files: dict[str, bytes]


@dataclass
class PortraitInputs:
    """Everything drawing a member's portraits needs, read from the store: it can be drawn anywhere."""

    user_id: str
    style_id: str
    request: PortraitRequest  # its face_model is filled in where it is drawn, from `face_model`
    face_model: FaceModelFiles | None  # None: the base model alone (a preview while the model trains)
    face: MemberFace
    count: int
    show_flagged: bool
    teaser: bool = False
    pose_photo: bytes | None = None  # a photo whose body pose the portraits take (read where they are drawn)
    instant: bytes | None = None  # the member's InstantFace: an instant portrait, drawn without the face model
    lead: str | None = None  # what the portraits say first (a preview's, an instant portrait's label)


@dataclass
class DrawnPortraits:
    portraits: list[RankedPortrait]  # best first, `count` at most
    notice: str | None
    held_back: int
    pose: Pose | None = None  # the pose drawn in (read from the photo, when one was brought)


def member_face(store: Store, user_id: str) -> MemberFace:
    return MemberFace([(s.embedding_backend, s.path.read_bytes(), s.embedding) for s in store.accepted_selfies(user_id)])


def portrait_size(store: Store, settings: Settings) -> int:
    """The side of a portrait for the base model family the workers draw with."""
    family = recorded_family(store)
    return settings.portrait_size_for(family.name if family else "sd15")


def face_model_files(store: Store, user_id: str) -> FaceModelFiles:
    model = store.ready_face_model(user_id)
    # A missing folder sends no files: the generator then says the model must be trained again.
    files = {path.name: path.read_bytes() for path in sorted(model.path.glob("*")) if path.is_file()}
    digest = hashlib.sha256(files.get(WEIGHTS_FILE, b"")).hexdigest()[:16]
    return FaceModelFiles(f"{user_id}-v{model.version}-{digest}", files)


def face_key_owner(key: str) -> tuple[str, int] | None:
    """(member, version) of a face model's key (`<member>-v<version>-<weights digest>`); None for
    another adapter's key (a style or fast-mode LoRA)."""
    found = FACE_KEY.match(key)
    return (found["user"], int(found["version"])) if found else None


def enrolled_face_from(analyzer: FaceAnalyzer, face: MemberFace) -> EnrolledFace:
    """Every enrolled crop with a usable face (fusion picks the pose-closest; the best quality leads)
    and all enrolled embeddings, of the analyzer's own backend."""
    selfies = [(crop, embedding) for backend, crop, embedding in face.selfies if backend == analyzer.name]
    sources = []
    for crop, _ in selfies:
        image = np.asarray(Image.open(io.BytesIO(crop)).convert("RGB"))
        faces = analyzer.detect(image)
        if faces:
            sources.append((image, faces[0]))
    if not sources:
        raise FaceChainError("There is no enrolled selfie with a usable face: enroll again.")
    (image, face_found), *others = sources
    return EnrolledFace(image, face_found, [embedding for _, embedding in selfies], others)


def enrolled_face(store: Store, analyzer: FaceAnalyzer, user_id: str) -> EnrolledFace:
    return enrolled_face_from(analyzer, member_face(store, user_id))


@contextmanager
def face_model_folder(face_model: FaceModelFiles | None):
    """The face model's files in a folder named by its key, for the time of one drawing. The folder is
    gone after (no member's weights stay on a GPU machine's disk); the same key keeps the adapter
    loaded in the generator's cache, so the weights are read from it only on a cache miss."""
    if face_model is None:
        yield None
        return
    folder = SCRATCH / face_model.key
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        for name, data in face_model.files.items():
            (folder / name).write_bytes(data)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def portrait_inputs(
    store: Store,
    settings: Settings,
    catalogue: StyleCatalogue,
    user_id: str,
    style_id: str,
    count: int = 4,
    seed: int | None = None,
    variation_of: int | None = None,
    show_flagged: bool = False,
    fast: bool | None = None,
    words: str = "",
    blocked_words: list[str] | tuple[str, ...] = (),
    teaser: bool = False,
    pose: str | None = None,
    pose_photo: bytes | None = None,
    pose_points: dict | None = None,
    instant: bytes | None = None,
) -> PortraitInputs:
    """Check a request and read what drawing it needs (FaceChainError says what is wrong). With `instant` (the
    member's InstantFace), an instant portrait: their face as the adapter reads it, without their face model."""
    if pose or pose_photo is not None or pose_points:
        check_draws_scenes(store)  # the pose ControlNet is SD1.5's
    if teaser or instant is not None:  # no face model: the base model and the style, the enrolled face fused on
        check_request(store, settings, catalogue, user_id, style_id, count, need_model=False)
        user = store.get_user(user_id)
        if user is None:
            raise FaceChainError(f"User {user_id} has no enrolled selfies.")
        checked = CheckedRequest(catalogue.get(style_id), user.trigger, None)
    else:
        checked = check_request(store, settings, catalogue, user_id, style_id, count)
    words = check_prompt_words(words, blocked_words)
    posed = check_pose(settings, pose, from_photo=pose_photo is not None, points=pose_points)
    fast = settings.fast_by_default if fast is None else fast
    request = PortraitRequest(style=checked.style, trigger=checked.trigger, face_model=None,
                              count=settings.portrait_candidates, seed=seed, size=portrait_size(store, settings),
                              variation_of=variation_of, fast=fast, words=words,
                              steps=settings.fast_steps if fast else None,
                              guidance=settings.fast_guidance if fast else None, pose=posed)
    return PortraitInputs(user_id, checked.style.id, request,
                          face_model_files(store, user_id) if checked.face_model else None,
                          member_face(store, user_id), count, show_flagged, teaser, pose_photo, instant,
                          lead_notice(store, user_id, teaser, instant is not None))


def draw_portraits(generator: PortraitGenerator, analyzer: FaceAnalyzer, settings: Settings,
                   inputs: PortraitInputs, safety: SafetyChecker | None = None, on_step=None) -> DrawnPortraits:
    """Generate, fuse, rank and screen (anywhere: no store). With a safety checker, flagged candidates
    are marked, and dropped (the next best take their place) unless the inputs may show them."""
    enrolled = enrolled_face_from(analyzer, inputs.face)
    fuser = make_fuser(settings, analyzer)
    if inputs.pose_photo is not None:  # before the drawing: a photo with no body is the member's to fix
        from engine.generation.body_pose import read_pose_photo

        pose, depth = read_pose_photo(settings, inputs.pose_photo)
        inputs = replace(inputs, request=replace(inputs.request, pose=pose, depth=depth), pose_photo=None)
    with face_model_folder(inputs.face_model) as folder:
        request = replace(inputs.request, face_model=folder, instant=read_instant_face(inputs.instant))
        candidates = generator.generate(request, on_step=on_step)
        ranked = rank_candidates(analyzer, candidates, enrolled, fuser)
        notice = None
        if not ranked:  # FaceChain answers with nothing here; we try once more, then deliver unranked
            retry = replace(request, seed=candidates[-1].seed + 1)
            candidates = generator.generate(retry, on_step=on_step)
            ranked = rank_candidates(analyzer, candidates, enrolled, fuser)
            if not ranked:
                ranked = [RankedPortrait(c.image, c.seed, None) for c in candidates]
                notice = UNRANKED_NOTICE
    ranked, held_back = screen(safety, ranked, inputs.show_flagged)
    if held_back:
        log.info("safety check held back %d of %d candidates", held_back, held_back + len(ranked))
        notice = held_back_notice(notice, passed=len(ranked), wanted=inputs.count)
    return DrawnPortraits(ranked[:inputs.count], notice, held_back, inputs.request.pose)


def record_portraits(store: Store, inputs: PortraitInputs, drawn: DrawnPortraits, out_dir: Path | None = None,
                     job_id: int | None = None) -> PortraitResult:
    saved = save_portraits(store, inputs.user_id, inputs.style_id, drawn.portraits, out_dir, job_id)
    prompt = build_prompt(inputs.request.trigger, inputs.request.style, inputs.request.words,
                          drawn.pose or inputs.request.pose)
    notice = " ".join(filter(None, [inputs.lead, drawn.notice]))
    posed = drawn.pose or inputs.request.pose
    pose = posed.id if posed else None
    return PortraitResult([replace(portrait, prompt=prompt, pose=pose) for portrait in saved], notice or None,
                          drawn.held_back)


def lead_notice(store: Store, user_id: str, teaser: bool, instant: bool) -> str | None:
    """What pictures drawn without the member's face model say first."""
    if instant:
        return ASKED_NOTICE if store.ready_face_model(user_id) is not None else INSTANT_NOTICE
    return TEASER_NOTICE if teaser else None


def make_portraits(
    store: Store,
    generator: PortraitGenerator,
    analyzer: FaceAnalyzer,
    settings: Settings,
    catalogue: StyleCatalogue,
    user_id: str,
    style_id: str,
    out_dir: Path | None = None,
    on_step=None,
    job_id: int | None = None,
    safety: SafetyChecker | None = None,
    **request,
) -> PortraitResult:
    """Generate, rank and save portraits here, in one go; `request` holds `portrait_inputs`' keywords
    (count, seed, fast, words, ...)."""
    inputs = portrait_inputs(store, settings, catalogue, user_id, style_id, **request)
    drawn = draw_portraits(generator, analyzer, settings, inputs, safety, on_step)
    return record_portraits(store, inputs, drawn, out_dir, job_id)


def held_back_notice(notice: str | None, passed: int, wanted: int) -> str | None:
    """The notice once the safety check held some candidates back."""
    if passed == 0:
        return ALL_HELD_BACK  # nothing is shown, so nothing else is worth saying
    if passed < wanted:
        return " ".join(filter(None, [notice, f"Only {passed} of the candidates passed this server's safety filter."]))
    return notice  # flagged candidates were replaced by the next best: nothing to tell


def screen(safety: SafetyChecker | None, ranked: list[RankedPortrait],
           show_flagged: bool) -> tuple[list[RankedPortrait], int]:
    """Flag the candidates and keep the flagged ones only if they may be shown; returns (kept, held back count)."""
    if safety is None:
        return ranked, 0
    flagged = [replace(portrait, nsfw=flag) for portrait, flag in zip(ranked, safety.flags([p.image for p in ranked]))]
    kept = flagged if show_flagged else [portrait for portrait in flagged if not portrait.nsfw]
    return kept, len(flagged) - len(kept)


def mark_ahead(portraits: list[RankedPortrait], data_dir: Path) -> None:
    """Mark the pictures as made by AI (watermark, XMP, signed manifest: ~25 ms each) before their job is recorded,
    so the queue's write lock is not held meanwhile; `save_portraits` then writes the marked files."""
    for index, portrait in enumerate(portraits):
        if portrait.marked is None:
            portraits[index] = replace(portrait, marked=mark(portrait.image, "PNG", data_dir))


def picture_path(out: Path, default_name: str) -> Path:
    """Where one picture goes for an `--out`: the file itself when it ends in an image extension
    (.png, .jpg, .jpeg, .webp), else a file named `default_name` in that folder."""
    return out if out.suffix.lower() in IMAGE_SUFFIXES else out / default_name


def save_portraits(store: Store, user_id: str, style_id: str, ranked: list[RankedPortrait],
                   out_dir: Path | None, job_id: int | None = None, partner_id: str | None = None) -> list[SavedPortrait]:
    """Save and record portraits in `out_dir` (default: the member's private folder); one portrait may
    be given its file instead (an `out_dir` with an image extension). `partner_id`: the other member in
    a two-member picture."""
    one_file = out_dir is not None and out_dir.suffix.lower() in IMAGE_SUFFIXES and len(ranked) == 1
    folder = out_dir.parent if one_file else out_dir or store.private_dir(user_id, "portraits")
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for portrait in ranked:
        # Stored portraits carry their job id: two requests may reuse a seed.
        name = f"{style_id}-{portrait.seed}-job{job_id}.png" if job_id else f"{style_id}-{portrait.seed}.png"
        path = out_dir if one_file else folder / name
        if portrait.marked is not None and path.suffix.lower() == ".png":
            path.write_bytes(portrait.marked)
        else:
            save_marked(portrait.image, path, store.data_dir)  # says made by AI: XMP, C2PA, watermark
        with store.transaction():
            store.db["portraits"].insert({
                "user_id": user_id, "job_id": job_id, "style": style_id, "seed": portrait.seed,
                "similarity": portrait.similarity, "nsfw": int(portrait.nsfw),
                "path": store.relative(path) if path.is_relative_to(store.data_dir) else str(path),
                "created_at": utc_now(), "partner_id": partner_id,
            })
        saved.append(SavedPortrait(path, portrait.similarity, portrait.seed, style_id, portrait.nsfw))
    return saved
