"""Optional learned face swapper with insightface's `inswapper_128` signature, run on onnxruntime.

Inputs: the portrait's face aligned to 128x128 (RGB, 0..1) and the user's ArcFace identity
mapped through the model's `emap` matrix; output: the face redrawn with that identity. It is
pasted back through the same feathered mask as classical fusion. The identity must be an
ArcFace embedding, so the swapper needs the insightface face backend.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engine.errors import ModelMissing
from engine.faces import Face
from engine.faces.insightface_backend import ARCFACE_TEMPLATE, five_points
from engine.postprocess.fusion import blend, face_mask

SIZE = 128
# insightface aligns 128-px crops to the 112-px template shifted right by 8 px.
TEMPLATE_128 = ARCFACE_TEMPLATE + np.array([8.0, 0.0], dtype=np.float32)


class LearnedSwapper:
    def __init__(self, model_path: Path, providers: list[str] | None = None) -> None:
        try:
            import onnx
            import onnxruntime
            from onnx import numpy_helper
        except ImportError:
            raise ModelMissing("The face swapper needs onnx and onnxruntime: pip install 'facechain-discord[insightface]'.") from None
        path = Path(model_path)
        if not path.is_file():
            raise ModelMissing(f"FACECHAIN_FACE_SWAPPER_MODEL={path} does not exist: point it at inswapper_128.onnx or unset it.")
        try:
            graph = onnx.load(str(path)).graph
            self._emap = next(numpy_helper.to_array(t) for t in reversed(graph.initializer) if list(t.dims) == [512, 512])
            available = onnxruntime.get_available_providers()
            chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
            self._session = onnxruntime.InferenceSession(str(path), providers=chosen)
        except Exception as error:  # no 512x512 emap, not ONNX, unsupported ops
            raise ModelMissing(f"{path} is not an inswapper-style model ({type(error).__name__}): unset "
                               "FACECHAIN_FACE_SWAPPER_MODEL to use classical fusion.") from None
        inputs = self._session.get_inputs()
        self._target = next(i.name for i in inputs if len(i.shape) == 4)
        self._source = next(i.name for i in inputs if len(i.shape) == 2)

    def swap(self, image: np.ndarray, face: Face, identity: np.ndarray) -> np.ndarray:
        """`image` with `face` redrawn as the person whose ArcFace embedding is `identity`."""
        matrix, _ = cv2.estimateAffinePartial2D(five_points(face), TEMPLATE_128, method=cv2.LMEDS)
        crop = cv2.warpAffine(image, matrix, (SIZE, SIZE), borderValue=0.0)
        blob = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        latent = np.asarray(identity, np.float32).reshape(1, -1) @ self._emap
        latent /= max(float(np.linalg.norm(latent)), 1e-12)
        drawn = self._session.run(None, {self._target: blob, self._source: latent.astype(np.float32)})[0][0]
        drawn = (np.clip(drawn.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
        height, width = image.shape[:2]
        inverse = cv2.invertAffineTransform(matrix)
        pasted = cv2.warpAffine(drawn, inverse, (width, height), flags=cv2.INTER_LINEAR)
        inside = cv2.warpAffine(np.ones((SIZE, SIZE), np.float32), inverse, (width, height))
        inside = cv2.erode(inside, np.ones((5, 5), np.uint8))
        return blend(image, pasted, face_mask(image.shape, face) * inside)
