"""Head pose from landmarks: how far a face is turned (yaw), tilted up or down (pitch) and rolled.

Rough, landmark-only measures, good for comparing two faces (which enrolled selfie best matches
a portrait's pose), not for angles in degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.faces.base import Face

NOSE_TIP, CHIN, JAW_LEFT, JAW_RIGHT = 30, 8, 0, 16
# Where the nose tip sits between the eye line and the chin on a level, frontal face.
LEVEL_NOSE_HEIGHT = 0.28


@dataclass(frozen=True)
class Pose:
    yaw: float  # -1..1: the nose towards the image's left (<0) or right (>0); 0 frontal
    pitch: float  # >0 tilted down (nose towards the chin), <0 up; 0 level
    roll: float  # degrees the eye line turns from horizontal

    def distance(self, other: Pose) -> float:
        """How different two poses look; yaw matters most (what the far cheek shows)."""
        return math.hypot(2.0 * (self.yaw - other.yaw), self.pitch - other.pitch) + abs(self.roll - other.roll) / 90


def head_pose(face: Face) -> Pose:
    landmarks = np.asarray(face.landmarks, dtype=np.float64)
    eyes = face.right_eye - face.left_eye
    roll = math.degrees(math.atan2(float(eyes[1]), float(eyes[0])))
    if len(landmarks) != 68:  # 5 points: eyes, nose, mouth corners
        nose = landmarks[2]
        span = float(np.linalg.norm(eyes)) or 1.0
        yaw = float(np.clip(2.0 * (np.dot(nose - face.left_eye, eyes) / span**2 - 0.5), -1, 1))
        return Pose(yaw, 0.0, roll)
    nose = landmarks[NOSE_TIP]
    to_left = float(np.linalg.norm(nose - landmarks[JAW_LEFT]))
    to_right = float(np.linalg.norm(nose - landmarks[JAW_RIGHT]))
    yaw = (to_left - to_right) / max(1e-6, to_left + to_right)
    eye_line = (face.left_eye + face.right_eye) / 2
    height = float(np.linalg.norm(landmarks[CHIN] - eye_line)) or 1.0
    pitch = float(np.linalg.norm(nose - eye_line)) / height - LEVEL_NOSE_HEIGHT
    return Pose(yaw, pitch, roll)
