"""Preset poses as data: eight or more in `poses/`, both framings, drawn as ControlNet's openpose
skeleton. The sheet tests/artifacts/poses_sheet.png (every preview) is for people to look at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from engine.cli import main
from engine.generation.pose_drawing import COLOURS, LIMBS, preview, skeleton
from engine.generation.poses import POINTS, load_poses

ARTIFACTS = Path(__file__).parent / "artifacts"
PRESETS = {"standing", "sitting", "arms-crossed", "over-the-shoulder", "hand-on-chin", "walking", "leaning", "waving"}


def test_the_presets_cover_facechains_poses_in_both_framings():
    catalogue = load_poses()
    assert catalogue.problems == [] and PRESETS <= set(catalogue.poses)
    assert {pose.framing for pose in catalogue.poses.values()} == {"upper", "full"}
    assert {len(pose.people) for pose in catalogue.poses.values()} == {1, 2}  # portraits, and /facechain together
    for pose in catalogue.poses.values():
        for person in pose.people:
            assert {"nose", "neck", "right_shoulder", "left_shoulder", "right_wrist", "left_wrist"} <= set(person)
            if pose.framing == "full":
                assert {"right_ankle", "left_ankle"} <= set(person) and person["neck"][1] < 0.3
        if pose.partner:  # the one who asks on the left
            assert pose.points["nose"][0] < 0.5 < pose.partner["nose"][0]
    cards = [preview(pose) for pose in catalogue.poses.values()]
    width, height = max(card.width for card in cards), cards[0].height
    sheet = Image.new("RGB", (width * 4, height * ((len(cards) + 3) // 4)))
    for index, card in enumerate(cards):
        sheet.paste(card, ((index % 4) * width, (index // 4) * height))
    ARTIFACTS.mkdir(exist_ok=True)
    sheet.save(ARTIFACTS / "poses_sheet.png")


def test_the_skeleton_is_drawn_in_controlnets_openpose_colours():
    pose = load_poses().get("standing")
    drawn = np.asarray(skeleton(pose))
    assert drawn.shape == (768, 512, 3)
    width, height = 512, 768
    at = {POINTS.index(name): (x * width, y * height) for name, (x, y) in pose.points.items()}
    for index, (start, end) in enumerate(LIMBS[:12]):  # the body's limbs (the face's are short and overlap)
        (x1, y1), (x2, y2) = at[start], at[end]
        x, y = round(0.3 * x1 + 0.7 * x2), round(0.3 * y1 + 0.7 * y2)
        expected = np.array(COLOURS[index]) * 0.6  # limbs are drawn at 60% over black
        assert np.abs(drawn[y, x] - expected).max() <= 40, (POINTS[start], POINTS[end], drawn[y, x])
    for index in (4, 7, 10, 13):  # wrists and ankles: a dot of the point's own colour
        x, y = (round(v) for v in at[index])
        assert tuple(drawn[y, x]) == COLOURS[index]
    assert drawn[5, 5].tolist() == [0, 0, 0]  # ControlNet's black background
    assert skeleton(pose, (256, 384)).size == (256, 384)


def test_a_broken_pose_file_is_reported_and_the_others_load(tmp_path):
    good = (Path(load_poses().get("waving").file)).read_text()
    (tmp_path / "waving.toml").write_text(good)
    (tmp_path / "outside.toml").write_text(good.replace("left_wrist = [0.85, 0.2]", "left_wrist = [1.4, 0.2]"))
    (tmp_path / "headless.toml").write_text(good.replace("neck = [0.5, 0.43]\n", ""))
    (tmp_path / "typo.toml").write_text(good.replace("left_wrist", "left_wirst"))
    catalogue = load_poses(tmp_path)
    assert list(catalogue.poses) == ["waving"]
    problems = "\n".join(catalogue.problems)
    assert "outside.toml: points outside the picture" in problems and "left_wrist" in problems
    assert "headless.toml: a pose needs at least the neck" in problems
    assert "typo.toml" in problems


def test_poses_list_and_show_from_the_cli(tmp_path, capsys):
    assert main(["poses", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert PRESETS <= {pose["id"] for pose in listed} and all("framing" in pose for pose in listed)
    out = tmp_path / "waving.png"
    assert main(["poses", "show", "waving", "--out", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["framing"] == "upper" and shown["points"]["left_wrist"] == [0.85, 0.2]
    assert Image.open(out).size == (512, 768) and Path(shown["preview"]).is_file()
    assert main(["poses", "show", "moonwalk"]) == 2
    assert "Unknown pose 'moonwalk': one of" in capsys.readouterr().err
