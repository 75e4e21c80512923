import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.preprocess import Reason, UploadedPhoto, preprocess_photos
from engine.preprocess.align import rotate
from engine.preprocess.quality import yaw_ratio
from engine.preprocess.trigger import caption, subject_from_attributes, trigger_for_subject
from tests.conftest import encode, image_array, photo
from tests.make_bad_corpus import build_corpus

OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]


def run(analyzer, settings, photos, **known):
    return preprocess_photos(photos, analyzer, settings, **known)


def reasons(result) -> dict[str, str]:
    return {rejected.name: rejected.reason.value for rejected in result.rejected}


def test_a_good_set_is_accepted_as_aligned_512_crops(analyzer, settings):
    result = run(analyzer, settings, [photo(p) for p in OBAMA])
    assert result.rejected == []
    assert [accepted.name for accepted in result.accepted] == OBAMA
    for accepted in result.accepted:
        assert accepted.crop.shape == (512, 512, 3) and accepted.crop.dtype == np.uint8
        # The crop is eye-level: detecting again finds one face with level eyes near the centre.
        faces = analyzer.detect(accepted.crop)
        assert len(faces) == 1
        dx, dy = faces[0].right_eye - faces[0].left_eye
        assert abs(dy) < 0.08 * dx
        assert 150 < (faces[0].left_eye[0] + faces[0].right_eye[0]) / 2 < 362
        assert 0 < accepted.quality.score <= 1
        assert accepted.embedding.shape == (128,)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_photos_are_turned_upright(analyzer, settings, degrees):
    turned = rotate(image_array("obama/obama1.jpg"), degrees)
    result = run(analyzer, settings, [UploadedPhoto("turned.jpg", encode(turned))])
    assert reasons(result) == {}
    # The search turns the photo back: the rotation it applied undoes ours.
    assert (result.accepted[0].rotation + degrees) % 360 == 0


def test_the_group_photo_is_rejected_as_ambiguous(analyzer, settings):
    result = run(analyzer, settings, [photo("group/two_people.jpg")])
    assert reasons(result) == {"group/two_people.jpg": "multiple_faces"}
    assert "2 faces" in result.rejected[0].detail
    assert result.rejected[0].advice == "more than one face here: crop to just you"


def test_a_dominant_face_with_a_small_one_in_the_background_is_kept(analyzer, settings):
    # Paste a small copy of biden's face into a corner of obama1: obama is > 4x larger, so he is the subject.
    base = image_array("obama/obama1.jpg").copy()
    small = cv2.resize(image_array("biden/biden2.jpg")[250:800, 400:920], (130, 138))
    base[950:1088, 20:150] = small
    assert len(analyzer.detect(base)) == 2
    result = run(analyzer, settings, [UploadedPhoto("crowd.jpg", encode(base))])
    assert reasons(result) == {}


def test_a_stranger_in_the_set_is_rejected_as_different_person(analyzer, settings):
    result = run(analyzer, settings, [photo(p) for p in [*OBAMA, "biden/biden1.jpg"]])
    assert reasons(result) == {"biden/biden1.jpg": "different_person"}
    assert len(result.accepted) == 3


def test_with_no_majority_nobody_is_accepted(analyzer, settings):
    result = run(analyzer, settings, [photo("obama/obama1.jpg"), photo("rose_leslie/rose1.jpg")])
    assert result.accepted == []
    assert set(reasons(result).values()) == {"different_person"}
    assert "no single person" in result.rejected[0].detail


def test_new_photos_must_match_the_enrolled_ones(analyzer, settings):
    enrolled = run(analyzer, settings, [photo("biden/biden1.jpg")]).accepted[0]
    result = run(analyzer, settings, [photo("biden/biden2.jpg"), photo("obama/obama1.jpg")],
                 known_embeddings=[enrolled.embedding])
    assert reasons(result) == {"obama/obama1.jpg": "different_person"}


def test_duplicates_same_bytes_known_bytes_and_resized_copies(analyzer, settings):
    first = photo("obama/obama1.jpg")
    result = run(analyzer, settings, [first, photo("obama/obama1.jpg"), photo("obama/obama4_small.jpg"), photo("obama/obama2.jpg")])
    assert [a.name for a in result.accepted] == ["obama/obama1.jpg", "obama/obama2.jpg"]
    assert [(r.reason, r.detail) for r in result.rejected] == [
        (Reason.DUPLICATE, "the same file appears twice in this upload"),
        (Reason.DUPLICATE, "a copy of obama/obama1.jpg"),  # obama4_small is obama1 resized
    ]
    again = run(analyzer, settings, [first], known_hashes={first.sha256})
    assert again.rejected[0].detail == "already enrolled"


@pytest.mark.parametrize("name, expected", [(n, e) for n, (_, e) in build_corpus().items()])
def test_every_bad_file_kind_gets_its_reason(analyzer, settings, bad_corpus, name, expected):
    result = run(analyzer, settings, [UploadedPhoto(name, bad_corpus[name][0])])
    if expected is None:
        assert reasons(result) == {}, result.rejected
        assert result.accepted[0].crop.shape == (512, 512, 3)
    else:
        assert reasons(result) == {name: expected}
        assert result.rejected[0].detail and result.rejected[0].advice


@pytest.fixture(scope="module")
def bad_corpus():
    return build_corpus()


def test_a_set_where_every_photo_is_bad_is_reported_not_raised(analyzer, settings, bad_corpus):
    names = ["zero_bytes.jpg", "animated.gif", "one_pixel.png", "truncated.png"]
    result = run(analyzer, settings, [UploadedPhoto(n, bad_corpus[n][0]) for n in names])
    assert result.accepted == []
    assert [r.name for r in result.rejected] == names  # reported in upload order


def test_quality_floors_reject_with_the_measured_value(analyzer, settings):
    face = image_array("obama/obama1.jpg")
    blurred = cv2.GaussianBlur(face, (0, 0), 4)
    dark = (face * 0.12).astype(np.uint8)
    small = cv2.resize(face, (227, 182), interpolation=cv2.INTER_AREA)  # face ~49 px wide
    result = run(analyzer, settings, [
        UploadedPhoto("blurred.jpg", encode(blurred)), UploadedPhoto("dark.jpg", encode(dark)),
        UploadedPhoto("small.jpg", encode(small)),
    ])
    assert reasons(result) == {"blurred.jpg": "blurry", "dark.jpg": "bad_exposure", "small.jpg": "face_too_small"}
    details = {r.name: r.detail for r in result.rejected}
    assert "below the minimum of 20" in details["blurred.jpg"]
    assert "outside 40-225" in details["dark.jpg"]
    assert "at least 80 px needed" in details["small.jpg"]


def test_a_turned_face_is_rejected_as_not_frontal(analyzer, settings):
    strict = settings.model_copy(update={"max_yaw": 0.2})
    result = run(analyzer, strict, [photo("obama/obama2.jpg")])  # yaw ~0.39
    assert reasons(result) == {"obama/obama2.jpg": "not_frontal"}


def test_yaw_is_zero_for_a_symmetric_face_and_grows_when_the_nose_moves():
    points = np.zeros((68, 2), np.float32)
    points[0], points[16], points[30] = (0, 50), (100, 50), (50, 60)
    assert yaw_ratio(points) == pytest.approx(0)
    points[30] = (80, 60)
    assert yaw_ratio(points) > 0.5


def test_iphone_heic_and_avif_photos_are_read_with_the_same_guards(analyzer, settings):
    """HEIC (the iPhone camera's default) and AVIF files made from the test photos, with pillow-heif."""
    heic, avif = photo("formats/obama1.heic"), photo("formats/obama3.avif")
    assert heic.data[4:12] == b"ftypheic" and avif.data[4:12] == b"ftypavif"
    result = run(analyzer, settings, [heic, avif, photo("obama/obama2.jpg")])
    assert reasons(result) == {} and len(result.accepted) == 3
    tight = settings.model_copy(update={"max_photo_megapixels": 0.1})  # refused from the header
    assert reasons(run(analyzer, tight, [heic])) == {"formats/obama1.heic": "too_large"}
    truncated = UploadedPhoto("cut.heic", heic.data[: len(heic.data) // 3])
    assert reasons(run(analyzer, settings, [truncated])) == {"cut.heic": "unreadable"}


def test_too_many_megabytes_are_refused_before_decoding(analyzer, settings):
    tight = settings.model_copy(update={"max_upload_mb": 0.1})
    result = run(analyzer, tight, [photo("obama/obama1.jpg")])  # 280 kB
    assert reasons(result) == {"obama/obama1.jpg": "too_large"}


def test_an_unexpected_error_costs_one_photo_not_the_set(analyzer, settings, monkeypatch, caplog):
    real_detect = analyzer.detect

    def flaky(image):
        if image.shape[0] == 2333:  # obama3
            raise RuntimeError("model exploded")
        return real_detect(image)

    monkeypatch.setattr(analyzer, "detect", flaky)
    result = run(analyzer, settings, [photo(p) for p in OBAMA])
    assert reasons(result) == {"obama/obama3.jpg": "unreadable"}
    assert len(result.accepted) == 2
    assert "model exploded" in caplog.text


def test_trigger_phrases_follow_facechain():
    assert trigger_for_subject("woman") == "a beautiful woman"
    assert caption(trigger_for_subject("man")) == "<fcsks>, a handsome man"
    # A face engine that reads gender and age only suggests one of the member's choices.
    assert subject_from_attributes(["female", "female"], [8, 9]) == "girl"
    assert subject_from_attributes(["male", "male", "female"], [61, 64, 60]) == "man"
    assert subject_from_attributes(["female"], [30]) == "woman"
    assert subject_from_attributes([None], [None]) is None


def test_the_whole_bad_corpus_in_one_set_stays_within_bounded_memory(tmp_path):
    """Every hostile file at once (bomb, 48-megapixel photo, ...) in a fresh process: peak RSS is
    measured by the kernel (VmHWM), so nothing the test does can hide an allocation."""
    import subprocess
    import sys

    script = (
        "import json\n"
        "from engine.memory import peak_rss_mb\n"
        "from engine.config import load_settings\n"
        "from engine.faces import get_analyzer\n"
        "from engine.preprocess import UploadedPhoto, preprocess_photos\n"
        "from tests.make_bad_corpus import build_corpus\n"
        "settings = load_settings(_env_file=None)\n"
        "photos = [UploadedPhoto(name, data) for name, (data, _) in build_corpus().items()]\n"
        "before = peak_rss_mb()\n"
        "result = preprocess_photos(photos, get_analyzer(settings), settings)\n"
        "peak = peak_rss_mb()\n"
        "print(json.dumps({'accepted': len(result.accepted), 'rejected': len(result.rejected),"
        " 'before_mb': before, 'peak_mb': peak}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["accepted"] + figures["rejected"] == len(build_corpus())
    assert figures["peak_mb"] < 1500, figures  # a decoded 100000x100000 bomb alone would need 30 GB
