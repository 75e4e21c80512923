"""Which face fusion runs: classical by default, the learned swapper when its model is configured."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from engine.config import Settings
from engine.errors import SettingsError
from engine.faces import Face, FaceAnalyzer
from engine.faces.pose import head_pose
from engine.postprocess.fusion import fuse_face, seam_break

log = logging.getLogger(__name__)
# Mean Lab difference along one cheek's blend edge above which the fused face breaks the portrait's
# light or colour (measured: clean fusions 10-24, a turned selfie's hair on the cheek 26-29).
SEAM_LIMIT = 25.0


@dataclass
class EnrolledFace:
    """The user's best selfie (by quality), the other enrolled selfies (fusion picks the one whose
    pose is closest to each portrait's), and every enrolled embedding."""

    image: np.ndarray
    face: Face
    embeddings: list[np.ndarray]
    others: list[tuple[np.ndarray, Face]] = field(default_factory=list)

    def source_for(self, target: Face) -> tuple[np.ndarray, Face]:
        """The enrolled selfie whose head pose is closest to `target`'s (the best one on a tie)."""
        pose = head_pose(target)
        candidates = [(self.image, self.face), *self.others]
        return min(candidates, key=lambda source: head_pose(source[1]).distance(pose))

    @property
    def identity(self) -> np.ndarray:
        """The mean enrolled embedding, normalised: steadier than any single selfie."""
        mean = np.mean(self.embeddings, axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)


# (the user's face, a portrait, the face found in it) -> the portrait showing the user's face
Fuser = Callable[[EnrolledFace, np.ndarray, Face], np.ndarray]


def classical_fuser(enrolled: EnrolledFace, image: np.ndarray, face: Face, strength: float = 1.0) -> np.ndarray:
    """Fuse the pose-closest selfie at `strength`; where that breaks the portrait's light or colour
    along the blend edge, at half that strength; where that breaks it too, the portrait as drawn."""
    source_image, source_face = enrolled.source_for(face)
    seams = []
    for attempt in (strength, strength / 2):
        fused = fuse_face(source_image, source_face, image, face, attempt)
        seams.append(seam_break(fused, image, face))
        if seams[-1] <= SEAM_LIMIT:
            if attempt != strength:
                log.info("fusion at strength %.2f instead of %.2f: at full it broke the portrait's light "
                         "(seam %.1f > %.0f)", attempt, strength, seams[0], SEAM_LIMIT)
            return fused
    log.info("fusion breaks the portrait's light even at strength %.2f (seams %.1f, %.1f > %.0f): keeping the "
             "portrait as drawn", strength / 2, *seams, SEAM_LIMIT)
    return image


@lru_cache(maxsize=2)
def _swapper(path: Path):
    from engine.postprocess.swapper import LearnedSwapper

    return LearnedSwapper(path)


def make_fuser(settings: Settings, analyzer: FaceAnalyzer) -> Fuser:
    if settings.face_swapper_model is None:
        return partial(classical_fuser, strength=settings.fusion_strength)
    if analyzer.name != "insightface":
        raise SettingsError(
            "FACECHAIN_FACE_SWAPPER_MODEL needs FACECHAIN_FACE_BACKEND=insightface (the swapper takes ArcFace "
            "identities); unset it to use classical fusion."
        )
    swapper = _swapper(Path(settings.face_swapper_model))
    return lambda enrolled, image, face: swapper.swap(image, face, enrolled.identity)
