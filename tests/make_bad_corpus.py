"""Generate the corpus of broken, hostile and awkward uploads that preprocessing must survive.

Generated rather than hand-picked, so every kind is known to be present. Each entry maps a file
name to the reason code preprocessing must give it, or None when the photo must be accepted.
Run `python tests/make_bad_corpus.py tests/data/bad` to look at the files.
"""

from __future__ import annotations

import functools
import io
import struct
import sys
import zipfile
import zlib
from pathlib import Path

from PIL import Image

DATA = Path(__file__).parent / "data"
FACE = DATA / "obama" / "obama1.jpg"  # a clear frontal face that is accepted as it is


def _face(mode: str = "RGB") -> Image.Image:
    return Image.open(FACE).convert(mode)


def _save(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header declaring huge dimensions, followed by a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _animated(format_name: str) -> bytes:
    frames = [_face().resize((200, 160)), _face().resize((200, 160)).rotate(10)]
    return _save(frames[0], format=format_name, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated(orientation: int) -> bytes:
    """The face stored so that applying EXIF `orientation` shows it upright."""
    undo = {
        2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180], 4: [Image.Transpose.FLIP_TOP_BOTTOM],
        5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_90], 7: [Image.Transpose.TRANSVERSE],
        8: [Image.Transpose.ROTATE_270],
    }
    image = _face()
    for step in undo.get(orientation, []):
        image = image.transpose(step)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(image, format="JPEG", quality=92, exif=exif.tobytes())


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", FACE.read_bytes()[:1000])
    return buffer.getvalue()


def _sixteen_bit_png() -> bytes:
    gray = _face("L")
    wide = Image.frombytes("I;16", gray.size, bytes(b for value in gray.tobytes() for b in (0, value)))
    return _save(wide, format="PNG")


def _palette_with_transparency() -> bytes:
    image = _face().quantize(colors=255)
    return _save(image, format="PNG", transparency=0)


@functools.cache
def build_corpus() -> dict[str, tuple[bytes, str | None]]:
    """name -> (file bytes, expected reason code or None for accepted)."""
    jpeg = FACE.read_bytes()
    png = _save(_face(), format="PNG")
    corpus: dict[str, tuple[bytes, str | None]] = {
        "zero_bytes.jpg": (b"", "unreadable"),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "unreadable"),
        "truncated.png": (png[: len(png) // 3], "unreadable"),
        "text_named.jpg": (b"hello, this is not a photo\n" * 20, "unreadable"),
        "html_named.jpg": (b"<!doctype html><html><body><img src=x></body></html>", "unreadable"),
        "zip_named.jpg": (_zip_bytes(), "unreadable"),
        "decompression_bomb.png": (_png_claiming(100_000, 100_000), "too_large"),
        "huge_valid.jpg": (_save(Image.new("RGB", (8000, 6000), (120, 110, 100)), format="JPEG", quality=50), "too_large"),
        "animated.gif": (_animated("GIF"), "animated"),
        "animated.webp": (_animated("WEBP"), "animated"),
        "one_pixel.png": (_save(Image.new("RGB", (1, 1), (200, 150, 120)), format="PNG"), "no_face"),
        "face_at_edge.jpg": ((DATA / "edge" / "obama_partial_face.jpg").read_bytes(), "face_cut_off"),
        "png_named.jpg": (png, None),
        "sixteen_bit.png": (_sixteen_bit_png(), None),
        "cmyk.jpg": (_save(_face("CMYK"), format="JPEG", quality=92), None),
        "grayscale.jpg": (_save(_face("L"), format="JPEG", quality=92), None),
        "gray_alpha.png": (_save(_face("LA"), format="PNG"), None),
        "palette_transparency.png": (_palette_with_transparency(), None),
    }
    for orientation in range(1, 9):
        corpus[f"exif_orientation_{orientation}.jpg"] = (_exif_rotated(orientation), None)
    return corpus


def write_corpus(folder: Path) -> dict[str, str | None]:
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, reason) in build_corpus().items():
        (folder / name).write_bytes(data)
        expected[name] = reason
    return expected


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else DATA / "bad")
    for name, reason in write_corpus(target).items():
        print(f"{name}: {reason or 'accepted'}")
