"""Your face on a photo you bring: the CLI on real photos (a group photo for --face), its errors, and a
sheet (photo | swapped) at tests/artifacts/swap_sheet.png for people to look at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.generation.swap import SeveralFaces, swap_face
from tests.conftest import DATA, photo

ARTIFACTS = Path(__file__).parent / "artifacts"
OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]


@pytest.fixture
def enrolled_user(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(tmp_path / "data"))
    assert main(["enroll", "--user", "u", *(str(DATA / p) for p in OBAMA), "--json"]) == 0
    capsys.readouterr()
    return "u"


def swap(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(["swap", *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 and "--json" in argv else None, captured.err


def test_swap_puts_the_members_face_on_their_photo(enrolled_user, capsys, tmp_path, analyzer):
    rows = []
    for name in ("rose_leslie/rose2.jpg", "biden/biden2.jpg", "formats/obama1.heic"):
        out = tmp_path / f"{Path(name).stem}.png"
        code, result, _ = swap(capsys, "--user", "u", str(DATA / name), "--out", str(out), "--json")
        assert code == 0 and set(result) == {"method", "path", "face", "faces_found", "similarity"}
        assert result["method"] == "classical"  # no face model yet
        assert result["faces_found"] == 1 and result["face"] == 1 and Path(result["path"]).is_file()
        assert result["similarity"] > 0.4  # an independent dlib distance below 0.6 to the member
        rows.append((name, out))
    code, result, _ = swap(capsys, "--user", "u", str(DATA / "group/two_people.jpg"), "--face", "2", "--out",
                           str(tmp_path / "group.png"), "--json")
    assert code == 0 and (result["face"], result["faces_found"]) == (2, 2)
    rows.append(("group/two_people.jpg", tmp_path / "group.png"))
    code, result, _ = swap(capsys, "--user", "u", str(DATA / "biden/biden2.jpg"), "--out", str(tmp_path / "swaps"),
                           "--json")  # no image extension: a folder, with the picture in it
    assert code == 0 and result["path"] == str(tmp_path / "swaps" / "swap-face1.png")
    assert (tmp_path / "swaps").is_dir() and Path(result["path"]).is_file()
    write_sheet(rows)


def test_several_faces_need_a_choice_and_errors_are_one_line(enrolled_user, capsys, tmp_path, store, analyzer,
                                                              settings):
    group = str(DATA / "group/two_people.jpg")
    code, _, err = swap(capsys, "--user", "u", group, "--out", str(tmp_path / "x.png"))
    assert code == 2 and "This photo shows 2 faces: choose one (1 to 2, numbered left to right)" in err
    code, _, err = swap(capsys, "--user", "u", group, "--face", "3", "--out", str(tmp_path / "x.png"))
    assert code == 2 and "There is no face 3 in that photo: it shows 2" in err
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    code, _, err = swap(capsys, "--user", "u", str(empty), "--out", str(tmp_path / "x.png"))
    assert code == 2 and "That photo can't be used: the file is empty" in err and err.count("\n") == 1
    Image.new("RGB", (400, 300), "skyblue").save(tmp_path / "sky.jpg")
    code, _, err = swap(capsys, "--user", "u", str(tmp_path / "sky.jpg"), "--out", str(tmp_path / "y.png"))
    assert code == 2 and "No face was found in that photo" in err
    code, _, err = swap(capsys, "--user", "stranger", str(DATA / "rose_leslie/rose2.jpg"), "--out",
                        str(tmp_path / "x.png"))
    assert code == 2 and "no enrolled selfie" in err
    # The numbered preview the bot shows: one box per face, left to right.
    from engine.store import Store

    with pytest.raises(SeveralFaces) as several:
        swap_face(Store(tmp_path / "data"), analyzer, settings, "u", photo("group/two_people.jpg"))
    preview = Image.open(__import__("io").BytesIO(several.value.preview))
    assert several.value.count == 2 and max(preview.size) <= 1024


def write_sheet(rows) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    tile = 320
    sheet = Image.new("RGB", (2 * tile, tile * len(rows)), "white")
    for index, (name, out) in enumerate(rows):
        for column, picture in enumerate((Image.open(DATA / name), Image.open(out))):
            picture = picture.convert("RGB")
            picture.thumbnail((tile, tile))
            sheet.paste(picture, (column * tile, index * tile))
    sheet.save(ARTIFACTS / "swap_sheet.png")
    assert np.asarray(sheet).std() > 10
