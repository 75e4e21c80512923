"""Every picture the bot makes says it was made by AI: XMP, a signed C2PA manifest read back with the c2pa
library, and an invisible watermark that survives a JPEG resave at quality 85 and a resize to half."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import c2pa
import numpy as np
import pytest
from PIL import Image

from engine.config import get_settings
from engine.generation.portrait import save_portraits
from engine.postprocess import RankedPortrait
from engine.provenance import SOURCE_TYPE, check, mark
from engine.provenance.signing import make_chain
from engine.provenance.watermark import DETECT_Z, score
from tests.conftest import DATA, IDENTITIES

ARTIFACTS = DATA.parent / "artifacts"


PHOTOS = sorted({path for paths in IDENTITIES.values() for path in paths} | {"group/two_people.jpg",
                                                                             "edge/obama_partial_face.jpg"})


def picture(relative: str = "rose_leslie/rose1.jpg", size: int = 512) -> Image.Image:
    image = Image.open(DATA / relative).convert("RGB")
    image.thumbnail((size, size))
    return image


def resaved(data: bytes) -> bytes:
    """What a member might do to a picture: open it, halve it, save it as a JPEG at quality 85."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    buffer = io.BytesIO()
    image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def manifest(data: bytes, mime: str) -> dict:
    report = json.loads(c2pa.Reader(mime, io.BytesIO(data)).json())
    return report | {"active": report["manifests"][report["active_manifest"]]}


@pytest.mark.parametrize("fmt, mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_a_marked_picture_carries_xmp_a_valid_c2pa_manifest_and_the_watermark(fmt, mime, settings):
    data = mark(picture(), fmt, settings.data_dir, "portrait")
    image = Image.open(io.BytesIO(data))
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    assert SOURCE_TYPE in (xmp.decode() if isinstance(xmp, bytes) else xmp)
    assert "FaceChain for Discord" in (xmp.decode() if isinstance(xmp, bytes) else xmp)

    report = manifest(data, mime)  # read and checked by the C2PA library itself
    assert report["validation_state"] == "Valid"  # intact; the bot's own signer is not on a trust list:
    assert {s["code"] for s in report.get("validation_status", [])} <= {"signingCredential.untrusted"}
    actions = [a for assertion in report["active"]["assertions"] if assertion["label"].startswith("c2pa.actions")
               for a in assertion["data"]["actions"]]
    assert actions[0]["action"] == "c2pa.created" and actions[0]["digitalSourceType"] == SOURCE_TYPE

    assert score(np.asarray(image.convert("RGB"))) >= DETECT_Z
    assert (settings.data_dir / "provenance" / "signer.key").stat().st_mode & 0o077 == 0  # the key is the owner's


def test_the_watermark_survives_a_resave_and_a_resize_and_is_absent_from_real_photos(settings):
    for relative in PHOTOS:
        photo = picture(relative)
        plain, marked = np.asarray(photo), mark(photo, "PNG", settings.data_dir)
        assert score(plain) < DETECT_Z / 2, relative  # a camera photo never reads as marked
        assert check(resaved(marked)).watermark_found, relative
        change = np.abs(np.asarray(Image.open(io.BytesIO(marked)).convert("RGB"), np.int16) - plain).mean()
        assert change < 5, relative  # a faint grain, not a visible pattern (tests/artifacts: side by side)
    sheet = np.hstack([np.asarray(picture()), np.asarray(Image.open(io.BytesIO(mark(picture(), "PNG",
                                                                                     settings.data_dir))))])
    ARTIFACTS.mkdir(exist_ok=True)
    Image.fromarray(sheet).save(ARTIFACTS / "watermark_side_by_side.png")


def test_provenance_check_says_what_a_resaved_picture_still_carries(settings, tmp_path):
    marked = tmp_path / "portrait.png"
    marked.write_bytes(mark(picture(), "PNG", settings.data_dir))
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(resaved(marked.read_bytes()))
    plain = tmp_path / "photo.jpg"
    plain.write_bytes((DATA / "obama/obama1.jpg").read_bytes())

    def run(path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine.cli", "provenance", "check", str(path)],
                              capture_output=True, text=True, env={"PATH": "", "FACECHAIN_DATA_DIR": str(tmp_path)})

    full, kept, none = run(marked), run(copy), run(plain)
    assert full.returncode == 0 and "C2PA manifest: valid, says made by AI" in full.stdout
    assert "XMP digital source type trainedAlgorithmicMedia: found" in full.stdout
    assert kept.returncode == 0 and "Invisible watermark: found" in kept.stdout
    assert "C2PA manifest: not found" in kept.stdout  # a resave drops the metadata; the mark in the pixels stays
    assert none.returncode == 1 and "Invisible watermark: not found" in none.stdout
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    assert "not a picture this can read" in run(broken).stderr and "Traceback" not in run(broken).stderr


def test_portraits_are_saved_marked_and_an_owner_can_sign_with_their_own_chain(store, settings, tmp_path, monkeypatch):
    store.touch_user("42")
    ranked = [RankedPortrait(picture(), 7, 0.4)]
    [saved] = save_portraits(store, "42", "studio", ranked, None, job_id=1)
    assert check(saved.path.read_bytes()).c2pa_ai and check(saved.path.read_bytes()).watermark_found

    own = make_chain(tmp_path / "owner")  # an owner's own chain, as a CA they use would issue it
    monkeypatch.setenv("FACECHAIN_PROVENANCE_CERT", str(tmp_path / "owner" / "chain.pem"))
    monkeypatch.setenv("FACECHAIN_PROVENANCE_KEY", str(tmp_path / "owner" / "signer.key"))
    get_settings.cache_clear()
    try:
        data = mark(picture(), "JPEG", settings.data_dir)
    finally:
        get_settings.cache_clear()
    from cryptography import x509

    signer = x509.load_pem_x509_certificates(own.chain_pem)[0]
    report = manifest(data, "image/jpeg")
    assert report["validation_state"] == "Valid"
    assert report["active"]["signature_info"]["cert_serial_number"] == str(signer.serial_number)


def test_the_bot_and_its_worker_starting_at_once_sign_with_one_chain(tmp_path):
    """Both make a chain on first use; one set lands whole, and both read that one."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.provenance.signing import signing_files

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: signing_files(data_dir), range(4)))
    assert len({files.chain_pem for files in made}) == 1 and len({files.key_pem for files in made}) == 1
    assert sorted(p.name for p in data_dir.iterdir()) == ["provenance"]  # no scratch folder left behind
