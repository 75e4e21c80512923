"""dlib face analysis: HOG detector, 68-point landmarks, 128-d ResNet identity embedding.

The models come from the `face_recognition_models` package. Its `__init__` imports
`pkg_resources`, which new setuptools lacks, so the files are located without importing it.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import cv2
import dlib
import numpy as np

from engine.errors import ModelMissing
from engine.faces.base import Face, largest_first

# Detection runs on a copy whose long side is at most this; boxes are mapped back.
DETECT_LONG_SIDE = 1000
# Small photos are upsampled once so faces of ~40 px are still found.
UPSAMPLE_BELOW_LONG_SIDE = 500
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)
MODEL_FILES = {
    "landmarks": "shape_predictor_68_face_landmarks.dat",
    "embedding": "dlib_face_recognition_resnet_model_v1.dat",
}


def models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing(
            "dlib face models are not installed: run `pip install face_recognition_models`."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_paths() -> dict[str, Path]:
    folder = models_dir()
    paths = {role: folder / name for role, name in MODEL_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ModelMissing(
            f"dlib face model file(s) missing: {', '.join(missing)}; reinstall with "
            "`pip install --force-reinstall face_recognition_models`."
        )
    return paths


class DlibAnalyzer:
    name = "dlib"

    def __init__(self, threshold: float = 0.6) -> None:
        paths = model_paths()
        self.threshold = threshold
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(paths["landmarks"]))
        self._embedder = dlib.face_recognition_model_v1(str(paths["embedding"]))
        # dlib's models are not thread-safe: two threads detecting at once crash the process
        # (a segfault, not an exception). One analyzer serves a process, so calls take turns.
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[Face]:
        with self._lock:
            return self._detect(image)

    def _detect(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        long_side = max(height, width)
        scale = min(1.0, DETECT_LONG_SIDE / long_side)
        small = image if scale == 1.0 else cv2.resize(
            image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
        )
        upsample = 1 if long_side < UPSAMPLE_BELOW_LONG_SIDE else 0
        rects, scores, _ = self._detector.run(small, upsample, 0.0)
        faces = []
        for rect, score in zip(rects, scores):
            full = dlib.rectangle(
                round(rect.left() / scale), round(rect.top() / scale),
                round(rect.right() / scale), round(rect.bottom() / scale),
            )
            shape = self._landmarks(image, full)
            points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
            faces.append(
                Face(
                    box=(full.left(), full.top(), full.width(), full.height()),
                    score=float(score),
                    landmarks=points,
                    left_eye=points[LEFT_EYE].mean(axis=0),
                    right_eye=points[RIGHT_EYE].mean(axis=0),
                    native=shape,
                )
            )
        return largest_first(faces)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        with self._lock:
            descriptor = self._embedder.compute_face_descriptor(np.ascontiguousarray(image), face.native)
        return np.asarray(descriptor, dtype=np.float32)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))
