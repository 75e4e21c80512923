"""What every face backend offers: detect, embed, distance, same_person."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Face:
    """One detected face, in the pixel coordinates of the image it was found in."""

    box: tuple[int, int, int, int]  # x, y, width, height
    score: float  # detector confidence; higher is surer
    landmarks: np.ndarray  # (68, 2) for dlib, (5, 2) for insightface; float x, y
    left_eye: np.ndarray  # centre of the eye on the image's left, (x, y)
    right_eye: np.ndarray
    # Backend-specific handle the embedder needs (dlib's full_object_detection, insightface's Face).
    native: object = field(default=None, repr=False)
    age: float | None = None  # only backends with an attribute model fill these
    gender: str | None = None  # "male" / "female"

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.right_eye - self.left_eye))

    def to_json(self) -> dict:
        return {
            "box": [int(v) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
        }


class FaceAnalyzer(Protocol):
    name: str
    threshold: float  # distance at or below which two faces are the same person

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, largest first."""

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """Identity vector of a face found in `image` by `detect`."""

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Identity distance between two embeddings; smaller is more alike."""


def same_person(analyzer: FaceAnalyzer, a: np.ndarray, b: np.ndarray) -> bool:
    return analyzer.distance(a, b) <= analyzer.threshold


def largest_first(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: face.area, reverse=True)
