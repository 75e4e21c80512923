"""A learned face parser (a SegFormer trained on CelebAMask-HQ, loaded by transformers) for the head
and skin masks of training crops; `head_mask` falls back to landmarks where it is not set up.

The parser is a model setting like the others (`FACECHAIN_FACE_PARSER`, fetched by `facechain
models pull`). Enrollment never waits on a download: a parser that is not on this machine yet, or
fails to load, leaves the landmark fallback in charge and says so in the log.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import Settings
from engine.errors import ModelUnavailable

log = logging.getLogger(__name__)
# CelebAMask-HQ's classes that belong to the head (no clothes, no necklace, no background).
HEAD_CLASSES = frozenset({"skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
                          "u_lip", "l_lip", "hair", "hat", "ear_r", "neck"})
SKIN_CLASSES = frozenset({"skin", "nose"})  # what retouching may smooth: not eyes, brows, lips or hair
NEEDED_CLASSES = frozenset({"skin", "hair", "neck"})


@dataclass
class ParsedFace:
    head: np.ndarray  # bool, the crop's size
    skin: np.ndarray  # bool


class FaceParser:
    """SegFormer-style semantic segmentation of a face crop into CelebAMask-HQ's classes."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        from engine.models.base_model import quiet_loaders

        quiet_loaders()
        self.processor = AutoImageProcessor.from_pretrained(folder)
        self.model = AutoModelForSemanticSegmentation.from_pretrained(folder).to(device).eval()
        self.device = device
        # Some exports name the classes after CelebAMask-HQ's files ("skin.png").
        names = {int(i): str(name).removesuffix(".png") for i, name in self.model.config.id2label.items()}
        if missing := NEEDED_CLASSES - set(names.values()):
            raise ModelUnavailable(
                f"{folder} is not a face parser: its classes lack {', '.join(sorted(missing))} (a SegFormer trained "
                "on CelebAMask-HQ, such as jonathandinu/face-parsing, has them)."
            )
        self.head_ids = torch.tensor(sorted(i for i, name in names.items() if name in HEAD_CLASSES))
        self.skin_ids = torch.tensor(sorted(i for i, name in names.items() if name in SKIN_CLASSES))
        self._lock = threading.Lock()  # one model, several enrollment threads: calls take turns

    def parse(self, crop: np.ndarray) -> ParsedFace:
        import torch

        with self._lock, torch.inference_mode():
            inputs = self.processor(images=crop, return_tensors="pt").to(self.device)
            logits = self.model(**inputs).logits
            logits = torch.nn.functional.interpolate(logits, size=crop.shape[:2], mode="bilinear",
                                                     align_corners=False)
            labels = logits.argmax(dim=1)[0].cpu()
        return ParsedFace(torch.isin(labels, self.head_ids).numpy(), torch.isin(labels, self.skin_ids).numpy())


_parsers: dict[tuple, FaceParser | None] = {}
_lock = threading.Lock()


def get_face_parser(settings: Settings) -> FaceParser | None:
    """The configured parser, loaded once per process; None when none is set, or it is not on this
    machine (`facechain models pull` fetches it), or it does not load: the landmarks then serve."""
    reference = settings.face_parser.strip()
    key = (reference, settings.device)
    with _lock:
        if key not in _parsers:
            _parsers[key] = _load(reference, settings) if reference else None
        return _parsers[key]


def _load(reference: str, settings: Settings) -> FaceParser | None:
    from engine.models.device import resolve_device
    from engine.models.files import face_parser_model, where_is

    folder = where_is(face_parser_model(settings))
    if folder is None:
        log.warning("the face parser %s is not on this machine (`facechain models pull` fetches it): head masks "
                    "come from the landmarks until then", reference)
        return None
    try:
        return FaceParser(folder, resolve_device(settings.device))
    except Exception as error:  # noqa: BLE001 - a broken parser must not stop enrollments
        log.error("the face parser at %s could not be loaded (%s: %s): head masks come from the landmarks; "
                  "`facechain doctor` checks it", folder, type(error).__name__, error)
        return None
