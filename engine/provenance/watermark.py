"""An invisible watermark that says "made by AI with this bot", and survives a JPEG resave and a resize.

A fixed pseudo-random pattern of +1/-1 cells (CELLS x CELLS, from a public seed) is stretched over the
whole picture and added to its brightness, a few levels up or down: a faint grain on a portrait, tied
to the picture's shape rather than its pixel grid. To look for it, the picture is shrunk to CELLS x
CELLS (whatever its size now), its shading taken away by a Laplacian, and the rest correlated with the
pattern. An unmarked picture scores like noise (|z| of 2 or 3 on the test photos, z ~ N(0, 1)); a marked
one above DETECT_Z after a JPEG resave at quality 85 and a resize to half (tests/test_provenance.py).
A JPEG keeps the 4-pixel cells of a 512 px picture, and a resize only changes how many pixels each spans.

A spread-spectrum mark on numpy and Pillow alone (the bot marks its collages and thumbnails, and loads no
OpenCV), chosen over the `invisible-watermark` package (which needs the GUI build of OpenCV beside our
headless one, and torch): its block DWT-DCT ties the mark to fixed 4-pixel blocks of the pixel grid, which
a resize moves.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SEED = 0x46434149  # "FCAI": one pattern for every picture, so anyone with this code can check one
CELL_COUNTS = (128, 64, 32)  # the largest whose cells are at least 2 px is used: 128 on a 512 px picture
DETECT_Z = 6.0  # correlation z-score at or above which the mark is present (an unmarked picture: ~N(0, 1))
TARGET_Z = 16.0  # what marking aims for, so that a resave and a resize still leave it above DETECT_Z
START_STRENGTH, MAX_STRENGTH = 2.5, 6.0  # brightness levels added or taken per cell


def _pattern(cells: int) -> np.ndarray:
    return np.random.default_rng(SEED + cells).choice([-1.0, 1.0], size=(cells, cells)).astype(np.float32)


PATTERNS = {cells: _pattern(cells) for cells in CELL_COUNTS}


def _resize(values: np.ndarray, width: int, height: int, resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(values.astype(np.float32), "F").resize((width, height), resample))


def _detail(cells: np.ndarray) -> np.ndarray:
    """What is left of a picture at cell scale once its shading is taken away (a Laplacian)."""
    padded = np.pad(cells, 1, mode="symmetric")
    return cells - (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]) / 4


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _z(luma: np.ndarray, cells: int) -> float:
    detail = _detail(_resize(luma, cells, cells, Image.Resampling.BOX))
    detail -= detail.mean()
    pattern = _detail(PATTERNS[cells])
    norm = float(np.linalg.norm(detail) * np.linalg.norm(pattern))
    return 0.0 if norm == 0 else float((detail * pattern).sum() / norm * cells)


def cells_for(width: int, height: int) -> int:
    return next((cells for cells in CELL_COUNTS if min(width, height) >= 2 * cells), CELL_COUNTS[-1])


def embed(rgb: np.ndarray) -> np.ndarray:
    """The picture (RGB uint8) with the mark in its brightness, no stronger than it needs to be found. The same
    amount goes on red, green and blue, so the colours stay as they were."""
    height, width = rgb.shape[:2]
    cells = cells_for(width, height)
    smooth = min(width, height) >= 4 * cells  # soft cell edges where cells are large enough to keep their level
    stretched = _resize(PATTERNS[cells], width, height,
                        Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST)[..., None]
    base = rgb[..., :3].astype(np.float32)
    strength = START_STRENGTH
    while True:
        out = np.clip(np.round(base + strength * stretched), 0, 255).astype(np.uint8)
        if strength >= MAX_STRENGTH or _z(_luma(out), cells) >= TARGET_Z:
            return out
        strength = min(strength * 1.25, MAX_STRENGTH)  # a busy picture hides a stronger mark


def score(rgb: np.ndarray) -> float:
    """How strongly the mark is present (the best z-score over the cell counts); DETECT_Z and above: it is."""
    luma = _luma(rgb)
    return max(_z(luma, cells) for cells in CELL_COUNTS if min(luma.shape) >= cells // 2)


def detect(rgb: np.ndarray) -> bool:
    return score(rgb) >= DETECT_Z
