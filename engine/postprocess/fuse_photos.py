"""`facechain fuse`: fuse the selfie whose pose best matches a template photo onto it, and measure the change."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.config import Settings
from engine.faces import FaceAnalyzer
from engine.postprocess.fusers import EnrolledFace, make_fuser
from engine.preprocess import UploadedPhoto
from engine.preprocess.align import align_face
from engine.preprocess.pipeline import find_usable_face
from engine.preprocess.quality import measure_quality


@dataclass
class FuseResult:
    image: np.ndarray
    distance_before: float  # template face to the selfies, mean identity distance
    distance_after: float  # fused face to the selfies


def fuse_photos(analyzer: FaceAnalyzer, settings: Settings, selfies: list[UploadedPhoto],
                template: UploadedPhoto) -> FuseResult:
    found = [find_usable_face(analyzer, settings, selfie) for selfie in selfies]
    embeddings = [analyzer.embed(f.image, f.face) for f in found]
    best = max(found, key=lambda f: measure_quality(align_face(f.image, f.face), f.face.box[2]).score)
    target = find_usable_face(analyzer, settings, template)

    def distance(image: np.ndarray, face) -> float:
        vector = analyzer.embed(image, face)
        return float(np.mean([analyzer.distance(vector, e) for e in embeddings]))

    fuser = make_fuser(settings, analyzer)
    others = [(f.image, f.face) for f in found if f is not best]
    fused = fuser(EnrolledFace(best.image, best.face, embeddings, others), target.image, target.face)
    fused_faces = analyzer.detect(fused)
    after = distance(fused, fused_faces[0]) if fused_faces else float("nan")
    return FuseResult(fused, round(distance(target.image, target.face), 4), round(after, 4))
