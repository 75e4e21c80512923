"""Turn uploaded bytes into an upright RGB array, or say plainly why that can't be done.

The size is checked from the header before any pixel is decoded, so a decompression bomb
(a tiny file claiming huge dimensions) costs nothing. JPEG, PNG, WebP, GIF (still), AVIF, and
HEIC/HEIF (iPhone photos, through pillow-heif) are read, with the same guards.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.preprocess.reasons import PhotoRejected, Reason

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

try:
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # an install without it reads everything but HEIC
    pass


def decode_photo(data: bytes, max_megapixels: float) -> np.ndarray:
    """RGB uint8 array with EXIF orientation applied; raises PhotoRejected."""
    if not data:
        raise PhotoRejected(Reason.UNREADABLE, "the file is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise PhotoRejected(Reason.TOO_LARGE, "the image claims absurd dimensions") from None
        except UnidentifiedImageError:
            raise PhotoRejected(Reason.UNREADABLE, "the file is not an image") from None
        except (OSError, ValueError, SyntaxError) as error:
            raise PhotoRejected(Reason.UNREADABLE, f"the image header is damaged ({error})") from None
        with image:
            return _to_rgb_array(image, max_megapixels)


def _to_rgb_array(image: Image.Image, max_megapixels: float) -> np.ndarray:
    width, height = image.size
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise PhotoRejected(
            Reason.TOO_LARGE, f"{width}x{height} is {megapixels:.0f} megapixels; the limit is {max_megapixels:g}"
        )
    if getattr(image, "n_frames", 1) > 1:
        raise PhotoRejected(Reason.ANIMATED, f"the image has {image.n_frames} frames")
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except Image.DecompressionBombError:
        raise PhotoRejected(Reason.TOO_LARGE, "the image is too large to decode") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise PhotoRejected(Reason.UNREADABLE, f"the image data is damaged or truncated ({error})") from None
    return _rgb(image)


def _rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to RGB uint8; transparency is flattened onto white."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.stack([gray] * 3, axis=-1))
    if image.mode == "P" or image.mode == "PA" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
