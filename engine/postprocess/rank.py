"""Keep candidates with one clear face, fuse the user's best selfie onto them, rank by likeness."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.faces import Face, FaceAnalyzer
from engine.generation.generate import Candidate
from engine.postprocess.fusers import EnrolledFace, Fuser, classical_fuser

log = logging.getLogger(__name__)
# A candidate's face must be at least this share of the image width (FaceChain: "reasonable size").
MIN_FACE_SHARE = 0.08


@dataclass
class RankedPortrait:
    image: Image.Image
    seed: int
    similarity: float | None  # 1 - mean identity distance to the enrolled faces; None when unranked
    nsfw: bool = False  # flagged by the safety check
    # On a redrawn photo: the faces (in the order they were redrawn) that show the enrolled face pasted on
    # instead, as no redrawing of them read as the member better than that paste.
    pasted: tuple[int, ...] = ()
    # The picture's PNG file, marked as made by AI, when it was marked before recording (outside the write lock).
    marked: bytes | None = None


def single_clear_face(analyzer: FaceAnalyzer, image: np.ndarray) -> Face | None:
    faces = analyzer.detect(image)
    if len(faces) != 1 or faces[0].box[2] < MIN_FACE_SHARE * image.shape[1]:
        return None
    return faces[0]


def central_face(analyzer: FaceAnalyzer, image: np.ndarray) -> Face | None:
    """The clear face nearest the image's centre: a face cropped around, whoever else shows at the edges."""
    height, width = image.shape[:2]
    faces = [face for face in analyzer.detect(image) if face.box[2] >= MIN_FACE_SHARE * width]
    if not faces:
        return None
    return min(faces, key=lambda f: abs(f.box[0] + f.box[2] / 2 - width / 2) + abs(f.box[1] + f.box[3] / 2 - height / 2))


def similarity(analyzer: FaceAnalyzer, embedding: np.ndarray, enrolled: list[np.ndarray]) -> float:
    distance = float(np.mean([analyzer.distance(embedding, reference) for reference in enrolled]))
    return round(max(0.0, 1.0 - distance), 4)


def rank_candidates(
    analyzer: FaceAnalyzer, candidates: list[Candidate], enrolled: EnrolledFace,
    fuser: Fuser | None = classical_fuser, pick: Callable[[np.ndarray], Face | None] | None = None,
) -> list[RankedPortrait]:
    """The candidates that show one clear face (or where `pick` finds the face to rank), fused (unless
    `fuser` is None) and sorted by similarity."""
    pick = pick or (lambda image: single_clear_face(analyzer, image))
    ranked = []
    for candidate in candidates:
        image = np.asarray(candidate.image.convert("RGB"))
        face = pick(image)
        if face is None:
            continue
        if fuser is not None:
            try:
                image = fuser(enrolled, image, face)
                face = pick(image) or face
            except ValueError:
                log.warning("fusion failed for seed %s; keeping the candidate as drawn", candidate.seed)
        score = similarity(analyzer, analyzer.embed(image, face), enrolled.embeddings)
        ranked.append(RankedPortrait(Image.fromarray(image), candidate.seed, score))
    ranked.sort(key=lambda portrait: portrait.similarity, reverse=True)
    return ranked
