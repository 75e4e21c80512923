"""The paper's last preparation steps on real photos: the head segmented onto white, the skin retouched.

The sheet tests/artifacts/head_mask_sheet.png (aligned crop | training crop | skin mask in green) is
for people to look at: hair kept, background gone, no bitten ears or chins."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.config import load_settings
from engine.errors import ModelUnavailable
from engine.models.files import named_models
from engine.models.random_models import make_tiny_face_parser
from engine.preprocess import preprocess_photos
from engine.preprocess.align import align_face, find_face
from engine.preprocess.decode import decode_photo
from engine.preprocess.face_parser import FaceParser, ParsedFace, get_face_parser
from engine.preprocess.head_mask import FaceGeometry, head_mask, landmark_head_mask, paint_white
from engine.preprocess.retouch import retouch_skin
from tests.conftest import DATA, photo

ARTIFACTS = Path(__file__).parent / "artifacts"
PHOTOS = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg", "biden/biden1.jpg", "biden/biden2.jpg",
          "rose_leslie/rose1.jpg", "rose_leslie/rose2.jpg"]


@pytest.fixture(scope="module")
def aligned_crops(analyzer):
    crops = {}
    for name in PHOTOS:
        found = find_face(analyzer, decode_photo((DATA / name).read_bytes(), 40))
        crops[name] = align_face(found.image, found.face, 512)
    return crops


def region(shape, points: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.int32)), 1)
    return mask > 0


def test_head_masks_keep_face_hair_ears_and_chin_and_drop_the_background(aligned_crops):
    rows = []
    for name, aligned in aligned_crops.items():
        mask = landmark_head_mask(aligned.crop, aligned.landmarks, aligned.face_box)
        head = mask.head > 0.5
        points = aligned.landmarks
        geometry = FaceGeometry.from_landmarks(points, aligned.face_box)
        # The whole face, jaw line and chin included: nothing bitten.
        face = region(head.shape, points[:27])
        assert head[face].mean() > 0.98, name
        chin_x, chin_y = points[8].round().astype(int)
        assert head[chin_y - 3:chin_y + 4, chin_x - 3:chin_x + 4].all(), name
        for ear_side in (0, 16):  # where the jaw meets the ears
            x, y = points[ear_side].round().astype(int)
            assert head[y - 2:y + 3, x - 2:x + 3].mean() > 0.8, (name, ear_side)
        # Hair (or the top of the head): the band just above the brows' middle.
        top = round(geometry.brow_y - 0.55 * geometry.face_height)
        assert head[max(top, 0):round(geometry.brow_y), round(geometry.centre_x) - 10:round(geometry.centre_x) + 10
                    ].mean() > 0.95, name
        # Background gone: the top corners and the clothes at the bottom corners.
        for corner in (head[:64, :64], head[:64, -64:], head[-64:, :64], head[-64:, -64:]):
            assert corner.mean() < 0.02, name
        assert 0.25 < head.mean() < 0.65, name
        skin_overlay = aligned.crop.copy()
        skin_overlay[..., 1] = np.clip(skin_overlay[..., 1] + 90 * mask.skin, 0, 255).astype(np.uint8)
        rows.append(np.concatenate([aligned.crop, paint_white(aligned.crop, mask.head), skin_overlay], axis=1))
    ARTIFACTS.mkdir(exist_ok=True)
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] // 2, sheet.shape[0] // 2)).save(ARTIFACTS / "head_mask_sheet.png")


def test_the_skin_mask_leaves_out_eyes_brows_lips_and_hair(aligned_crops):
    for name, aligned in aligned_crops.items():
        skin = landmark_head_mask(aligned.crop, aligned.landmarks, aligned.face_box).skin
        points = aligned.landmarks
        for part in (slice(36, 42), slice(42, 48), slice(17, 22), slice(22, 27), slice(48, 60)):
            assert skin[region(skin.shape, points[part])].max() < 0.05, (name, part)
        cheeks = region(skin.shape, np.concatenate([points[1:4], points[[31, 48]]]))
        assert skin[cheeks].mean() > 0.6, name


def cheek_and_eye_boxes(points: np.ndarray) -> tuple[list[tuple[int, int, int, int]], tuple[int, int, int, int]]:
    points = points.round().astype(int)
    top, bottom = points[41, 1] + 10, points[48, 1] - 5
    cheeks = [(points[1, 0] + 8, top, points[31, 0] - 10, bottom), (points[35, 0] + 10, top, points[15, 0] - 8, bottom)]
    eyes = (points[36, 0] - 5, points[37, 1] - 12, points[45, 0] + 5, points[40, 1] + 8)
    return cheeks, eyes


def high_frequency_energy(image: np.ndarray, box: tuple[int, int, int, int], within: np.ndarray | None = None) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    detail = (grey - cv2.GaussianBlur(grey, (0, 0), 2.0)) ** 2
    x0, y0, x1, y1 = box
    window = detail[y0:y1, x0:x1]
    return float(window[within[y0:y1, x0:x1]].mean() if within is not None else window.mean())


def test_retouching_smooths_the_cheeks_keeps_the_eyes_and_the_likeness(analyzer, aligned_crops):
    default = load_settings(_env_file=None).skin_retouch
    assert 0 < default <= 1  # on by default, as in FaceChain
    for name, aligned in aligned_crops.items():
        skin = landmark_head_mask(aligned.crop, aligned.landmarks, aligned.face_box).skin
        retouched = retouch_skin(aligned.crop, skin, default)
        assert np.array_equal(retouch_skin(aligned.crop, skin, 0.0), aligned.crop)  # 0 = off
        cheeks, eyes = cheek_and_eye_boxes(aligned.landmarks)
        on_skin = skin > 0.9
        before = sum(high_frequency_energy(aligned.crop, box, on_skin) for box in cheeks)
        after = sum(high_frequency_energy(retouched, box, on_skin) for box in cheeks)
        assert after <= 0.7 * before, (name, after / before)  # blemishes and noise down by 30% or more
        kept = high_frequency_energy(retouched, eyes) / high_frequency_energy(aligned.crop, eyes)
        assert kept >= 0.9, (name, kept)  # the eyes, lashes and brows as sharp as before
        plain, smooth = (analyzer.embed(image, analyzer.detect(image)[0]) for image in (aligned.crop, retouched))
        assert analyzer.distance(plain, smooth) < 0.2, name  # the same person to the face engine
        outside = skin == 0
        assert np.array_equal(retouched[outside], aligned.crop[outside])  # nothing off the skin changed


def test_enrolled_crops_are_heads_on_white_unless_turned_off(analyzer, settings):
    names = ["obama/obama1.jpg", "obama/obama2.jpg"]
    painted = preprocess_photos([photo(p) for p in names], analyzer, settings)
    kept = preprocess_photos([photo(p) for p in names], analyzer,
                             load_settings(_env_file=None, white_background=False, skin_retouch=0))
    for white, plain in zip(painted.accepted, kept.accepted):
        corners = np.concatenate([white.crop[:40, :40].reshape(-1, 3), white.crop[:40, -40:].reshape(-1, 3)])
        assert (corners == 255).all()
        assert (plain.crop[:40, :40] != 255).any()  # the photo's own background
        assert np.array_equal(white.embedding, plain.embedding)  # identity comes from the photo itself
        assert len(analyzer.detect(white.crop)) == 1  # still a clear face to every later step
    again = preprocess_photos([photo(names[0])], analyzer, settings)
    assert np.array_equal(again.accepted[0].crop, painted.accepted[0].crop)  # the same photo, the same crop


def test_a_face_parser_in_the_real_format_loads_from_its_setting_and_is_listed(tmp_path, settings):
    folder = make_tiny_face_parser(tmp_path / "face-parsing")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json"}
    configured = load_settings(_env_file=None, face_parser=str(folder))
    parser = get_face_parser(configured)
    assert isinstance(parser, FaceParser)
    parsed = parser.parse(np.full((512, 512, 3), 128, np.uint8))
    assert parsed.head.shape == (512, 512) and parsed.head.dtype == bool
    [listed] = [m for m in named_models(configured, include_styles=False) if m.setting == "FACECHAIN_FACE_PARSER"]
    assert listed.reference == str(folder) and listed.kind == "component"
    assert get_face_parser(load_settings(_env_file=None, face_parser="")) is None


def test_the_parsers_classes_decide_head_and_skin(tmp_path):
    crop = np.full((64, 64, 3), 128, np.uint8)
    hair = FaceParser(make_tiny_face_parser(tmp_path / "hair", sees_only="hair")).parse(crop)
    assert hair.head.all() and not hair.skin.any()
    skin = FaceParser(make_tiny_face_parser(tmp_path / "skin", sees_only="skin")).parse(crop)
    assert skin.head.all() and skin.skin.all()
    cloth = FaceParser(make_tiny_face_parser(tmp_path / "cloth", sees_only="cloth")).parse(crop)
    assert not cloth.head.any()


class FixedParser:
    def __init__(self, parsed: ParsedFace) -> None:
        self.parsed = parsed

    def parse(self, crop: np.ndarray) -> ParsedFace:
        return self.parsed


def test_a_plausible_parser_mask_is_used_and_an_implausible_one_falls_back(aligned_crops, caplog):
    aligned = aligned_crops["obama/obama1.jpg"]
    fallback = landmark_head_mask(aligned.crop, aligned.landmarks, aligned.face_box)
    believable = ParsedFace(head=fallback.head > 0.5, skin=fallback.skin > 0.5)
    used = head_mask(aligned.crop, aligned.landmarks, aligned.face_box, FixedParser(believable))
    assert used.source == "parser"
    everything = ParsedFace(head=np.ones((512, 512), bool), skin=np.ones((512, 512), bool))
    nothing = ParsedFace(head=np.zeros((512, 512), bool), skin=np.zeros((512, 512), bool))
    with caplog.at_level(logging.WARNING):
        for parsed in (everything, nothing):
            assert head_mask(aligned.crop, aligned.landmarks, aligned.face_box, FixedParser(parsed)).source == \
                "landmarks"
    assert "does not fit the face" in caplog.text


def test_a_parser_that_is_missing_or_broken_never_stops_an_enrollment(tmp_path, analyzer, caplog):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    not_a_parser = make_tiny_face_parser(tmp_path / "other")
    config = (not_a_parser / "config.json").read_text().replace('"hair"', '"fur"')
    (not_a_parser / "config.json").write_text(config)
    with pytest.raises(ModelUnavailable, match="is not a face parser: its classes lack hair"):
        FaceParser(not_a_parser)
    for reference in (str(broken), str(not_a_parser), "someone/face-parsing-not-downloaded"):
        configured = load_settings(_env_file=None, face_parser=reference, data_dir=tmp_path / "data")
        with caplog.at_level(logging.WARNING):
            assert get_face_parser(configured) is None
            result = preprocess_photos([photo("obama/obama1.jpg")], analyzer, configured)
        assert len(result.accepted) == 1 and (result.accepted[0].crop[:20, :20] == 255).all()
    assert "could not be loaded" in caplog.text and "not on this machine" in caplog.text


def test_doctor_says_where_the_face_parser_stands(tmp_path):
    from engine.cli.doctor import check_face_parser, check_models

    missing = load_settings(_env_file=None, face_parser="someone/face-parsing", data_dir=tmp_path / "data")
    [line] = [c for c in check_models(missing) if c.name == "face parser"]
    assert line.status == "warn" and "head masks come from the face's landmarks" in line.detail
    assert line.fix == "run `facechain models pull`" and check_face_parser(missing) is None

    good = load_settings(_env_file=None, face_parser=str(make_tiny_face_parser(tmp_path / "good")))
    assert check_face_parser(good).status == "ok"
    [line] = [c for c in check_models(good) if c.name == "face parser"]
    assert line.status == "ok" and "GB at" in line.detail
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "segformer", "id2label": {"0": "cat"}}')
    check = check_face_parser(load_settings(_env_file=None, face_parser=str(broken)))
    assert check.status == "fail" and "FACECHAIN_FACE_PARSER" in check.fix


def test_five_landmarks_still_give_a_head_mask(aligned_crops):
    """A backend that gives five points (eyes, nose tip, mouth corners) gets a mask from its face box."""
    aligned = aligned_crops["biden/biden1.jpg"]
    points = aligned.landmarks
    five = np.array([points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[30], points[48], points[54]])
    mask = landmark_head_mask(aligned.crop, five, aligned.face_box)
    head = mask.head > 0.5
    assert head[region(head.shape, points[:27])].mean() > 0.95  # the face (by the 68 points) is inside
    for corner in (head[:64, :64], head[:64, -64:], head[-64:, :64], head[-64:, -64:]):
        assert corner.mean() < 0.02
    assert 0.02 < mask.skin.mean() < 0.4
