"""Fusion with turned selfies: the pose-closest enrolled selfie is the source, a turned source's far
cheek fades to the portrait's own face, and a fusion that breaks the portrait's light falls back.
The sheet tests/artifacts/fusion_turned_sheet.png (source | template | fused) is for people to look at."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.faces.pose import head_pose
from engine.postprocess import fusers
from engine.postprocess.fusers import SEAM_LIMIT, EnrolledFace, classical_fuser
from engine.postprocess.fusion import fuse_face, seam_sides
from tests.conftest import image_array

ARTIFACTS = Path(__file__).parent / "artifacts"
FRONTAL, THREE_QUARTER, SLIGHTLY_TURNED = "obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"
FRONTAL_TEMPLATES = ["biden/biden2.jpg", "rose_leslie/rose2.jpg"]


def face_of(analyzer, image):
    return analyzer.detect(image)[0]


@pytest.fixture(scope="module")
def selfies(analyzer):
    return {name: (image_array(name), face_of(analyzer, image_array(name)))
            for name in (FRONTAL, THREE_QUARTER, SLIGHTLY_TURNED)}


@pytest.fixture(scope="module")
def mixed(selfies, analyzer) -> EnrolledFace:
    """A member who enrolled a frontal, a three-quarter and a slightly turned selfie (frontal best)."""
    embeddings = [analyzer.embed(image, face) for image, face in selfies.values()]
    (image, face), *others = [selfies[FRONTAL], selfies[THREE_QUARTER], selfies[SLIGHTLY_TURNED]]
    return EnrolledFace(image, face, embeddings, others)


def templates(analyzer) -> dict[str, tuple[np.ndarray, object]]:
    """Frontal portraits, a turned one, and the turned one mirrored (turned the other way)."""
    found = {name: image_array(name) for name in [*FRONTAL_TEMPLATES, "biden/biden1.jpg", "rose_leslie/rose1.jpg"]}
    found["biden1 mirrored"] = np.ascontiguousarray(found["biden/biden1.jpg"][:, ::-1])
    return {name: (image, face_of(analyzer, image)) for name, image in found.items()}


def distance(analyzer, image, enrolled: EnrolledFace) -> float:
    vector = analyzer.embed(image, face_of(analyzer, image))
    return float(np.mean([analyzer.distance(vector, e) for e in enrolled.embeddings]))


def test_the_fusion_source_is_the_enrolled_selfie_closest_in_pose(analyzer, mixed, selfies):
    assert head_pose(selfies[THREE_QUARTER][1]).yaw < -0.3 < 0.1 > abs(head_pose(selfies[FRONTAL][1]).yaw)
    shown = templates(analyzer)
    chosen = {name: mixed.source_for(face)[1] for name, (_, face) in shown.items()}
    assert chosen["biden/biden2.jpg"] is selfies[FRONTAL][1] and chosen["rose_leslie/rose2.jpg"] is \
        selfies[FRONTAL][1]
    assert chosen["biden/biden1.jpg"] is selfies[SLIGHTLY_TURNED][1]  # turned the same way
    assert chosen["biden1 mirrored"] is selfies[THREE_QUARTER][1]  # turned the other way


def test_turned_selfies_leave_no_smear_and_mixed_enrollments_keep_the_likeness(analyzer, mixed, selfies,
                                                                               monkeypatch):
    shown = templates(analyzer)
    rows = []
    # A three-quarter selfie forced onto frontal portraits: each cheek's edge keeps the portrait's light.
    for name in FRONTAL_TEMPLATES:
        image, face = shown[name]
        source = selfies[THREE_QUARTER]
        fused = fuse_face(*source, image, face)
        assert max(seam_sides(fused, image, face)) < SEAM_LIMIT, name
        rows.append((source[0], source[1], image, face, fused))
    # A frontal selfie onto the turned portrait and its mirror.
    for name in ("biden/biden1.jpg", "biden1 mirrored"):
        image, face = shown[name]
        fused = fuse_face(*selfies[FRONTAL], image, face)
        assert max(seam_sides(fused, image, face)) < SEAM_LIMIT, name
        rows.append((*selfies[FRONTAL], image, face, fused))
    # The mixed enrollment as the product fuses it (pose-chosen source, default strength): no smear, and
    # an independent dlib distance to the member below 0.6.
    for name, (image, face) in shown.items():
        fused = classical_fuser(mixed, image, face, strength=0.9)
        assert max(seam_sides(fused, image, face)) < SEAM_LIMIT, name
        assert distance(analyzer, fused, mixed) < 0.6 < distance(analyzer, image, mixed), name
        rows.append((*mixed.source_for(face), image, face, fused))
    write_sheet(rows)

    # The guard measures the smear: without the far-side fade, the three-quarter selfie breaks one cheek.
    monkeypatch.setattr("engine.postprocess.fusion.far_side_fade", lambda mask, source, template: mask)
    image, face = shown["biden/biden2.jpg"]
    left, right = seam_sides(fuse_face(*selfies[THREE_QUARTER], image, face), image, face)
    assert left > SEAM_LIMIT > right  # the selfie turns to the image's left: that is its far cheek


def test_a_fusion_that_breaks_the_light_falls_back_to_half_then_to_the_portrait(analyzer, mixed, monkeypatch,
                                                                                caplog):
    image = image_array("biden/biden2.jpg")
    face = face_of(analyzer, image)
    full = classical_fuser(mixed, image, face, strength=0.9)
    half = fuse_face(*mixed.source_for(face), image, face, 0.45)
    full_seam = max(seam_sides(full, image, face))
    half_seam = max(seam_sides(half, image, face))
    assert half_seam < full_seam
    caplog.set_level(logging.INFO, logger="engine.postprocess.fusers")
    monkeypatch.setattr(fusers, "SEAM_LIMIT", (full_seam + half_seam) / 2)
    assert np.array_equal(classical_fuser(mixed, image, face, strength=0.9), half)
    assert "fusion at strength 0.45 instead of 0.90" in caplog.text
    monkeypatch.setattr(fusers, "SEAM_LIMIT", half_seam / 2)
    assert np.array_equal(classical_fuser(mixed, image, face, strength=0.9), image)  # the portrait as drawn
    assert "keeping the portrait as drawn" in caplog.text


def write_sheet(rows) -> None:
    """source | template | fused, each cropped around its face."""
    ARTIFACTS.mkdir(exist_ok=True)
    tile = 256
    sheet = Image.new("RGB", (3 * tile, tile * len(rows)), "white")
    for index, (source, source_face, template, template_face, fused) in enumerate(rows):
        for column, (picture, face) in enumerate(((source, source_face), (template, template_face),
                                                  (fused, template_face))):
            x, y, w, h = face.box
            pad = w // 2
            crop = Image.fromarray(picture).crop((max(0, x - pad), max(0, y - pad), x + w + pad, y + h + pad))
            sheet.paste(crop.resize((tile, tile)), (column * tile, index * tile))
    sheet.save(ARTIFACTS / "fusion_turned_sheet.png")
