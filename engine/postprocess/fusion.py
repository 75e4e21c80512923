"""Classical face fusion: put the user's face onto a generated portrait with no learned model.

1. Align the selfie to the portrait's face with a similarity transform fitted on the landmarks,
   so the portrait keeps its pose and framing.
2. Match colour in Lab space (mean and spread inside the face) so the skin tone runs on
   continuously into the portrait's neck and ears, then take the portrait's large-scale
   shading, so the light falls as it does in the portrait.
3. Blend through a feathered mask of the inner face, shrunk from the jaw line, so there is no
   visible seam and hair, ears and outline stay the portrait's.
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.faces import Face

JAW_AND_BROWS = slice(0, 27)  # dlib 68-point indices outlining the face


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


def fuse_face(face_image: np.ndarray, face: Face, template_image: np.ndarray, template_face: Face) -> np.ndarray:
    """`template_image` with its face replaced by `face` from `face_image` (both RGB uint8)."""
    aligned = align_onto(face_image, face, template_image.shape, template_face)
    mask = face_mask(template_image.shape, template_face)
    recoloured = match_colour(aligned, template_image, mask)
    recoloured = carry_lighting(recoloured, template_image, max(template_face.box[2:]))
    return blend(template_image, recoloured, mask)


def blend(base: np.ndarray, replacement: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`replacement` over `base` where the float mask is 1, fading out where it falls to 0."""
    alpha = mask[..., None]
    mixed = base.astype(np.float32) * (1 - alpha) + replacement.astype(np.float32) * alpha
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
