"""Selfie quality: face size, sharpness, exposure and how frontal the face is.

Measured on the aligned crop's face region, resized to a fixed size so sharpness does not
depend on the photo's resolution. `score` (0..1) ranks a user's selfies; the floors come from
settings and a photo below one is rejected with the measured value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from engine.config import Settings
from engine.preprocess.align import AlignedFace
from engine.preprocess.reasons import PhotoRejected, Reason

MEASURE_SIZE = 256


@dataclass(frozen=True)
class Quality:
    face_px: int  # width of the face in the uploaded photo, in pixels
    sharpness: float  # variance of the Laplacian over the face
    brightness: float  # mean luminance over the face, 0..255
    yaw: float  # 0 = facing the camera, 1 = full profile
    score: float  # 0..1, higher is better

    def to_json(self) -> dict:
        return {key: round(value, 3) if isinstance(value, float) else value for key, value in asdict(self).items()}


def yaw_ratio(landmarks: np.ndarray) -> float:
    """How far the nose sits from the middle of the face: 0 frontal, towards 1 in profile."""
    if len(landmarks) == 68:
        nose, left, right = landmarks[30], landmarks[0], landmarks[16]
        to_left = float(np.linalg.norm(nose - left))
        to_right = float(np.linalg.norm(nose - right))
        return abs(to_left - to_right) / max(1e-6, to_left + to_right)
    left_eye, right_eye, nose = landmarks[0], landmarks[1], landmarks[2]
    span = float(right_eye[0] - left_eye[0])
    return min(1.0, abs(2.0 * ((nose[0] - left_eye[0]) / max(1e-6, span) - 0.5)))


def face_region(aligned: AlignedFace) -> np.ndarray:
    x, y, w, h = aligned.face_box
    size = aligned.crop.shape[0]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(size, x + w), min(size, y + h)
    region = aligned.crop[y0:y1, x0:x1]
    return cv2.resize(region, (MEASURE_SIZE, MEASURE_SIZE), interpolation=cv2.INTER_AREA)


def measure_quality(aligned: AlignedFace, face_px: int) -> Quality:
    gray = cv2.cvtColor(face_region(aligned), cv2.COLOR_RGB2GRAY)
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    brightness = float(gray.mean())
    yaw = yaw_ratio(aligned.landmarks)
    parts = (
        min(1.0, face_px / 256.0),
        min(1.0, sharpness / 300.0),
        1.0 - abs(brightness - 128.0) / 128.0,
        1.0 - min(1.0, yaw),
    )
    return Quality(face_px, sharpness, brightness, yaw, score=float(np.mean(parts)))


def check_quality(quality: Quality, settings: Settings) -> None:
    """Raise PhotoRejected naming the first floor the photo falls below.

    Exposure comes before sharpness: a dark face has little contrast and would read as blurry.
    """
    if quality.face_px < settings.min_face_px:
        raise PhotoRejected(
            Reason.FACE_TOO_SMALL, f"the face is {quality.face_px} px wide; at least {settings.min_face_px} px needed"
        )
    if not settings.min_brightness <= quality.brightness <= settings.max_brightness:
        raise PhotoRejected(
            Reason.BAD_EXPOSURE,
            f"face brightness {quality.brightness:.0f} is outside {settings.min_brightness:g}-{settings.max_brightness:g}",
        )
    if quality.sharpness < settings.min_sharpness:
        raise PhotoRejected(
            Reason.BLURRY, f"sharpness {quality.sharpness:.0f}, below the minimum of {settings.min_sharpness:g}"
        )
    if quality.yaw > settings.max_yaw:
        raise PhotoRejected(
            Reason.NOT_FRONTAL, f"the face is turned (yaw {quality.yaw:.2f}, at most {settings.max_yaw:g} allowed)"
        )
