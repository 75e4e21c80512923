"""Selfie preprocessing: from uploaded bytes to aligned, checked, same-person crops."""

from engine.preprocess.pipeline import (
    AcceptedPhoto,
    PreprocessResult,
    RejectedPhoto,
    UploadedPhoto,
    preprocess_photos,
)
from engine.preprocess.reasons import ADVICE, Reason

__all__ = [
    "ADVICE", "AcceptedPhoto", "PreprocessResult", "Reason", "RejectedPhoto", "UploadedPhoto", "preprocess_photos",
]
