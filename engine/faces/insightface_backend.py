"""Optional insightface backend (SCRFD detector, ArcFace 512-d embedding, gender/age).

insightface ships no models in its wheel; point FACECHAIN_INSIGHTFACE_MODEL_DIR at an unpacked
model pack such as `buffalo_l` (a folder of .onnx files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import ModelMissing
from engine.faces.base import Face, largest_first


class InsightFaceAnalyzer:
    name = "insightface"

    def __init__(self, model_dir: Path | None, threshold: float = 1.1, providers: list[str] | None = None) -> None:
        if model_dir is None or not Path(model_dir).is_dir() or not any(Path(model_dir).glob("*.onnx")):
            raise ModelMissing(
                f"insightface model pack not found at {model_dir}: set FACECHAIN_INSIGHTFACE_MODEL_DIR "
                "to a folder of .onnx files (e.g. buffalo_l), or use FACECHAIN_FACE_BACKEND=dlib."
            )
        try:
            from insightface.app import FaceAnalysis
        except ImportError:
            raise ModelMissing(
                "insightface is not installed: run `pip install 'facechain-discord[insightface]'`, "
                "or use FACECHAIN_FACE_BACKEND=dlib."
            ) from None
        model_dir = Path(model_dir).resolve()
        # FaceAnalysis looks for <root>/models/<name>/*.onnx.
        self._app = FaceAnalysis(
            name=model_dir.name, root=str(model_dir.parent.parent),
            providers=providers or ["CUDAExecutionProvider", "CPUExecutionProvider"],
        )
        self._app.prepare(ctx_id=0, det_size=(640, 640))
        self.threshold = threshold

    def detect(self, image: np.ndarray) -> list[Face]:
        found = self._app.get(np.ascontiguousarray(image[:, :, ::-1]))  # insightface wants BGR
        faces = []
        for item in found:
            x1, y1, x2, y2 = (float(v) for v in item.bbox)
            points = np.asarray(item.kps, dtype=np.float32)
            gender = getattr(item, "gender", None)
            faces.append(
                Face(
                    box=(round(x1), round(y1), round(x2 - x1), round(y2 - y1)),
                    score=float(item.det_score), landmarks=points,
                    left_eye=points[0], right_eye=points[1], native=item,
                    age=float(item.age) if getattr(item, "age", None) is not None else None,
                    gender=None if gender is None else ("male" if int(gender) == 1 else "female"),
                )
            )
        return largest_first(faces)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        return np.asarray(face.native.normed_embedding, dtype=np.float32)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))
