"""Face fusion and likeness ranking on real photos; the portrait path on the tiny model."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.generation.generate import Candidate
from engine.generation.portrait import UNRANKED_NOTICE, make_portraits
from engine.postprocess import EnrolledFace, fuse_face, rank_candidates
from engine.postprocess.fusion import face_mask
from engine.styles import load_styles
from tests.conftest import DATA, image_array

ARTIFACTS = Path(__file__).parent / "artifacts"
SELFIES = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]
TEMPLATES = ["biden/biden2.jpg", "biden/biden1.jpg", "rose_leslie/rose2.jpg", "rose_leslie/rose1.jpg"]


@pytest.fixture(scope="module")
def enrolled(analyzer) -> EnrolledFace:
    images = [image_array(p) for p in SELFIES]
    faces = [analyzer.detect(image)[0] for image in images]
    return EnrolledFace(images[0], faces[0], [analyzer.embed(i, f) for i, f in zip(images, faces)])


def mean_distance(analyzer, image, enrolled) -> float:
    face = analyzer.detect(image)[0]
    vector = analyzer.embed(image, face)
    return float(np.mean([analyzer.distance(vector, e) for e in enrolled.embeddings]))


def test_fusion_makes_every_template_read_as_the_selfie_person(analyzer, enrolled):
    rows = []
    for template in TEMPLATES:
        image = image_array(template)
        face = analyzer.detect(image)[0]
        fused = fuse_face(enrolled.image, enrolled.face, image, face)
        before, after = mean_distance(analyzer, image, enrolled), mean_distance(analyzer, fused, enrolled)
        assert before > analyzer.threshold > after, (template, before, after)
        # Outside the face nothing moves: hair, background and clothes stay the template's.
        outside = face_mask(image.shape, face) == 0
        assert np.array_equal(fused[outside], image[outside])
        rows.append((image, fused, face))
    write_sheet(rows)


def write_sheet(rows) -> None:
    """template | fused, cropped around the face, for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    tile = 320
    sheet = Image.new("RGB", (2 * tile, tile * len(rows)), "white")
    for index, (template, fused, face) in enumerate(rows):
        x, y, w, h = face.box
        pad = w // 2
        box = (max(0, x - pad), max(0, y - pad), x + w + pad, y + h + pad)
        for column, image in enumerate((template, fused)):
            sheet.paste(Image.fromarray(image).crop(box).resize((tile, tile)), (column * tile, index * tile))
    sheet.save(ARTIFACTS / "fusion_sheet.png")


def test_fusion_keeps_skin_tone_continuous_with_the_neck(analyzer, enrolled):
    image = image_array("rose_leslie/rose2.jpg")
    face = analyzer.detect(image)[0]
    fused = fuse_face(enrolled.image, enrolled.face, image, face)
    mask = face_mask(image.shape, face)
    inner, edge = mask > 0.9, (mask > 0.05) & (mask < 0.5)
    # The fused face takes the template's skin tone, and nothing jumps where the blend fades out.
    assert np.abs(fused[inner].mean(axis=0) - image[inner].mean(axis=0)).max() < 12
    assert np.abs(fused[edge].astype(int) - image[edge].astype(int)).mean() < 12


def test_ranking_filters_unclear_candidates_and_sorts_by_likeness(analyzer, enrolled):
    blank = Image.new("RGB", (256, 256), (128, 128, 128))
    candidates = [Candidate(Image.open(DATA / p).convert("RGB"), seed) for seed, p in enumerate(
        ["group/two_people.jpg", "biden/biden2.jpg", "rose_leslie/rose1.jpg"])] + [Candidate(blank, 9)]
    ranked = rank_candidates(analyzer, candidates, enrolled)
    assert sorted(p.seed for p in ranked) == [1, 2]  # the group photo and the blank are dropped
    assert ranked[0].similarity >= ranked[1].similarity > 1 - analyzer.threshold
    unfused = rank_candidates(analyzer, candidates, enrolled, fuser=None)
    assert all(p.similarity < 1 - analyzer.threshold for p in unfused)  # strangers before fusion


def test_fuse_cli(capsys, tmp_path):
    out = tmp_path / "fused.png"
    assert main(["fuse", "--face", str(DATA / SELFIES[0]), str(DATA / SELFIES[2]), "--template",
                 str(DATA / "biden/biden2.jpg"), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["path"] == str(out) and out.is_file()
    assert summary["distance_before"] > 0.6 > summary["distance_after"]
    assert main(["fuse", "--face", str(DATA / SELFIES[0]), "--template", str(DATA / "group/two_people.jpg"),
                 "--out", str(out)]) == 2
    assert "faces of similar size" in capsys.readouterr().err


class PhotoGenerator:
    """Stands in for the diffusion model with real photos, batch by batch, to drive the ranking path."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.requests = []

    def generate(self, request, on_step=None):
        self.requests.append(request)
        seed = request.seed or 0
        return [Candidate(Image.open(DATA / p).convert("RGB") if p else Image.new("RGB", (64, 64)), seed + i)
                for i, p in enumerate(self.batches.pop(0))]


@pytest.fixture
def obama_user(store, analyzer, settings):
    from engine.preprocess.enroll import enroll_user
    from tests.conftest import photo

    enroll_user(store, analyzer, settings, "obama", [photo(p) for p in SELFIES], subject="man")
    model = store.start_face_model("obama", "tiny")
    store.finish_face_model(model.id, {})
    return "obama"


def test_portraits_are_fused_ranked_saved_and_recorded(store, analyzer, settings, obama_user):
    generator = PhotoGenerator([["biden/biden2.jpg", "group/two_people.jpg", "rose_leslie/rose2.jpg"]])
    result = make_portraits(store, generator, analyzer, settings, load_styles(), obama_user, "anime", count=2, seed=40)
    assert result.notice is None
    assert [p.seed for p in result.portraits] in ([40, 42], [42, 40])
    assert result.portraits[0].similarity >= result.portraits[1].similarity > 0.4
    assert generator.requests[0].count == settings.portrait_candidates and generator.requests[0].seed == 40
    for portrait in result.portraits:
        assert portrait.path.is_file() and portrait.path.is_relative_to(store.user_dir("obama"))
    rows = list(store.db["portraits"].rows_where("user_id = 'obama'"))
    assert {(r["style"], r["seed"]) for r in rows} == {("anime", 40), ("anime", 42)}


def test_a_faceless_batch_is_redrawn_once_then_delivered_unranked(store, analyzer, settings, obama_user):
    generator = PhotoGenerator([[None, None], ["biden/biden1.jpg", None]])
    result = make_portraits(store, generator, analyzer, settings, load_styles(), obama_user, "anime", count=1, seed=0)
    assert len(generator.requests) == 2 and generator.requests[1].seed == 2  # new seeds for the retry
    assert result.notice is None and result.portraits[0].seed == 2

    generator = PhotoGenerator([[None, None], [None, None]])
    result = make_portraits(store, generator, analyzer, settings, load_styles(), obama_user, "anime", count=2, seed=0)
    assert result.notice == UNRANKED_NOTICE
    assert [p.similarity for p in result.portraits] == [None, None]


@pytest.mark.slow  # the CLI end to end in every mode (~10 s): CI runs it, the quick lane need not
def test_portrait_cli_on_the_tiny_model(capsys, monkeypatch, tiny_model, tiny_controlnet, tiny_pose_detector, tmp_path):
    for name, value in {"DATA_DIR": tmp_path / "data", "BASE_MODEL": tiny_model, "TRAIN_RESOLUTION": 64,
                        "PORTRAIT_SIZE": 64, "PORTRAIT_CANDIDATES": 2, "DEVICE": "cpu",
                        "POSE_CONTROLNET": tiny_controlnet,
                        "POSE_DETECTOR": tiny_pose_detector}.items():
        monkeypatch.setenv(f"FACECHAIN_{name}", str(value))
    assert main(["enroll", "--user", "u", *(str(DATA / p) for p in SELFIES)]) == 0
    capsys.readouterr()
    # Before training: a preview (the base model with the enrolled face fused on), and plain words otherwise.
    assert main(["portrait", "--user", "u", "--style", "anime", "--count", "1", "--preview", "--out",
                 str(tmp_path / "preview"), "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 1 and "Preview: your face model is still training" in captured.err
    assert main(["portrait", "--user", "u", "--style", "anime", "--count", "1", "--out", str(tmp_path / "x")]) == 2
    assert "no trained face model yet" in capsys.readouterr().err
    assert main(["train", "--user", "u", "--steps", "2"]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["portrait", "--user", "u", "--style", "cyberpunk", "--count", "2", "--seed", "5",
                 "--prompt", "holding a guitar", "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    portraits = json.loads(captured.out)
    assert [set(p) for p in portraits] == [{"path", "similarity", "seed", "style", "nsfw", "prompt", "pose"}] * 2
    assert "cyberpunk, neon lights" in portraits[0]["prompt"] and ", holding a guitar, " in portraits[0]["prompt"]
    assert portraits[0]["pose"] is None

    # In a preset pose: 2 wide by 3 high, and the JSON names the pose.
    assert main(["portrait", "--user", "u", "--style", "cyberpunk", "--count", "1", "--pose", "waving",
                 "--out", str(tmp_path / "posed"), "--json"]) == 0
    posed = json.loads(capsys.readouterr().out)
    assert posed[0]["pose"] == "waving" and Image.open(posed[0]["path"]).size == (64, 96)
    assert main(["portrait", "--user", "u", "--style", "cyberpunk", "--count", "1", "--pose", "moonwalk",
                 "--out", str(out)]) == 2
    assert "Unknown pose 'moonwalk': one of" in capsys.readouterr().err
    # The pose of someone in a photo (the tiny detector sees the same standing person in any photo).
    assert main(["portrait", "--user", "u", "--style", "cyberpunk", "--count", "1", "--pose",
                 str(DATA / "biden" / "biden1.jpg"), "--out", str(tmp_path / "from-photo"), "--json"]) == 0
    from_photo = json.loads(capsys.readouterr().out)
    assert from_photo[0]["pose"] == "photo" and "full body" in from_photo[0]["prompt"]

    # Sharper x2 of the first one: the same style and face LoRA, twice the size, a new file.
    assert main(["upscale", "--user", "u", portraits[0]["path"], "--out", str(tmp_path / "up"), "--json"]) == 0
    bigger = json.loads(capsys.readouterr().out)
    assert Image.open(bigger["path"]).size == (128, 128) and bigger["seed"] == portraits[0]["seed"]
    assert bigger["path"] != portraits[0]["path"] and bigger["style"] == "cyberpunk"
    # --out ending in an image extension is that file (a folder otherwise, as above).
    assert main(["upscale", "--user", "u", portraits[1]["path"], "--out", str(tmp_path / "sharp.png"), "--json"]) == 0
    named = json.loads(capsys.readouterr().out)
    assert named["path"] == str(tmp_path / "sharp.png") and (tmp_path / "sharp.png").is_file()
    assert Image.open(tmp_path / "sharp.png").size == (128, 128)
    assert main(["upscale", "--user", "u", str(tmp_path / "nope.png"), "--out", str(tmp_path / "up")]) == 2
    assert "No portrait" in capsys.readouterr().err
    assert all(Path(p["path"]).is_file() and p["style"] == "cyberpunk" for p in portraits)
    assert "not ranked by likeness" in captured.err  # the tiny model draws noise, never a face

    from engine.config import load_settings
    from engine.models.base_model import load_base_pipeline
    from engine.models.random_models import make_random_lora

    unet = load_base_pipeline(load_settings()).pipeline.unet
    monkeypatch.setenv("FACECHAIN_FAST_LORA", str(make_random_lora(unet, tmp_path / "lcm.safetensors", kohya=True)))
    assert main(["portrait", "--user", "u", "--style", "cyberpunk", "--count", "1", "--fast", "--out",
                 str(tmp_path / "fast"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    monkeypatch.setenv("FACECHAIN_FAST_LORA", str(tmp_path / "no-lcm.safetensors"))
    assert main(["portrait", "--user", "u", "--style", "cyberpunk", "--count", "1", "--fast", "--out",
                 str(tmp_path / "x")]) == 2
    assert "FACECHAIN_FAST_LORA" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--style", "cyberpnk"], "Unknown style 'cyberpnk': did you mean cyberpunk?"),
    (["--style", "anime", "--count", "50"], "Ask for 1 to 8 portraits"),
    (["--user", "ghost", "--style", "anime"], "User ghost has no trained face model yet"),
])
def test_portrait_user_errors(capsys, store, obama_user, monkeypatch, argv, message):
    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(store.data_dir))
    full = ["portrait", "--user", "obama", "--out", "x", *argv]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
