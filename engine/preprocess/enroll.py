"""Enroll selfies for a user: preprocess them against what is already stored, keep the good ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.config import Settings
from engine.errors import FaceChainError
from engine.faces import FaceAnalyzer
from engine.preprocess import PreprocessResult, UploadedPhoto, preprocess_photos
from engine.preprocess.pipeline import RejectedPhoto
from engine.preprocess.reasons import Reason
from engine.preprocess.trigger import subject_from_attributes, trigger_for_subject
from engine.store import Store
from engine.store.identities import (
    REFUSAL,
    SHARED_INDEX,
    IdentityIndex,
    IdentityMatch,
    other_member_match,
    save_identity,
)


@dataclass
class EnrollReport:
    user_id: str
    subject: str  # what the member (or the owner for them) chose; "person" until then
    trigger: str
    result: PreprocessResult
    enrolled_total: int  # accepted selfies stored for the user after this enrollment
    suggested_subject: str | None = None  # a face engine's reading of gender and age, never applied by itself
    face_match: IdentityMatch | None = None  # another member's face within the match threshold (for the audit log)

    def to_json(self) -> dict:
        return {
            "user": self.user_id,
            "subject": self.subject,
            "trigger": self.trigger,
            "suggested_subject": self.suggested_subject,
            "accepted": [photo.name for photo in self.result.accepted],
            "rejected": [photo.to_json() for photo in self.result.rejected],
            "enrolled_total": self.enrolled_total,
            "refused_as_another_member": bool(self.face_match and self.face_match.strict),
        }


@dataclass
class EnrollInputs:
    """What enrolling needs of the store, as plain values: the new photos and what the member has."""

    user_id: str
    photos: list[UploadedPhoto]
    subject: str | None
    known_hashes: set[str]
    known_embeddings: list[tuple[str, np.ndarray]]  # (face backend, embedding) of the enrolled selfies
    one_face_per_member: bool = True  # refuse photos of another member's face (FACECHAIN_ONE_FACE_PER_MEMBER)


def enrollment_inputs(store: Store, settings: Settings, user_id: str, photos: list[UploadedPhoto],
                      subject: str | None = None) -> EnrollInputs:
    """Check the request and read what the member already has (no face work: that is `check_photos`)."""
    if not photos:
        raise FaceChainError("No photos given: attach at least one selfie.")
    if len(photos) > settings.max_photos_per_enroll:
        raise FaceChainError(
            f"{len(photos)} photos given; at most {settings.max_photos_per_enroll} per enrollment "
            "(FACECHAIN_MAX_PHOTOS_PER_ENROLL)."
        )
    if subject is not None:
        trigger_for_subject(subject)  # reject a wrong subject before any work
    store.user_dir(user_id)  # validates the id
    return EnrollInputs(user_id, photos, subject, store.selfie_hashes(user_id),
                        [(s.embedding_backend, s.embedding) for s in store.accepted_selfies(user_id)],
                        settings.one_face_per_member)


@dataclass
class CheckedPhotos:
    result: PreprocessResult
    backend: str  # the face backend that made the embeddings
    threshold: float = 0.6  # that backend's match threshold


def check_photos(analyzer: FaceAnalyzer, settings: Settings, inputs: EnrollInputs) -> CheckedPhotos:
    """The face work of an enrollment (anywhere: no store): every photo accepted or rejected."""
    return CheckedPhotos(preprocess_photos(
        inputs.photos, analyzer, settings, known_hashes=inputs.known_hashes,
        known_embeddings=[embedding for backend, embedding in inputs.known_embeddings if backend == analyzer.name],
    ), analyzer.name, analyzer.threshold)


def refuse_another_members_face(store: Store, inputs: EnrollInputs, checked: CheckedPhotos,
                                index: IdentityIndex = SHARED_INDEX) -> IdentityMatch | None:
    """Compare the accepted photos with every other member's identity: a strict match turns them all into
    rejections (nobody is named); a weaker one is only returned, for the audit log."""
    result = checked.result
    match = other_member_match(store, index, inputs.user_id, checked.backend, checked.threshold,
                               [photo.embedding for photo in result.accepted])
    if match is not None and match.strict and inputs.one_face_per_member:
        result.rejected += [RejectedPhoto(photo.name, photo.sha256, Reason.ANOTHER_MEMBER, REFUSAL)
                            for photo in result.accepted]
        result.accepted = []
    return match


def record_enrollment(store: Store, inputs: EnrollInputs, checked: CheckedPhotos) -> EnrollReport:
    """Store the accepted photos and the member's words for who they are: the subject they chose now,
    else the one they had, else "person". A face engine's guess is kept as a suggestion only."""
    face_match = refuse_another_members_face(store, inputs, checked)
    user_id, subject, result = inputs.user_id, inputs.subject, checked.result
    existing = store.get_user(user_id)
    if subject is not None:
        chosen_subject, trigger = subject, trigger_for_subject(subject)
    elif existing is not None:
        chosen_subject, trigger = existing.subject, existing.trigger
    else:
        chosen_subject, trigger = "person", trigger_for_subject("person")
    store.ensure_user(user_id, chosen_subject, trigger)
    suggested = subject_from_attributes([p.gender for p in result.accepted], [p.age for p in result.accepted])
    if suggested is not None:
        store.suggest_subject(user_id, suggested)

    for photo in result.accepted:
        store.add_selfie(
            user_id, photo.sha256, photo.name, photo.crop_jpeg(), photo.quality.score,
            photo.embedding, checked.backend,
        )
    for photo in result.rejected:
        store.add_rejected_selfie(user_id, photo.sha256, photo.name, photo.reason.value, photo.detail)
    if result.accepted:
        save_identity(store, user_id, checked.backend)
    return EnrollReport(user_id, chosen_subject, trigger, result, enrolled_total=len(store.accepted_selfies(user_id)),
                        suggested_subject=suggested, face_match=face_match)


def enroll_user(
    store: Store,
    analyzer: FaceAnalyzer,
    settings: Settings,
    user_id: str,
    photos: list[UploadedPhoto],
    subject: str | None = None,
) -> EnrollReport:
    inputs = enrollment_inputs(store, settings, user_id, photos, subject)
    return record_enrollment(store, inputs, check_photos(analyzer, settings, inputs))
