"""Selfie preprocessing for a set of uploads: decode, find, align, check, and agree on identity.

Every photo ends up either accepted (a 512x512 aligned crop plus its embedding) or rejected
with a reason code and a measured detail. Nothing here raises for a bad photo.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from engine.config import Settings
from engine.errors import NoUsableFace
from engine.faces import FaceAnalyzer
from engine.preprocess.align import FoundFace, align_face, find_face
from engine.preprocess.decode import decode_photo
from engine.preprocess.identity import identity_outliers, near_duplicates
from engine.preprocess.prepare import prepare_training_crop
from engine.preprocess.quality import Quality, check_quality, measure_quality
from engine.preprocess.reasons import ADVICE, PhotoRejected, Reason

log = logging.getLogger(__name__)
CROP_SIZE = 512


@dataclass
class UploadedPhoto:
    name: str  # what the user called it (file name or attachment name)
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class AcceptedPhoto:
    name: str
    sha256: str
    crop: np.ndarray  # 512x512 RGB, prepared for training (head on white, skin retouched, as set)
    embedding: np.ndarray
    quality: Quality
    rotation: int
    gender: str | None = None
    age: float | None = None

    def crop_jpeg(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.crop).save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()


@dataclass
class RejectedPhoto:
    name: str
    sha256: str
    reason: Reason
    detail: str

    @property
    def advice(self) -> str:
        return ADVICE[self.reason]

    def to_json(self) -> dict:
        return {"path": self.name, "reason": self.reason.value, "detail": self.detail, "advice": self.advice}


@dataclass
class PreprocessResult:
    accepted: list[AcceptedPhoto] = field(default_factory=list)
    rejected: list[RejectedPhoto] = field(default_factory=list)


def preprocess_photos(
    photos: list[UploadedPhoto],
    analyzer: FaceAnalyzer,
    settings: Settings,
    known_hashes: set[str] = frozenset(),
    known_embeddings: list[np.ndarray] = (),
) -> PreprocessResult:
    """Run every photo through the steps; `known_*` describe photos the user enrolled before."""
    rejected: dict[int, RejectedPhoto] = {}  # by position in the upload, to report in order
    candidates: dict[int, AcceptedPhoto] = {}
    seen = set(known_hashes)
    for position, photo in enumerate(photos):
        digest = photo.sha256
        if digest in seen:
            why = "already enrolled" if digest in known_hashes else "the same file appears twice in this upload"
            rejected[position] = RejectedPhoto(photo.name, digest, Reason.DUPLICATE, why)
            continue
        seen.add(digest)
        try:
            candidates[position] = _process_one(photo, digest, analyzer, settings)
        except PhotoRejected as rejection:
            rejected[position] = RejectedPhoto(photo.name, digest, rejection.reason, rejection.detail)
        except Exception:  # a decoder or model bug must cost one photo, never the whole set
            log.exception("unexpected error while preprocessing %s", photo.name)
            rejected[position] = RejectedPhoto(photo.name, digest, Reason.UNREADABLE, "this photo could not be processed")

    positions = list(candidates)
    embeddings = [candidates[p].embedding for p in positions]
    for index, original in near_duplicates(analyzer, embeddings, list(known_embeddings)).items():
        candidate = candidates.pop(positions[index])
        why = "a copy of a photo already enrolled" if original is None else f"a copy of {candidates[positions[original]].name}"
        rejected[positions[index]] = RejectedPhoto(candidate.name, candidate.sha256, Reason.DUPLICATE, why)

    positions = list(candidates)
    outliers, why = identity_outliers(analyzer, [candidates[p].embedding for p in positions], list(known_embeddings))
    for index in outliers:
        candidate = candidates.pop(positions[index])
        rejected[positions[index]] = RejectedPhoto(candidate.name, candidate.sha256, Reason.DIFFERENT_PERSON, why)
    return PreprocessResult(
        accepted=[candidates[p] for p in sorted(candidates)], rejected=[rejected[p] for p in sorted(rejected)]
    )


def find_usable_face(analyzer: FaceAnalyzer, settings: Settings, photo: UploadedPhoto) -> FoundFace:
    """The photo decoded and turned upright with its one clear face, or NoUsableFace naming why not."""
    try:
        return find_face(analyzer, decode_photo(photo.data, settings.max_photo_megapixels))
    except PhotoRejected as rejection:
        raise NoUsableFace(f"{photo.name}: {rejection.detail} ({rejection.reason.value})") from None


def _process_one(photo: UploadedPhoto, digest: str, analyzer: FaceAnalyzer, settings: Settings) -> AcceptedPhoto:
    max_bytes = settings.max_upload_mb * 1024 * 1024
    if len(photo.data) > max_bytes:
        raise PhotoRejected(
            Reason.TOO_LARGE, f"the file is {len(photo.data) / 1e6:.1f} MB; the limit is {settings.max_upload_mb:g} MB"
        )
    image = decode_photo(photo.data, settings.max_photo_megapixels)
    found = find_face(analyzer, image)
    aligned = align_face(found.image, found.face, CROP_SIZE)
    quality = measure_quality(aligned, face_px=found.face.box[2])
    check_quality(quality, settings)
    return AcceptedPhoto(
        name=photo.name, sha256=digest, crop=prepare_training_crop(aligned, settings),
        embedding=analyzer.embed(found.image, found.face), quality=quality,
        rotation=found.rotation, gender=found.face.gender, age=found.face.age,
    )
