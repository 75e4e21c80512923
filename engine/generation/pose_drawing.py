"""Poses drawn: the OpenPose skeleton a pose ControlNet reads, and a preview for people.

The skeleton follows ControlNet's openpose convention (controlnet_aux draws the same): the 18 COCO
body points, 17 limbs as soft ellipses in a fixed rainbow, each point a dot of its own colour, on black.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageDraw

from engine.generation.poses import POINTS, Pose

LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 85), (255, 0, 170))
# The limbs' width and the dots' radius on a 512 px wide picture (scaled with the width).
LIMB_WIDTH, DOT_RADIUS = 4, 4
LIMB_OPACITY = 0.6
# A portrait's shape: 2 wide by 3 high, as FaceChain's pose presets.
DEFAULT_SIZE = (512, 768)


def skeleton(pose: Pose, size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """The pose as the OpenPose skeleton a pose ControlNet reads: `size` is (width, height)."""
    width, height = size
    canvas = np.zeros((height, width, 3), np.uint8)
    scale = min(width, height) / 512
    for points in pose.people:
        canvas = _draw_person(canvas, points, width, height, scale)
    return Image.fromarray(canvas)


def _draw_person(canvas: np.ndarray, points: dict, width: int, height: int, scale: float) -> np.ndarray:
    at = {POINTS.index(name): (x * width, y * height) for name, (x, y) in points.items()}
    for index, (start, end) in enumerate(LIMBS):
        if start not in at or end not in at:
            continue
        (x1, y1), (x2, y2) = at[start], at[end]
        length = math.hypot(x2 - x1, y2 - y1)
        angle = math.degrees(math.atan2(y2 - y1, x2 - x1))
        polygon = cv2.ellipse2Poly((round((x1 + x2) / 2), round((y1 + y2) / 2)),
                                   (round(length / 2), max(1, round(LIMB_WIDTH * scale))), round(angle), 0, 360, 1)
        limb = canvas.copy()
        cv2.fillConvexPoly(limb, polygon, COLOURS[index])
        canvas = cv2.addWeighted(canvas, 1 - LIMB_OPACITY, limb, LIMB_OPACITY, 0)
    for index, (x, y) in at.items():
        cv2.circle(canvas, (round(x), round(y)), max(1, round(DOT_RADIUS * scale)), COLOURS[index], thickness=-1)
    return canvas


def preview(pose: Pose, width: int = 192) -> Image.Image:
    """A small picture for people: the skeleton with the pose's name and framing under it."""
    drawn = skeleton(pose, (width, width * 3 // 2) if len(pose.people) == 1 else (width * 3 // 2, width))
    card = Image.new("RGB", (drawn.width, drawn.height + 28), (24, 24, 24))
    card.paste(drawn, (0, 0))
    label = f"{pose.name} ({'upper body' if pose.framing == 'upper' else 'full body'}" + (
        ", two people)" if len(pose.people) == 2 else ")")
    ImageDraw.Draw(card).text((6, drawn.height + 7), label, fill=(235, 235, 235), font_size=13)
    return card
