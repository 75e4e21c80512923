"""Skin retouching, the last of the paper's preparation steps: smooth blemishes and noise on the
skin only, keeping the finest texture (pores) and leaving eyes, brows, lips and hair as they were.

An edge-preserving (bilateral) filter flattens the skin's blotches and noise while keeping the
face's contours; part of the finest detail is then added back so the skin does not turn to plastic.
The result is blended in through the feathered skin mask at the configured strength.
"""

from __future__ import annotations

import cv2
import numpy as np

# Share of the finest detail (below about a pixel and a half) put back after smoothing: pores.
PORES_KEPT = 0.35
PORE_SCALE = 1.2


def retouch_skin(crop: np.ndarray, skin: np.ndarray, strength: float) -> np.ndarray:
    """`crop` with its skin smoothed; `skin` is a [0, 1] mask, `strength` 0 (unchanged) to 1 (full)."""
    rows, columns = np.nonzero(skin > 0.01)
    if strength <= 0 or not len(rows):
        return crop
    side = crop.shape[0]
    margin = round(side / 32)  # the filters' reach, so the window's edge does not show
    top, bottom = max(0, rows.min() - margin), min(side, rows.max() + margin + 1)
    left, right = max(0, columns.min() - margin), min(crop.shape[1], columns.max() + margin + 1)
    window = np.ascontiguousarray(crop[top:bottom, left:right])
    image = window.astype(np.float32)
    smoothed = cv2.bilateralFilter(window, d=0, sigmaColor=18 + 22 * strength, sigmaSpace=side / 100)
    smoothed = cv2.bilateralFilter(smoothed, d=0, sigmaColor=12 + 14 * strength, sigmaSpace=side / 170)
    smoothed = smoothed.astype(np.float32)
    retouched = cv2.GaussianBlur(smoothed, (0, 0), PORE_SCALE) + PORES_KEPT * _finest(image)
    alpha = np.clip(strength * skin[top:bottom, left:right], 0.0, 1.0)[..., None]
    result = crop.copy()
    result[top:bottom, left:right] = np.clip(image * (1 - alpha) + retouched * alpha, 0, 255).round()
    return result


def _finest(image: np.ndarray) -> np.ndarray:
    return image - cv2.GaussianBlur(image, (0, 0), PORE_SCALE)
