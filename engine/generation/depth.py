"""FaceChain's pose "with depth": a depth map of the pose photo, read by a second ControlNet beside the
pose's (at half its strength, as FaceChain conditions them), so the body's volume and its distance to
the camera follow the photo too. Off unless FACECHAIN_POSE_DEPTH; preset poses have no photo to read.

The depth estimator is a transformers depth model (default Intel/dpt-hybrid-midas, a MiDaS DPT as
controlnet_aux uses); it runs on the CPU, once per request.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from engine.config import Settings
from engine.errors import ModelUnavailable
from engine.models.references import parse_model_reference, resolve_model_folder

DEPTH_PROBLEM = "depth models"  # its setup-problem key
DEPTH_ESTIMATOR_SETTING = "FACECHAIN_DEPTH_ESTIMATOR"
DEPTH_CONTROLNET_SETTING = "FACECHAIN_DEPTH_CONTROLNET"
DEPTH_SCALE = 0.5


@lru_cache(maxsize=1)
def get_depth_estimator(reference: str):
    """(image processor, depth model) for FACECHAIN_DEPTH_ESTIMATOR, loaded once on the CPU."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from engine.models.base_model import quiet_loaders

    quiet_loaders()
    if not reference.strip():
        raise ModelUnavailable(f"Depth was asked for but {DEPTH_ESTIMATOR_SETTING} is empty: set it to "
                               f"{Settings.default('depth_estimator')}, or FACECHAIN_POSE_DEPTH=false.", DEPTH_PROBLEM)
    try:
        folder = resolve_model_folder(parse_model_reference(reference), setting=DEPTH_ESTIMATOR_SETTING,
                                      kind="component", half=False, what="the depth estimator")
    except ModelUnavailable as error:
        raise ModelUnavailable(str(error), DEPTH_PROBLEM) from None
    try:
        return AutoImageProcessor.from_pretrained(folder), AutoModelForDepthEstimation.from_pretrained(folder).eval()
    except (OSError, ValueError, KeyError) as error:
        raise ModelUnavailable(f"The depth estimator at {folder} could not be loaded ({type(error).__name__}): "
                               f"re-download it, or fix {DEPTH_ESTIMATOR_SETTING}.", DEPTH_PROBLEM) from None


def depth_in_frame(reference: str, image: np.ndarray, frame: tuple[float, float, float, float]) -> Image.Image:
    """The photo's depth (near is bright, as MiDaS and the depth ControlNet have it) inside `frame` (left,
    top, width, height in photo pixels; beyond the photo is far), as an RGB picture."""
    import torch

    processor, model = get_depth_estimator(reference)
    with torch.no_grad():
        predicted = model(**processor(images=Image.fromarray(image), return_tensors="pt")).predicted_depth
    depth = torch.nn.functional.interpolate(predicted[:, None], size=image.shape[:2], mode="bicubic")[0, 0].numpy()
    span = float(depth.max() - depth.min()) or 1.0
    depth = ((depth - depth.min()) / span * 255).astype(np.uint8)
    left, top, width, height = (round(v) for v in frame)
    canvas = np.zeros((height, width), np.uint8)
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(image.shape[1], left + width), min(image.shape[0], top + height)
    if x1 > x0 and y1 > y0:
        canvas[y0 - top:y1 - top, x0 - left:x1 - left] = depth[y0:y1, x0:x1]
    return Image.fromarray(canvas).convert("RGB")
