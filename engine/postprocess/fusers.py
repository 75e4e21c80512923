"""Which face fusion runs: classical by default, the learned swapper when its model is configured."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.config import Settings
from engine.errors import SettingsError
from engine.faces import Face, FaceAnalyzer
from engine.postprocess.fusion import fuse_face


@dataclass
class EnrolledFace:
    """The user's best selfie (by quality) as fusion source, plus every enrolled embedding."""

    image: np.ndarray
    face: Face
    embeddings: list[np.ndarray]

    @property
    def identity(self) -> np.ndarray:
        """The mean enrolled embedding, normalised: steadier than any single selfie."""
        mean = np.mean(self.embeddings, axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)


# (the user's face, a portrait, the face found in it) -> the portrait showing the user's face
Fuser = Callable[[EnrolledFace, np.ndarray, Face], np.ndarray]


def classical_fuser(enrolled: EnrolledFace, image: np.ndarray, face: Face) -> np.ndarray:
    return fuse_face(enrolled.image, enrolled.face, image, face)


@lru_cache(maxsize=2)
def _swapper(path: Path):
    from engine.postprocess.swapper import LearnedSwapper

    return LearnedSwapper(path)


def make_fuser(settings: Settings, analyzer: FaceAnalyzer) -> Fuser:
    if settings.face_swapper_model is None:
        return classical_fuser
    if analyzer.name != "insightface":
        raise SettingsError(
            "FACECHAIN_FACE_SWAPPER_MODEL needs FACECHAIN_FACE_BACKEND=insightface (the swapper takes ArcFace "
            "identities); unset it to use classical fusion."
        )
    swapper = _swapper(Path(settings.face_swapper_model))
    return lambda enrolled, image, face: swapper.swap(image, face, enrolled.identity)
