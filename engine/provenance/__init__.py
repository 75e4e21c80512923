"""Every picture the bot makes says it was made by AI, three ways (EU AI Act, Article 50(2)):

- XMP in the file: IPTC's digital source type `trainedAlgorithmicMedia` and the bot as creator tool;
- a signed C2PA manifest (`c2pa.created`, digitalSourceType trainedAlgorithmicMedia), signed with the
  bot's own chain (engine/provenance/signing.py) or the owner's;
- an invisible watermark in the pixels that survives a JPEG resave and a resize (watermark.py), for when
  a platform strips the metadata.

`mark(image, "PNG")` gives the file's bytes with all three; `check(data)` says which it finds
(`facechain provenance check IMAGE`).
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CREATOR = "FaceChain for Discord"
MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
XMP = f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
 xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"
 Iptc4xmpExt:DigitalSourceType="{SOURCE_TYPE}" xmp:CreatorTool="{CREATOR}">
<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Made by AI ({CREATOR})</rdf:li></rdf:Alt></dc:description>
</rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="r"?>""".encode()

_signers: dict[tuple, object] = {}
_lock = threading.Lock()  # one signature at a time: the bot signs from several threads


def _manifest(title: str) -> str:
    return json.dumps({
        "claim_generator_info": [{"name": CREATOR}], "title": title,
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [{
            "action": "c2pa.created", "digitalSourceType": SOURCE_TYPE, "softwareAgent": {"name": CREATOR}}]}}],
    })


def _signer(data_dir: Path):
    import c2pa

    from engine.config import get_settings
    from engine.provenance.signing import signing_files

    settings = get_settings()
    key = (str(data_dir), str(settings.provenance_cert), str(settings.provenance_key))
    if key not in _signers:
        files = signing_files(data_dir, settings.provenance_cert, settings.provenance_key)
        _signers[key] = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, files.chain_pem,
                                                                  files.key_pem, None))
    return _signers[key]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    """The picture watermarked and encoded with its XMP (no manifest yet)."""
    from engine.provenance.watermark import embed

    rgb = np.asarray(image.convert("RGB"))
    marked = Image.fromarray(embed(rgb))
    buffer = io.BytesIO()
    if fmt == "PNG":
        info = PngInfo()
        info.add_itxt("XML:com.adobe.xmp", XMP.decode())
        marked.save(buffer, "PNG", pnginfo=info, **options)
    else:
        marked.save(buffer, fmt, xmp=XMP, **options)
    return buffer.getvalue()


def mark(image: Image.Image, fmt: str, data_dir: Path, title: str = "portrait", **options) -> bytes:
    """The picture as a `fmt` file (PNG, JPEG or WEBP) with all three marks."""
    import c2pa

    fmt = fmt.upper().replace("JPG", "JPEG")
    data = encode(image, fmt, **options)
    with _lock:
        builder = c2pa.Builder(_manifest(title))
        out = io.BytesIO()
        builder.sign(_signer(Path(data_dir)), MIME_TYPES[fmt], io.BytesIO(data), out)
    return out.getvalue()


def save_marked(image: Image.Image, path: Path, data_dir: Path, **options) -> Path:
    """Write `image` to `path` (its format from the suffix; PNG when unknown) with all three marks."""
    fmt = SUFFIX_FORMATS.get(Path(path).suffix.lower(), "PNG")
    Path(path).write_bytes(mark(image, fmt, data_dir, Path(path).name, **options))
    return Path(path)


@dataclass(frozen=True)
class Provenance:
    xmp: bool  # IPTC's trainedAlgorithmicMedia in the file's XMP
    c2pa: str | None  # the manifest's validation state (Valid, Trusted, Invalid), None when there is none
    c2pa_ai: bool  # the manifest says the picture was created by a trained algorithm
    watermark: float  # the watermark's z-score
    watermark_found: bool

    def lines(self) -> list[str]:
        return [
            f"XMP digital source type trainedAlgorithmicMedia: {'found' if self.xmp else 'not found'}",
            "C2PA manifest: " + ("not found" if self.c2pa is None else
                                 f"{self.c2pa.lower()}, {'says' if self.c2pa_ai else 'does not say'} made by AI"),
            f"Invisible watermark: {'found' if self.watermark_found else 'not found'} (score {self.watermark:.1f})",
        ]


def _manifest_state(data: bytes, mime: str) -> tuple[str | None, bool]:
    import c2pa

    try:
        report = json.loads(c2pa.Reader(mime, io.BytesIO(data)).json())
    except Exception:  # noqa: BLE001 - no manifest, or one that cannot be read: both are "none found" here
        return None, False
    active = report.get("manifests", {}).get(report.get("active_manifest") or "", {})
    actions = [action for assertion in active.get("assertions", []) if assertion.get("label", "").startswith(
        "c2pa.actions") for action in assertion.get("data", {}).get("actions", [])]
    return report.get("validation_state") or "Invalid", any(a.get("digitalSourceType") == SOURCE_TYPE for a in actions)


def check(data: bytes) -> Provenance:
    """Which of the three marks a picture file (its bytes) carries. FaceChainError when it is no picture."""
    from engine.errors import FaceChainError
    from engine.provenance.watermark import DETECT_Z, score

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:  # noqa: BLE001 - any decoder failure is "not a picture"
        raise FaceChainError("That file is not a picture this can read (PNG, JPEG or WebP).") from None
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp") or b""
    xmp = xmp.encode() if isinstance(xmp, str) else xmp
    state, says_ai = _manifest_state(data, MIME_TYPES.get(image.format or "", "image/png"))
    z = score(np.asarray(image.convert("RGB")))
    return Provenance(SOURCE_TYPE.encode() in xmp, state, says_ai, z, z >= DETECT_Z)
