"""The face redrawn into a member's photo with their face model (FaceChain's inpaint mode), on the tiny
model and real photos. The tiny model draws noise, so two things are checked apart: the drawing (the
real inpainting pipeline on the base's models, only inside the face's mask, the photo untouched
elsewhere, no seam) and the composition (fusion, ranking and the paste back) fed with drawings that
have a face. The sheet tests/artifacts/redraw_sheet.png (photo | classical | redrawn by the tiny model
| composed from a drawing with a face) is for people to look at."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.cli import main
from engine.config import load_settings
from engine.errors import FaceChainError
from engine.generation.generate import Candidate, PortraitGenerator
from engine.generation.portrait import enrolled_face
from engine.generation.redraw import (
    REDRAW_CANDIDATES,
    compose,
    draw_region,
    face_mask,
    face_region,
    paste_back,
    paste_weight,
    redraw_face,
)
from engine.generation.swap import photo_faces, swap_face_on
from engine.models.base_model import load_base_pipeline
from engine.postprocess.rank import similarity
from engine.preprocess.enroll import enroll_user
from engine.store import Store
from engine.training.train import train_user
from tests.conftest import image_array, photo

OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]
ARTIFACTS = Path(__file__).parent / "artifacts"
PHOTOS = ["biden/biden1.jpg", "rose_leslie/rose2.jpg"]


@pytest.fixture(scope="module")
def member(tiny_model, analyzer, tmp_path_factory):
    settings = load_settings(_env_file=None, data_dir=tmp_path_factory.mktemp("redraw") / "data", device="cpu",
                             base_model=str(tiny_model), vae="", train_resolution=64, portrait_size=64)
    store = Store(settings.data_dir)
    enroll_user(store, analyzer, settings, "obama", [photo(p) for p in OBAMA], subject="man")
    base = load_base_pipeline(settings)
    model = train_user(store, base, settings, "obama", steps=2)
    yield settings, store, base, model
    store.close()


def test_the_redrawn_region_changes_inside_the_mask_only_and_leaves_no_seam(member, analyzer, monkeypatch):
    from engine.generation import redraw

    settings, store, base, model = member
    monkeypatch.setattr(redraw, "or_pasted", lambda *args: args[-1])  # the drawings kept, though noise
    generator = PortraitGenerator(base)
    image, faces = photo_faces(analyzer, settings, photo("biden/biden1.jpg"))
    results = redraw_face(generator, analyzer, settings, enrolled_face(store, analyzer, "obama"), image, faces[0],
                          model.path, "a man", seed=11)
    assert len(results) == REDRAW_CANDIDATES and sorted(r.seed for r in results) == [11, 12, 13, 14]
    assert str(model.path) in generator.loaded_adapters  # drawn with the member's face model
    inpaint = generator._derived["StableDiffusionInpaintPipeline"]
    assert inpaint.unet is base.pipeline.unet and inpaint.vae is base.pipeline.vae  # no second copy

    region = face_region(faces[0], image.shape)
    soft = paste_weight(faces[0], region)
    hard = face_mask(faces[0], region, region.side, feathered=False)
    for result in results:
        drawn = np.asarray(result.image)
        assert drawn.shape == image.shape
        changed = np.any(drawn != image, axis=2)
        outside = np.ones(image.shape[:2], bool)
        outside[region.top:region.top + region.side, region.left:region.left + region.side] = soft == 0
        assert not changed[outside].any()  # every pixel outside the mask is the photo's own
        assert changed[region.top:region.top + region.side, region.left:region.left + region.side][soft > 0.5].mean() > 0.5
        # No seam: along the hard mask's edge the result is within a few levels of the photo, though the
        # tiny model's noise there differs from the photo by up to 255 (the worst case of a seam).
        edge = (hard > 0) & (cv_erode(hard) == 0)
        step = np.abs(region.of(drawn).astype(int) - region.of(image).astype(int)).max(axis=2)[edge]
        assert step.max() <= 4 and step.mean() < 1


def cv_erode(mask: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.erode(mask, np.ones((3, 3), np.uint8))


def test_composition_fuses_ranks_and_the_result_reads_as_the_member(member, analyzer):
    """Fed drawings with a face (the region as it is, as a model that kept the photo would draw it, and
    the same a little darker), the composition puts the member's face on and ranks by likeness."""
    settings, store, _, _ = member
    enrolled = enrolled_face(store, analyzer, "obama")
    image, faces = photo_faces(analyzer, settings, photo("biden/biden1.jpg"))
    region = face_region(faces[0], image.shape)
    crop = Image.fromarray(np.ascontiguousarray(region.of(image))).resize((256, 256))
    darker = Image.fromarray((np.asarray(crop) * 0.8).astype(np.uint8))
    results = compose(analyzer, settings, enrolled, image, faces[0], region, [Candidate(crop, 1), Candidate(darker, 2)])
    assert len(results) == 2 and results[0].similarity >= results[1].similarity > 0
    result = np.asarray(results[0].image)
    found = analyzer.detect(result)
    nearest = min(found, key=lambda f: abs(f.box[0] - faces[0].box[0]))
    as_member = similarity(analyzer, analyzer.embed(result, nearest), enrolled.embeddings)
    biden = analyzer.embed(image_array("biden/biden2.jpg"), analyzer.detect(image_array("biden/biden2.jpg"))[0])
    as_biden = similarity(analyzer, analyzer.embed(result, nearest), [biden])
    assert as_member > as_biden  # the face on his photo is the member's now
    write_sheet(member, analyzer)


def test_redrawings_that_read_less_like_the_member_than_the_paste_give_way_to_it(member, analyzer):
    """The tiny model's redrawings are noise (no face reads as the member): the result is the classical paste,
    marked so, with the paste's likeness; drawings that read as well as the paste are kept."""
    from engine.generation.redraw import PASTED_NOTICE, or_pasted, ranked_drawings

    settings, store, base, model = member
    enrolled = enrolled_face(store, analyzer, "obama")
    image, faces = photo_faces(analyzer, settings, photo("biden/biden1.jpg"))
    [result] = redraw_face(PortraitGenerator(base), analyzer, settings, enrolled, image, faces[0], model.path, "a man",
                           seed=11)
    region = face_region(faces[0], image.shape)
    as_it_is = Candidate(Image.fromarray(np.ascontiguousarray(region.of(image))), 11)
    [paste] = compose(analyzer, settings, enrolled, image, faces[0], region, [as_it_is])
    assert result.pasted == (0,) and result.similarity == paste.similarity > 0
    assert np.array_equal(np.asarray(result.image), np.asarray(paste.image))
    assert "selfie" in PASTED_NOTICE and "model" not in PASTED_NOTICE.split("redrawing")[1]

    crop = as_it_is.image.resize((256, 256))  # as a model that kept the photo would draw it: it reads as well
    drawings = ranked_drawings(analyzer, settings, enrolled, [Candidate(crop, 1), Candidate(crop, 2)])
    assert or_pasted(analyzer, settings, enrolled, image, region, drawings) == drawings


def test_paste_back_keeps_the_photo_exactly_where_the_mask_is_zero():
    image = np.random.default_rng(0).integers(0, 256, (120, 100, 3), dtype=np.uint8)
    from engine.faces import Face

    face = Face(box=(30, 40, 40, 40), score=1.0, landmarks=np.zeros((5, 2)), left_eye=np.zeros(2),
                right_eye=np.zeros(2))
    region = face_region(face, image.shape)
    assert region.side <= 100 and 0 <= region.left and region.left + region.side <= 100
    drawn = np.zeros((64, 64, 3), np.uint8)
    weight = paste_weight(face, region)
    result = paste_back(image, region, drawn, weight)
    assert np.array_equal(result[:region.top], image[:region.top])
    assert (result[region.top:region.top + region.side, region.left:region.left + region.side][weight > 0.99] <= 3).all()  # the drawing (black) there


def write_sheet(member, analyzer) -> None:
    settings, store, base, model = member
    enrolled = enrolled_face(store, analyzer, "obama")
    generator = PortraitGenerator(base)
    rows = []
    for name in PHOTOS:
        image, faces = photo_faces(analyzer, settings, photo(name))
        classical = swap_face_on(analyzer, settings, enrolled, photo(name)).image
        region = face_region(faces[0], image.shape)
        noise = draw_region(generator, image, faces[0], region, 64, model.path, "a man", [3])
        tiny = compose(analyzer, settings, enrolled, image, faces[0], region, noise)[0]
        crop = Image.fromarray(np.ascontiguousarray(region.of(image))).resize((256, 256))
        composed = compose(analyzer, settings, enrolled, image, faces[0], region, [Candidate(crop, 1)])[0]
        # Zoomed to the redrawn square (a little beyond it), where the difference is.
        margin = region.side // 6
        view = (slice(max(0, region.top - margin), region.top + region.side + margin),
                slice(max(0, region.left - margin), region.left + region.side + margin))
        rows.append([np.ascontiguousarray(picture[view]) for picture in
                     (image, classical, np.asarray(tiny.image), np.asarray(composed.image))])
    tile = 256
    sheet = Image.new("RGB", (tile * 4, tile * len(rows) + 20), "white")
    draw = ImageDraw.Draw(sheet)
    for column, label in enumerate(["photo", "classical paste", "redrawn (tiny model: noise)", "composed from the photo"]):
        draw.text((column * tile + 6, 4), label, fill="black")
    for row, pictures in enumerate(rows):
        for column, picture in enumerate(pictures):
            thumb = Image.fromarray(picture)
            thumb.thumbnail((tile, tile))
            sheet.paste(thumb, (column * tile, 20 + row * tile))
    ARTIFACTS.mkdir(exist_ok=True)
    sheet.save(ARTIFACTS / "redraw_sheet.png")


def test_the_cli_redraws_with_a_face_model_unless_asked_for_the_quick_paste(member, monkeypatch, capsys, tmp_path):
    settings = member[0]
    for name, value in {"DATA_DIR": settings.data_dir, "BASE_MODEL": settings.base_model, "DEVICE": "cpu",
                        "PORTRAIT_SIZE": 64}.items():
        monkeypatch.setenv(f"FACECHAIN_{name}", str(value))
    photo_path = str(Path(__file__).parent / "data" / "group" / "two_people.jpg")
    assert main(["swap", "--user", "obama", photo_path, "--out", str(tmp_path / "x.png")]) == 2
    assert "This photo shows 2 faces: choose one" in capsys.readouterr().err  # asked before any model loads
    from engine.generation import redraw

    or_pasted = redraw.or_pasted
    monkeypatch.setattr(redraw, "or_pasted", lambda *args: args[-1])  # the tiny model's drawings kept, though noise
    assert main(["swap", "--user", "obama", photo_path, "--face", "1", "--seed", "7", "--out", str(tmp_path / "out"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "redrawn" and (result["face"], result["faces_found"]) == (1, 2)
    assert [r["seed"] for r in result["results"]] and sorted(r["seed"] for r in result["results"]) == [7, 8, 9, 10]
    assert result["path"] == str(tmp_path / "out" / "swap-face1.png") == result["results"][0]["path"]
    assert all(Path(r["path"]).is_file() for r in result["results"])
    monkeypatch.setattr(redraw, "or_pasted", or_pasted)  # noise reads less like the member than the paste
    assert main(["swap", "--user", "obama", photo_path, "--face", "1", "--seed", "7", "--out", str(tmp_path / "p.png")]) == 0
    assert "pasted from an enrolled selfie" in capsys.readouterr().out
    assert main(["swap", "--user", "obama", photo_path, "--face", "2", "--fast", "--out", str(tmp_path / "fast.png"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "classical"


def test_a_redraw_whose_face_model_is_gone_says_so(member, tmp_path):
    from types import SimpleNamespace

    from engine.jobs.photo_runners import _redraw_gather

    settings, store, _, _ = member
    upload = settings.data_dir / "tmp" / "enroll-nobody-x" / "photo.upload"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes((Path(__file__).parent / "data" / "biden" / "biden1.jpg").read_bytes())
    job = SimpleNamespace(user_id="nobody", guild_id=None, params={"upload": str(upload), "name": "p.jpg"})
    with pytest.raises(FaceChainError, match="Your face model is gone: enroll again, or ask for the quick version"):
        _redraw_gather(SimpleNamespace(store=store, settings=settings), job)
