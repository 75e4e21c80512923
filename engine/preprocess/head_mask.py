"""Head masks for training crops, and painting everything else white as FaceChain does.

The head is face, hair, ears and neck: no clothes, no background. A learned face parser gives it
when one is set up (`engine.preprocess.face_parser`); otherwise GrabCut, seeded by the landmarks
the face engine found, separates the head from its surroundings by colour, so enrollment never
waits on a download. The skin mask (skin without eyes, brows, lips or hair) is what retouching smooths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from engine.preprocess.face_parser import FaceParser

log = logging.getLogger(__name__)

JAW, BROWS, NOSE = slice(0, 17), slice(17, 27), slice(27, 36)
EYES = (slice(36, 42), slice(42, 48))
BROW_SIDES = (slice(17, 22), slice(22, 27))
LIPS = slice(48, 60)
# GrabCut runs on a copy this wide: the mask's edge is refined at full size by feathering only.
GRABCUT_SIDE = 160
GRABCUT_ROUNDS = 3
WHITE = 255
# A parser's head mask is believed when it covers this much of the landmarks' face and leaves this
# much of the crop outside (a model that sees no head, or sees nothing but head, is not believed).
MIN_FACE_COVERED = 0.9
MAX_CROP_COVERED = 0.85


@dataclass
class HeadMask:
    head: np.ndarray  # float32 in [0, 1], the crop's size: face, hair, ears, neck, with a soft edge
    skin: np.ndarray  # float32 in [0, 1]: the skin retouching may smooth (no eyes, brows, lips, hair)
    source: str  # "parser" or "landmarks"


@dataclass
class FaceGeometry:
    """Where the parts of the face are in a crop, from its landmarks (68 points) or its face box."""

    centre_x: float
    brow_y: float
    chin_y: float
    face_width: float
    jaw: np.ndarray  # points along the jaw, ear to ear
    brows: np.ndarray

    @property
    def face_height(self) -> float:  # brows to chin
        return self.chin_y - self.brow_y

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, face_box: tuple[int, int, int, int]) -> FaceGeometry:
        if len(landmarks) >= 68:
            jaw, brows = landmarks[JAW], landmarks[BROWS]
            return cls(float(jaw[:, 0].mean()), float(brows[:, 1].mean()), float(jaw[8, 1]),
                       float(jaw[16, 0] - jaw[0, 0]), jaw.astype(np.float32), brows.astype(np.float32))
        # Five points only: a face-box ellipse stands in for the jaw and brows.
        x, y, w, h = face_box
        angles = np.linspace(np.pi, 0, 17)
        jaw = np.stack([x + w / 2 - np.cos(angles) * w / 2, y + h * 0.35 + np.sin(angles) * h * 0.65], axis=1)
        brows = np.stack([np.linspace(x + w * 0.1, x + w * 0.9, 10), np.full(10, y + h * 0.3)], axis=1)
        return cls(x + w / 2, y + h * 0.3, y + h, float(w), jaw.astype(np.float32), brows.astype(np.float32))

    def face_hull(self, forehead: float) -> np.ndarray:
        """Jaw and brows, the brows lifted by `forehead` face heights (0.5 reaches about the hairline)."""
        lifted = self.brows - np.array([0, forehead * self.face_height], np.float32)
        return cv2.convexHull(np.concatenate([self.jaw, lifted]).astype(np.int32))


def head_mask(crop: np.ndarray, landmarks: np.ndarray, face_box: tuple[int, int, int, int],
              parser: FaceParser | None = None) -> HeadMask:
    """The parser's masks when it has one and they are plausible for this face; else the landmarks'."""
    if parser is not None:
        try:
            parsed = parser.parse(crop)
        except Exception:  # noqa: BLE001 - a parser failure costs the better mask, never the photo
            log.exception("the face parser failed on a crop; using the landmarks")
        else:
            if plausible(parsed.head, landmarks, face_box):
                size = crop.shape[0]
                return HeadMask(feather(parsed.head, size), feather(parsed.skin & parsed.head, size), "parser")
            log.warning("the face parser's head mask does not fit the face the landmarks show; using the landmarks")
    return landmark_head_mask(crop, landmarks, face_box)


def plausible(head: np.ndarray, landmarks: np.ndarray, face_box: tuple[int, int, int, int]) -> bool:
    face = np.zeros(head.shape, np.uint8)
    cv2.fillConvexPoly(face, FaceGeometry.from_landmarks(landmarks, face_box).face_hull(0.0), 1)
    covered = head[face > 0].mean() if face.any() else 0.0
    return covered >= MIN_FACE_COVERED and head.mean() <= MAX_CROP_COVERED


def landmark_head_mask(crop: np.ndarray, landmarks: np.ndarray, face_box: tuple[int, int, int, int]) -> HeadMask:
    """GrabCut seeded by the face: the face itself is head, the far corners and the clothes below the
    neck are background, and colour decides the hair, ears and neck in between."""
    size = crop.shape[0]
    scale = GRABCUT_SIDE / size
    small = cv2.resize(crop, (GRABCUT_SIDE, GRABCUT_SIDE), interpolation=cv2.INTER_AREA)
    geometry = FaceGeometry.from_landmarks(landmarks * scale, tuple(round(v * scale) for v in face_box))
    seeds = _seeds(geometry, GRABCUT_SIDE)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means: the same photo, the same crop
    cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), seeds, None, background, foreground, GRABCUT_ROUNDS,
                cv2.GC_INIT_WITH_MASK)
    head = np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    head = _main_part(head, geometry)
    head = cv2.resize(head * 255, (size, size), interpolation=cv2.INTER_LINEAR)
    return HeadMask(feather(head > 127, size), skin_mask(crop, landmarks, face_box, head > 127), "landmarks")


def _seeds(geometry: FaceGeometry, side: int) -> np.ndarray:
    """GrabCut's starting labels: sure head, sure background, and the undecided band between."""
    width, height = geometry.face_width, geometry.face_height
    centre = (round(geometry.centre_x), round(geometry.brow_y - 0.05 * height))
    head_axes = (0.64 * width, 1.0 * height)  # face and hair, from the landmarks' proportions
    # Beyond the head's ellipse grown by a quarter, above the chin: surely background.
    seeds = np.full((side, side), cv2.GC_BGD, np.uint8)
    cv2.ellipse(seeds, centre, (round(1.25 * head_axes[0]), round(1.25 * head_axes[1])), 0, 0, 360,
                cv2.GC_PR_BGD, -1)
    # Below the chin, beside the neck: long hair or shoulders, for colour to decide; under the
    # shoulders' line, outside the neck, the clothes: background.
    chin, shoulders = round(geometry.chin_y), round(geometry.chin_y + 0.5 * height)
    seeds[chin:shoulders] = cv2.GC_PR_BGD
    neck_half = 0.3 * width
    outside_neck = np.abs(np.arange(side) - geometry.centre_x) > 1.3 * neck_half
    seeds[shoulders:, outside_neck] = cv2.GC_BGD
    seeds[shoulders:, ~outside_neck] = cv2.GC_PR_BGD
    cv2.ellipse(seeds, centre, tuple(round(a) for a in head_axes), 0, 0, 360, cv2.GC_PR_FGD, -1)
    cv2.rectangle(seeds, (round(geometry.centre_x - neck_half), round(geometry.chin_y - 0.2 * height)),
                  (round(geometry.centre_x + neck_half), round(geometry.chin_y + 0.6 * height)), cv2.GC_PR_FGD, -1)
    # Surely head: the face with its forehead, the crown just above it, and the top of the neck.
    cv2.fillConvexPoly(seeds, geometry.face_hull(0.55), cv2.GC_FGD)
    cv2.rectangle(seeds, (round(geometry.centre_x - 0.6 * neck_half), round(geometry.chin_y)),
                  (round(geometry.centre_x + 0.6 * neck_half), round(geometry.chin_y + 0.2 * height)), cv2.GC_FGD, -1)
    return seeds


def _main_part(mask: np.ndarray, geometry: FaceGeometry) -> np.ndarray:
    """The connected part holding the face, its holes filled (eyes, mouth, glasses' glints)."""
    count, labels = cv2.connectedComponents(mask)
    if count <= 1:
        return mask
    face_label = labels[int(np.clip((geometry.brow_y + geometry.chin_y) / 2, 0, mask.shape[0] - 1)),
                        int(np.clip(geometry.centre_x, 0, mask.shape[1] - 1))]
    main = (labels == face_label).astype(np.uint8) if face_label else mask
    contours, _ = cv2.findContours(main, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(main)
    cv2.drawContours(filled, contours, -1, 1, -1)
    return filled


def feather(mask: np.ndarray, size: int) -> np.ndarray:
    """A soft edge a few pixels wide, so white meets hair without a cut-out line."""
    radius = max(1, round(size / 256))
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), radius)
    return np.clip(soft, 0.0, 1.0)


def skin_mask(crop: np.ndarray, landmarks: np.ndarray, face_box: tuple[int, int, int, int],
              head: np.ndarray) -> np.ndarray:
    """Skin from the landmarks: the face hull with the forehead, less the eyes, brows and lips (grown a
    little), keeping only pixels of the cheeks' own colour (so a fringe of hair stays out)."""
    size = crop.shape[0]
    geometry = FaceGeometry.from_landmarks(landmarks, face_box)
    skin = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(skin, geometry.face_hull(0.4), 1)
    if len(landmarks) >= 68:
        grow = max(2, round(0.06 * geometry.face_width))
        features = np.zeros_like(skin)
        for part in (*EYES, *BROW_SIDES, LIPS):
            cv2.fillConvexPoly(features, cv2.convexHull(landmarks[part].astype(np.int32)), 1)
        features = cv2.dilate(features, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
        skin[features > 0] = 0
    skin &= head.astype(np.uint8)
    skin &= _skin_coloured(crop, skin)
    return feather(skin > 0, size)


def _skin_coloured(crop: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Pixels of the region's typical skin colour: chroma near its median, and not much darker (hair
    and eyes drop out; a lit cheek and a shaded one both count)."""
    ycrcb = cv2.cvtColor(crop, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    samples = ycrcb[region > 0]
    if len(samples) < 50:
        return region
    centre = np.median(samples, axis=0)
    spread = np.maximum(np.percentile(np.abs(samples[:, 1:] - centre[1:]), 80, axis=0), 4.0)
    near = np.all(np.abs(ycrcb[..., 1:] - centre[1:]) <= 2.0 * spread, axis=-1)
    near &= ycrcb[..., 0] >= 0.45 * centre[0]
    return cv2.morphologyEx(near.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))


def paint_white(crop: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Everything outside the head white, blended along the soft edge."""
    alpha = head[..., None]
    return (crop.astype(np.float32) * alpha + WHITE * (1.0 - alpha)).round().astype(np.uint8)
