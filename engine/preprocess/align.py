"""Find the one face in a selfie, then roll-align it on the eyes into a square crop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from engine.faces import Face, FaceAnalyzer
from engine.preprocess.reasons import PhotoRejected, Reason

# Tried in this order when no upright face is found: phones mostly err by a quarter turn.
ROTATIONS = (0, 90, 270, 180)
# Keep the largest of several faces only when it dominates the next one this much by area.
DOMINANT_FACE_RATIO = 4.0
# Reject when more than this share of the face box lies outside the photo.
MAX_FACE_OUTSIDE = 0.10
# The crop is this many face-box widths wide, shrunk towards MIN_CROP_FACES to stay in frame.
CROP_FACES = 2.0
MIN_CROP_FACES = 1.5
# Shift the crop up by this share of the face box so the hair is in frame.
HEADROOM = 0.12


@dataclass
class FoundFace:
    image: np.ndarray  # the photo, turned upright
    face: Face
    rotation: int  # degrees counter-clockwise applied to the upload
    face_count: int


@dataclass
class AlignedFace:
    crop: np.ndarray  # size x size RGB
    landmarks: np.ndarray  # face landmarks in crop coordinates
    face_box: tuple[int, int, int, int]  # face box in crop coordinates


def rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    turns = {0: None, 90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}
    code = turns[degrees]
    return image if code is None else cv2.rotate(image, code)


def find_face(analyzer: FaceAnalyzer, image: np.ndarray) -> FoundFace:
    """The single face to enroll, trying each quarter turn until a face shows."""
    for degrees in ROTATIONS:
        turned = rotate(image, degrees)
        faces = analyzer.detect(turned)
        if faces:
            return FoundFace(turned, choose_face(faces), degrees, len(faces))
    height, width = image.shape[:2]
    raise PhotoRejected(Reason.NO_FACE, f"no face found in the {width}x{height} photo, in any orientation")


def choose_face(faces: list[Face]) -> Face:
    """The largest face, when it clearly is the subject; several similar faces are ambiguous."""
    largest, *others = faces  # detect() returns largest first
    if others and largest.area < DOMINANT_FACE_RATIO * others[0].area:
        raise PhotoRejected(
            Reason.MULTIPLE_FACES,
            f"{len(faces)} faces of similar size found (largest only {largest.area / others[0].area:.1f}x the next)",
        )
    return largest


def face_outside_share(face: Face, image_shape: tuple[int, ...]) -> float:
    height, width = image_shape[:2]
    x, y, w, h = face.box
    inside_w = max(0, min(x + w, width) - max(x, 0))
    inside_h = max(0, min(y + h, height) - max(y, 0))
    return 1.0 - (inside_w * inside_h) / max(1, w * h)


def align_face(image: np.ndarray, face: Face, size: int = 512) -> AlignedFace:
    """Rotate so the eyes are level and crop a square around the face, `size` pixels wide."""
    outside = face_outside_share(face, image.shape)
    if outside > MAX_FACE_OUTSIDE:
        raise PhotoRejected(Reason.FACE_CUT_OFF, f"{outside:.0%} of the face is outside the photo")
    x, y, w, h = face.box
    face_size = float(max(w, h))
    centre_x, centre_y = x + w / 2.0, y + h / 2.0
    height, width = image.shape[:2]
    room = 2.0 * min(centre_x, centre_y, width - centre_x, height - centre_y)
    side = max(MIN_CROP_FACES * face_size, min(CROP_FACES * face_size, room))

    eye_dx, eye_dy = face.right_eye - face.left_eye
    angle = math.degrees(math.atan2(eye_dy, eye_dx))
    scale = size / side
    matrix = cv2.getRotationMatrix2D((centre_x, centre_y), angle, scale)
    matrix[0, 2] += size / 2.0 - centre_x
    matrix[1, 2] += size / 2.0 - centre_y + HEADROOM * face_size * scale
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)
    landmarks = cv2.transform(face.landmarks[None].astype(np.float32), matrix)[0]
    box_size = face_size * scale
    box_centre = cv2.transform(np.array([[[centre_x, centre_y]]], np.float32), matrix)[0, 0]
    face_box = (
        round(box_centre[0] - box_size / 2), round(box_centre[1] - box_size / 2), round(box_size), round(box_size)
    )
    return AlignedFace(crop=crop, landmarks=landmarks, face_box=face_box)
