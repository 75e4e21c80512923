"""The paper's last preparation steps on an aligned crop: the head segmented onto white, the skin retouched."""

from __future__ import annotations

import numpy as np

from engine.config import Settings
from engine.preprocess.align import AlignedFace
from engine.preprocess.face_parser import get_face_parser
from engine.preprocess.head_mask import head_mask, paint_white
from engine.preprocess.retouch import retouch_skin


def prepare_training_crop(aligned: AlignedFace, settings: Settings) -> np.ndarray:
    """The crop a face model trains on and the member sees: FACECHAIN_WHITE_BACKGROUND and
    FACECHAIN_SKIN_RETOUCH decide which steps run."""
    if not settings.white_background and settings.skin_retouch <= 0:
        return aligned.crop
    mask = head_mask(aligned.crop, aligned.landmarks, aligned.face_box, get_face_parser(settings))
    crop = retouch_skin(aligned.crop, mask.skin, settings.skin_retouch)
    return paint_white(crop, mask.head) if settings.white_background else crop
