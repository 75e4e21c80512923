"""Optional insightface backend: ArcFace identity (512-d) and gender/age from an insightface model pack.

The pack's ONNX models run directly on onnxruntime (no insightface package, whose GUI OpenCV
would clash with ours). Faces are found with dlib, as in the default backend; the ArcFace
model then sees the face aligned to insightface's standard 5-point template at 112x112.
Point FACECHAIN_INSIGHTFACE_MODEL_DIR at an unpacked pack such as `buffalo_l`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engine.errors import ModelMissing
from engine.faces.base import Face
from engine.faces.dlib_backend import DlibAnalyzer

# insightface's reference positions of the eyes, nose tip and mouth corners in a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
ARCFACE_SIZE, GENDERAGE_SIZE = 112, 96


def five_points(face: Face) -> np.ndarray:
    """Eyes, nose tip and mouth corners from 68 landmarks (or the 5 a detector gave)."""
    if len(face.landmarks) == 5:
        return face.landmarks.astype(np.float32)
    points = face.landmarks
    return np.array([face.left_eye, face.right_eye, points[30], points[48], points[54]], dtype=np.float32)


def arcface_matrix(face: Face) -> np.ndarray:
    matrix, _ = cv2.estimateAffinePartial2D(five_points(face), ARCFACE_TEMPLATE, method=cv2.LMEDS)
    return matrix


def arcface_crop(image: np.ndarray, face: Face) -> np.ndarray:
    return cv2.warpAffine(image, arcface_matrix(face), (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)


def box_crop(image: np.ndarray, face: Face, size: int) -> np.ndarray:
    """The face box, enlarged 1.5x, scaled to size x size (insightface's attribute input)."""
    x, y, w, h = face.box
    scale = size / (max(w, h) * 1.5)
    matrix = np.array([[scale, 0, size / 2 - scale * (x + w / 2)], [0, scale, size / 2 - scale * (y + h / 2)]],
                      dtype=np.float32)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def find_models(folder: Path) -> dict[str, Path]:
    """Recognise the pack's models by their input size, as insightface's model zoo does."""
    import onnxruntime

    found = {}
    for path in sorted(folder.glob("*.onnx")):
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception:  # a detector with custom ops, a broken file: not one we need
            continue
        shape = session.get_inputs()[0].shape
        outputs = session.get_outputs()[0].shape
        if shape[2:] == [ARCFACE_SIZE, ARCFACE_SIZE] and outputs[-1] == 512:
            found.setdefault("recognition", path)
        elif shape[2:] == [GENDERAGE_SIZE, GENDERAGE_SIZE] and outputs[-1] == 3:
            found.setdefault("genderage", path)
    return found


class InsightFaceAnalyzer:
    name = "insightface"

    def __init__(self, model_dir: Path | None, threshold: float = 1.1, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ModelMissing(
                "The insightface backend needs onnxruntime: pip install 'facechain-discord[insightface]', "
                "or set FACECHAIN_FACE_BACKEND=dlib."
            ) from None
        folder = Path(model_dir) if model_dir else None
        models = find_models(folder) if folder is not None and folder.is_dir() else {}
        if "recognition" not in models:
            raise ModelMissing(
                f"No insightface recognition model (112x112 -> 512) found in {model_dir}: set "
                "FACECHAIN_INSIGHTFACE_MODEL_DIR to an unpacked model pack such as buffalo_l, "
                "or set FACECHAIN_FACE_BACKEND=dlib."
            )
        available = onnxruntime.get_available_providers()
        chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]

        def session(path: Path):
            return onnxruntime.InferenceSession(str(path), providers=chosen)

        self._finder = DlibAnalyzer()
        self._recognition = session(models["recognition"])
        self._genderage = session(models["genderage"]) if "genderage" in models else None
        self.threshold = threshold

    def detect(self, image: np.ndarray) -> list[Face]:
        faces = self._finder.detect(image)
        if self._genderage is not None:
            for face in faces:
                blob = box_crop(image, face, GENDERAGE_SIZE).astype(np.float32).transpose(2, 0, 1)[None]
                scores = self._genderage.run(None, {self._genderage.get_inputs()[0].name: blob})[0][0]
                face.gender = "male" if scores[1] > scores[0] else "female"
                face.age = float(np.clip(scores[2] * 100, 0, 120))
        return faces

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        crop = arcface_crop(image, face).astype(np.float32)
        blob = ((crop - 127.5) / 127.5).transpose(2, 0, 1)[None]
        vector = self._recognition.run(None, {self._recognition.get_inputs()[0].name: blob})[0][0]
        return (vector / max(np.linalg.norm(vector), 1e-12)).astype(np.float32)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))
