"""Instant portraits: a member's likeness from their enrolled photos alone, before (and beside) their face model.

IP-Adapter FaceID Plus v2 (`h94/IP-Adapter-FaceID`) through diffusers' own IP-Adapter support. What it reads of
a member, their ArcFace identity (insightface's recognition model) and CLIP ViT-H's view of their aligned face, is
computed once, when their photos are enrolled, and kept with them (`InstantFace`, in their private folder); a
drawing reads only that and the adapter, which a worker or actor loads once. A request that does not use it draws
with the UNet's own attention, as if it were not loaded.

Its weights, and insightface's packs, are licensed for non-commercial use only: the mode is off until the owner
turns it on (FACECHAIN_INSTANT).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.config import Settings
from engine.errors import FaceChainError, ModelMissing, ModelUnavailable
from engine.faces.insightface_backend import ARCFACE_TEMPLATE, five_points
from engine.models.references import hub_file, parse_model_reference

log = logging.getLogger(__name__)
INSTANT_FILE = "instant.safetensors"  # in the member's private folder, beside their selfies
INSTANT_PROBLEM = "instant portraits"  # the setup problem's key
LICENCE = ("IP-Adapter FaceID and insightface's ArcFace models are licensed for non-commercial use only "
           "(see their model cards).")
INSTANT_NOTICE = "Instant likeness: your face model is still training."
ASKED_NOTICE = "Instant likeness, drawn from your photos without your face model."
LORA_NAME = "faceid_0"  # what diffusers names the LoRA that ships inside the adapter
CLIP_SIZE = 224  # the aligned face CLIP sees: insightface's norm_crop at 224 (the ArcFace template, doubled)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


@dataclass(frozen=True)
class InstantFace:
    """What the adapter reads of a member: never their photos."""

    identity: np.ndarray  # (512,) ArcFace's normalised vector, the mean over their enrolled photos
    structure: np.ndarray  # (257, width) CLIP's penultimate hidden states of their aligned face
    structure_unconditional: np.ndarray  # the same of a blank input: guidance's other half

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        return save({"identity": self.identity.astype(np.float32), "structure": self.structure.astype(np.float16),
                     "structure_unconditional": self.structure_unconditional.astype(np.float16)})

    @classmethod
    def from_bytes(cls, data: bytes) -> InstantFace:
        from safetensors.numpy import load

        tensors = load(data)
        return cls(tensors["identity"], tensors["structure"], tensors["structure_unconditional"])


# --- reading a member's face (when their photos are enrolled) -------------------------------------------

class InstantReader:
    """ArcFace and CLIP's image encoder: what makes a member's InstantFace. Loaded by the jobs that read faces,
    never by a drawing."""

    def __init__(self, settings: Settings, device: str = "cpu", dtype_name: str = "float32") -> None:
        import torch
        from transformers import CLIPVisionModelWithProjection

        from engine.faces.insightface_backend import InsightFaceAnalyzer

        try:
            self.arcface = InsightFaceAnalyzer(settings.insightface_model_dir)
        except ModelMissing as missing:
            raise ModelUnavailable(f"Instant portraits need insightface's ArcFace model: {missing}",
                                   INSTANT_PROBLEM) from None
        folder = image_encoder_folder(settings)
        try:
            self.encoder = CLIPVisionModelWithProjection.from_pretrained(
                folder, torch_dtype=getattr(torch, dtype_name)).to(device).eval()
        except Exception as error:  # noqa: BLE001 - a damaged or foreign folder fails in many ways
            raise ModelUnavailable(f"FACECHAIN_INSTANT_IMAGE_ENCODER: {folder} is not a CLIP vision model "
                                   f"({type(error).__name__}): pull it again (`facechain models pull`).",
                                   INSTANT_PROBLEM) from None
        self.device = device
        self._torch = torch

    def read(self, photos: list[np.ndarray]) -> InstantFace:
        """The member's InstantFace from their enrolled photos (RGB); the first photo showing a face gives CLIP's
        view. FaceChainError when no photo shows one."""
        identities, crop = [], None
        for image in photos:
            faces = self.arcface.detect(image)
            if not faces:
                continue
            face = max(faces, key=lambda found: found.box[2] * found.box[3])
            identities.append(self.arcface.embed(image, face))
            if crop is None:
                crop = aligned_face(image, face)
        if crop is None:
            raise FaceChainError("None of the enrolled photos shows a face the instant mode can read.")
        identity = np.mean(identities, axis=0)
        identity /= max(float(np.linalg.norm(identity)), 1e-12)
        pixels = self._torch.from_numpy(((crop / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)[None].copy())
        with self._torch.inference_mode():
            pixels = pixels.to(self.device, self.encoder.dtype)
            seen = self.encoder(pixels, output_hidden_states=True).hidden_states[-2][0]
            blank = self.encoder(self._torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2][0]
        return InstantFace(identity.astype(np.float32), seen.float().cpu().numpy(), blank.float().cpu().numpy())


def aligned_face(image: np.ndarray, face) -> np.ndarray:
    """The face aligned as insightface's norm_crop does at 224 px (float32 RGB)."""
    matrix, _ = cv2.estimateAffinePartial2D(five_points(face), ARCFACE_TEMPLATE * (CLIP_SIZE / 112), method=cv2.LMEDS)
    return cv2.warpAffine(image, matrix, (CLIP_SIZE, CLIP_SIZE), borderValue=0.0).astype(np.float32)


def image_encoder_folder(settings: Settings) -> Path:
    """The image encoder's folder: a local folder (or its subfolder), else the two files fetched from the hub."""
    reference = parse_model_reference(settings.instant_image_encoder)
    subfolder = settings.instant_image_encoder_folder.strip("/")
    if reference.kind == "local":
        root = Path(reference.value).expanduser()
        for folder in (root / subfolder, root):
            if (folder / "config.json").is_file():
                return folder
        raise ModelUnavailable(f"FACECHAIN_INSTANT_IMAGE_ENCODER: no CLIP vision model (config.json) in {root}.",
                               INSTANT_PROBLEM)
    files = [hub_file(reference, f"{subfolder}/{name}" if subfolder else name, "FACECHAIN_INSTANT_IMAGE_ENCODER")
             for name in ("config.json", "model.safetensors")]
    return files[0].parent


def adapter_file(settings: Settings) -> Path:
    reference = parse_model_reference(settings.instant_adapter)
    if reference.kind == "local":
        path = Path(reference.value).expanduser()
        path = path / settings.instant_adapter_file if path.is_dir() else path
        if not path.is_file():
            raise ModelUnavailable(f"FACECHAIN_INSTANT_ADAPTER: {path} does not exist.", INSTANT_PROBLEM)
        return path
    return hub_file(reference, settings.instant_adapter_file, "FACECHAIN_INSTANT_ADAPTER")


# --- drawing with it ---------------------------------------------------------------------------------------

class InstantAdapter:
    """FaceID Plus v2 on a base pipeline: its attention processors and projection are kept aside and put in place
    only for the requests that draw with it."""

    def __init__(self, pipeline, path: Path) -> None:
        import torch

        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)  # never code from a pickle
            unet = pipeline.unet
            own = dict(unet.attn_processors)
            pipeline.load_ip_adapter(weights, subfolder="", weight_name="", image_encoder_folder=None)
        except Exception as error:  # noqa: BLE001 - a damaged or foreign file fails in many ways
            detail = "it holds more than weights, and code in it is never run" if isinstance(
                error, pickle.UnpicklingError) else f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            raise ModelUnavailable(f"FACECHAIN_INSTANT_ADAPTER: {path.name} is not an IP-Adapter FaceID Plus "
                                   f"checkpoint ({detail}): pull it again.", INSTANT_PROBLEM) from None
        self.unet = unet
        self.processors = dict(unet.attn_processors)
        self.projection = unet.encoder_hid_proj
        self._put_aside(own)
        pipeline.disable_lora()  # loading switched its LoRA on; the generator picks adapters per request

    def _put_aside(self, own_processors: dict) -> None:
        """The UNet's own attention back (as the memory plan last set it: sliced or not)."""
        self.unet.encoder_hid_proj = None  # first: its resampler's attention counts among the UNet's processors
        self.unet.config.encoder_hid_dim_type = None
        self.unet.set_attn_processor(dict(own_processors))  # diffusers empties the dict it is given

    @contextmanager
    def drawing(self, face: InstantFace, count: int, guided: bool) -> Iterator[dict]:
        """The pipeline's arguments for `count` pictures of `face` (with or without classifier-free guidance)."""
        import torch

        unet = self.unet
        own = dict(unet.attn_processors)
        unet.encoder_hid_proj = self.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        unet.set_attn_processor(dict(self.processors))
        dtype, device = unet.dtype, unet.device
        layer = self.projection.image_projection_layers[0]
        seen = torch.from_numpy(face.structure)[None, None].to(device, dtype).repeat(count, 1, 1, 1)
        identity = torch.from_numpy(face.identity)[None, None].to(device, dtype)
        if guided:  # diffusers' order: the unconditional half first
            blank = torch.from_numpy(face.structure_unconditional)[None, None].to(device, dtype).repeat(count, 1, 1, 1)
            seen, identity = torch.cat([blank, seen]), torch.cat([torch.zeros_like(identity), identity])
        layer.clip_embeds, layer.shortcut = seen, True  # Plus v2: the identity, plus the face's structure
        try:
            yield {"ip_adapter_image_embeds": [identity]}
        finally:
            layer.clip_embeds = None
            self._put_aside(own)


def read_instant_face(data: bytes | None) -> InstantFace | None:
    if data is None:
        return None
    try:
        return InstantFace.from_bytes(data)
    except Exception:  # noqa: BLE001 - a damaged file: drawn as before the mode was on
        log.warning("a damaged instant face file was ignored")
        return None
