"""Your face on a photo you bring (FaceChain's template mode): no trained model needed, only the
member's enrolled selfies and the fusion engine (the learned swapper where configured).

Faces in the photo are numbered left to right. With several and no number chosen, the answer is a
numbered preview to choose from. The photo gets the same checks as a selfie (size, format,
animation); only the member's own enrolled face is ever used.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.config import Settings
from engine.errors import FaceChainError
from engine.faces import Face, FaceAnalyzer
from engine.generation.portrait import enrolled_face
from engine.postprocess import EnrolledFace, make_fuser
from engine.postprocess.rank import similarity
from engine.preprocess import UploadedPhoto
from engine.preprocess.decode import decode_photo
from engine.preprocess.reasons import ADVICE, PhotoRejected, Reason
from engine.store import Store

PREVIEW_LONG_SIDE = 1024


class SeveralFaces(FaceChainError):
    """The photo shows several faces and none was chosen; `preview` is a numbered JPEG of them."""

    def __init__(self, count: int, preview: bytes) -> None:
        super().__init__(f"This photo shows {count} faces: choose one (1 to {count}, numbered left to right).")
        self.count, self.preview = count, preview


@dataclass
class SwapResult:
    image: np.ndarray
    face: int  # the number of the face replaced, from 1
    faces_found: int
    similarity: float  # 1 - identity distance to the member's enrolled faces


def photo_faces(analyzer: FaceAnalyzer, settings: Settings, photo: UploadedPhoto) -> tuple[np.ndarray, list[Face]]:
    """The photo decoded with the selfie checks, and its faces left to right; FaceChainError in plain words."""
    try:
        if len(photo.data) > settings.max_upload_mb * 2**20:
            raise PhotoRejected(Reason.TOO_LARGE, f"the file is {len(photo.data) / 1e6:.1f} MB; the limit is "
                                                  f"{settings.max_upload_mb:g} MB")
        image = decode_photo(photo.data, settings.max_photo_megapixels)
    except PhotoRejected as rejection:
        raise FaceChainError(f"That photo can't be used: {rejection.detail}. {ADVICE[rejection.reason]}.") from None
    faces = sorted(analyzer.detect(image), key=lambda face: face.box[0])
    if not faces:
        raise FaceChainError("No face was found in that photo: send one where a face is clearly visible.")
    return image, faces


def numbered_preview(image: np.ndarray, faces: list[Face]) -> bytes:
    """A JPEG of the photo with each face boxed and numbered (left to right)."""
    picture = Image.fromarray(image)
    scale = min(1.0, PREVIEW_LONG_SIDE / max(picture.size))
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)))
    draw = ImageDraw.Draw(picture)
    size = max(18, picture.width // 30)
    for number, face in enumerate(faces, start=1):
        x, y, w, h = (v * scale for v in face.box)
        draw.rectangle((x, y, x + w, y + h), outline="yellow", width=max(2, size // 8))
        draw.rectangle((x, y - size - 6, x + size * 0.9 + 6, y), fill="yellow")
        draw.text((x + 4, y - size - 4), str(number), fill="black", font_size=size)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


@dataclass
class ChosenFace:
    image: np.ndarray  # the photo, decoded
    face: Face
    number: int  # from 1, left to right
    faces_found: int


def choose_face(analyzer: FaceAnalyzer, settings: Settings, photo: UploadedPhoto,
                face_number: int | None = None) -> ChosenFace:
    """`photo`'s face `face_number` (from 1, left to right; None when there is only one); SeveralFaces
    with a numbered preview when there are several and none was chosen."""
    image, faces = photo_faces(analyzer, settings, photo)
    if face_number is None:
        if len(faces) > 1:
            raise SeveralFaces(len(faces), numbered_preview(image, faces))
        face_number = 1
    if not 1 <= face_number <= len(faces):
        raise FaceChainError(f"There is no face {face_number} in that photo: it shows {len(faces)} "
                             f"(1 to {len(faces)}, left to right).")
    return ChosenFace(image, faces[face_number - 1], face_number, len(faces))


def swap_face_on(analyzer: FaceAnalyzer, settings: Settings, enrolled: EnrolledFace, photo: UploadedPhoto,
                 face_number: int | None = None) -> SwapResult:
    """The enrolled face on `photo`'s face `face_number` (from 1, left to right; None when only one)."""
    chosen = choose_face(analyzer, settings, photo, face_number)
    image, face, face_number = chosen.image, chosen.face, chosen.number
    fused = make_fuser(settings, analyzer)(enrolled, image, face)
    found = analyzer.detect(fused)
    nearest = min(found, key=lambda f: abs(f.box[0] - face.box[0]) + abs(f.box[1] - face.box[1])) if found else face
    score = similarity(analyzer, analyzer.embed(fused, nearest), enrolled.embeddings)
    return SwapResult(fused, face_number, chosen.faces_found, score)


def swap_face(store: Store, analyzer: FaceAnalyzer, settings: Settings, user_id: str, photo: UploadedPhoto,
              face_number: int | None = None) -> SwapResult:
    """The member's own enrolled face (nobody else's) on `photo`'s face `face_number`."""
    return swap_face_on(analyzer, settings, enrolled_face(store, analyzer, user_id), photo, face_number)


def save_swap(result: SwapResult, out: Path, data_dir: Path) -> Path:
    from engine.provenance import save_marked

    out.parent.mkdir(parents=True, exist_ok=True)
    return save_marked(Image.fromarray(result.image), out, data_dir)
