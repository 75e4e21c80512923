"""Classical face fusion: put the user's face onto a generated portrait with no learned model.

1. Align the selfie to the portrait's face with a similarity transform fitted on the landmarks,
   so the portrait keeps its pose and framing.
2. Match colour in Lab space (mean and spread inside the face) so the skin tone runs on
   continuously into the portrait's neck and ears, then take the portrait's large-scale
   shading, so the light falls as it does in the portrait.
3. Blend through a feathered mask of the inner face, shrunk from the jaw line, so there is no
   visible seam and hair, ears and outline stay the portrait's.
4. Never carry what the selfie does not show: where the selfie is turned further than the
   portrait, its far cheek is foreshortened and beside it lies hair or background; the mask
   fades there to the portrait's own face.
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.faces import Face
from engine.faces.pose import head_pose

JAW_AND_BROWS = slice(0, 27)  # dlib 68-point indices outlining the face
# Yaw differences below this need no fade; at TURN_FULL_FADE more the far cheek's outer part is the portrait's.
TURN_NO_FADE = 0.08
TURN_FULL_FADE = 0.3


def face_mask(shape: tuple[int, ...], face: Face) -> np.ndarray:
    """Float mask (0..1) of the inner face, feathered towards its edge."""
    height, width = shape[:2]
    mask = np.zeros((height, width), np.float32)
    if len(face.landmarks) == 68:
        outline = face.landmarks[JAW_AND_BROWS].copy()
        brows = outline[17:27]
        eyes_y = (face.left_eye[1] + face.right_eye[1]) / 2
        outline[17:27, 1] = brows[:, 1] - 0.25 * (eyes_y - brows[:, 1])  # take in the lower forehead
        cv2.fillConvexPoly(mask, cv2.convexHull(outline.astype(np.int32)), 1.0)
    else:
        x, y, w, h = face.box
        cv2.ellipse(mask, (int(x + w / 2), int(y + h * 0.55)), (int(w * 0.42), int(h * 0.5)), 0, 0, 360, 1.0, -1)
    size = max(face.box[2], face.box[3])
    shrink = max(1, int(size * 0.06))
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * shrink + 1, 2 * shrink + 1)))
    feather = max(1.0, size * 0.06)
    return cv2.GaussianBlur(mask, (0, 0), feather)


def align_onto(face_image: np.ndarray, face: Face, template_shape: tuple[int, ...], template_face: Face) -> np.ndarray:
    matrix, _ = cv2.estimateAffinePartial2D(face.landmarks, template_face.landmarks, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("could not align the faces")
    height, width = template_shape[:2]
    return cv2.warpAffine(face_image, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def match_colour(source: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift `source`'s Lab statistics inside `mask` to those of `reference`."""
    inside = mask > 0.5
    if inside.sum() < 16:
        return source
    src = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)
    for channel in range(3):
        s_mean, s_std = src[..., channel][inside].mean(), src[..., channel][inside].std() + 1e-6
        r_mean, r_std = ref[..., channel][inside].mean(), ref[..., channel][inside].std() + 1e-6
        # Keep the selfie's detail (its spread) mostly, its overall tone not at all.
        scale = np.clip(r_std / s_std, 0.7, 1.3)
        src[..., channel] = (src[..., channel] - s_mean) * scale + r_mean
    return cv2.cvtColor(np.clip(src, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def carry_lighting(source: np.ndarray, reference: np.ndarray, face_size: int) -> np.ndarray:
    """Swap `source`'s large-scale shading for `reference`'s, keeping `source`'s fine detail."""
    sigma = max(2.0, face_size / 10)
    src = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref_light = cv2.GaussianBlur(cv2.cvtColor(reference, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32), (0, 0), sigma)
    src[..., 0] = src[..., 0] - cv2.GaussianBlur(src[..., 0], (0, 0), sigma) + ref_light
    return cv2.cvtColor(np.clip(src, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def far_side_fade(mask: np.ndarray, source_face: Face, template_face: Face) -> np.ndarray:
    """`mask` faded on the far side of a source turned further than the template: from the middle of
    the face (kept) to the jaw line on that side (the template's own face)."""
    turn = head_pose(source_face).yaw - head_pose(template_face).yaw
    amount = float(np.clip((abs(turn) - TURN_NO_FADE) / (TURN_FULL_FADE - TURN_NO_FADE), 0.0, 1.0))
    if amount == 0.0 or len(template_face.landmarks) != 68:
        return mask
    # The source's nose sits towards its far side: negative yaw, the image's left.
    landmarks = template_face.landmarks
    edge = landmarks[0] if turn < 0 else landmarks[16]
    middle = landmarks[27:31].mean(axis=0)
    across = template_face.right_eye - template_face.left_eye
    across = across / max(1e-6, float(np.linalg.norm(across)))
    height, width = mask.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    reach = float(np.dot(edge - middle, across))
    if abs(reach) < 1:
        return mask
    t = ((xs - middle[0]) * across[0] + (ys - middle[1]) * across[1]) / reach  # 0 mid-face, 1 at the jaw
    ramp = np.clip((t - 0.3) / 0.6, 0.0, 1.0)
    return mask * (1.0 - amount * ramp * ramp * (3 - 2 * ramp)).astype(np.float32)


def fusion_mask(template_shape: tuple[int, ...], source_face: Face, template_face: Face) -> np.ndarray:
    """Where the source replaces the template (0..1): the inner face, faded where the source shows nothing."""
    return far_side_fade(face_mask(template_shape, template_face), source_face, template_face)


def fuse_face(face_image: np.ndarray, face: Face, template_image: np.ndarray, template_face: Face,
              strength: float = 1.0) -> np.ndarray:
    """`template_image` with its face replaced by `face` from `face_image` (both RGB uint8), at
    `strength` (1: all the selfie's face inside the mask; less keeps some of the template's)."""
    aligned = align_onto(face_image, face, template_image.shape, template_face)
    mask = fusion_mask(template_image.shape, face, template_face)
    recoloured = match_colour(aligned, template_image, mask)
    recoloured = carry_lighting(recoloured, template_image, max(template_face.box[2:]))
    return blend(template_image, recoloured, mask * strength)


def seam_sides(fused: np.ndarray, template: np.ndarray, template_face: Face) -> tuple[float, float]:
    """How much the fused face breaks the template's light or colour where the blend fades out, on the
    image's left and right of the face: the mean Lab difference in the band around the mask edge.
    Hair or background carried onto a cheek shows here, on one side."""
    mask = face_mask(template.shape, template_face)
    band = (mask > 0.1) & (mask < 0.9)
    difference = np.abs(cv2.cvtColor(fused, cv2.COLOR_RGB2LAB).astype(np.float32)
                        - cv2.cvtColor(template, cv2.COLOR_RGB2LAB).astype(np.float32)).sum(axis=2)
    middle_x = float(template_face.landmarks[27:31, 0].mean()) if len(template_face.landmarks) == 68 else \
        float(template_face.box[0] + template_face.box[2] / 2)
    left_of_middle = (np.arange(template.shape[1]) < middle_x)[None, :]
    sides = (band & left_of_middle, band & ~left_of_middle)
    left, right = (float(difference[side].mean()) if side.any() else 0.0 for side in sides)
    return left, right


def seam_break(fused: np.ndarray, template: np.ndarray, template_face: Face) -> float:
    """The worse side of `seam_sides`: a cheek whose edge no longer matches the template's."""
    return max(seam_sides(fused, template, template_face))


def blend(base: np.ndarray, replacement: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`replacement` over `base` where the float mask is 1, fading out where it falls to 0."""
    alpha = mask[..., None]
    mixed = base.astype(np.float32) * (1 - alpha) + replacement.astype(np.float32) * alpha
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
