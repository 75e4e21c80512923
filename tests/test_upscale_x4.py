"""Upscale x4: Real-ESRGAN's RRDB network read from its `.pth` format (random weights, the real key names and
sizes), drawn in tiles, and the job that upscales a member's portrait, its face fused again only where that
reads more like them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import load_settings
from engine.errors import ModelMissing
from engine.models.random_models import make_random_rrdb
from engine.postprocess.super_resolution import load_upscaler, read_rrdb
from tests.conftest import DATA, photo

CPU = torch.device("cpu")
# A portrait as the tiny model cannot draw one: a real photo of the member, cropped around his face as a portrait
# frames it, at 160 px.
PORTRAIT = Image.open(DATA / "obama" / "obama3.jpg").convert("RGB")
PORTRAIT = PORTRAIT.crop((343, 0, 1219, 876)).resize((160, 160))  # his face is a third of its width


def test_real_esrgan_files_are_read_at_their_size_and_drawn_in_tiles_without_seams(tmp_path):
    full = read_rrdb(make_random_rrdb(tmp_path / "RealESRGAN_x4plus.pth", features=64, blocks=23, growth=32))
    assert (full.scale, len(full.body), full.conv_first.out_channels) == (4, 23, 64)
    assert sum(p.numel() for p in full.parameters()) == 16_697_987  # RealESRGAN_x4plus's own count

    small = load_upscaler(make_random_rrdb(tmp_path / "small.pth", seed=3), CPU, torch.float16)
    assert small.dtype == torch.float32  # half precision is for GPUs
    image = Image.open(DATA / "obama" / "obama1.jpg").convert("RGB").resize((100, 90))
    tiled, whole = small.upscale(image, tile=32), small.upscale(image, tile=1000)
    assert tiled.size == (400, 360)
    # The margin around each tile (16 px) covers this small network's reach (17 convolutions): only rounding differs.
    assert np.abs(np.asarray(tiled, dtype=int) - np.asarray(whole, dtype=int)).max() <= 1

    x2 = load_upscaler(make_random_rrdb(tmp_path / "x2.pth", scale=2), CPU, torch.float32)
    assert x2.upscale(image.resize((51, 37)), tile=16).size == (102, 74)  # odd sides: the unshuffle's padding

    copy = load_upscaler(make_random_rrdb(tmp_path / "pass.pth", passthrough=True), CPU, torch.float32)
    nearest = image.resize((400, 360), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(copy.upscale(image, tile=32)), np.asarray(nearest))


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("case", ["code", "other-model", "broken"])
def test_a_file_that_is_no_real_esrgan_model_is_refused_in_one_line(case, tmp_path, capsys):
    path = tmp_path / "model.pth"
    if case == "code":
        path.write_bytes(pickle.dumps({"params_ema": Payload()}, protocol=2))
    elif case == "other-model":
        torch.save({"model.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    else:
        weights = torch.load(make_random_rrdb(tmp_path / "good.pth"), weights_only=True)["params_ema"]
        del weights["conv_hr.weight"]
        torch.save(weights, path)
    expected = {"code": "is not a weights-only .pth file", "other-model": "is not a Real-ESRGAN RRDB model",
                "broken": "does not match the RRDB network it describes"}[case]
    with pytest.raises(ModelMissing, match=expected) as refused:
        read_rrdb(path)
    assert "\n" not in str(refused.value) and "code ran" not in capsys.readouterr().out


@pytest.fixture
def member_with_a_portrait(tmp_path, analyzer):
    """A member and one portrait of theirs (a real photo of the same man, so faces can be measured)."""
    from engine.jobs.worker import Worker
    from engine.preprocess.enroll import enroll_user

    def make(**settings):
        values = {"data_dir": tmp_path / "data", "base_model": str(tmp_path / "no-base"), "device": "cpu",
                  "training_previews": False, "face_parser": "", **settings}
        worker = Worker(load_settings(_env_file=None, **values), "x4")
        enroll_user(worker.store, analyzer, worker.settings, "7", [photo(f"obama/obama{n}.jpg") for n in (1, 2)])
        folder = worker.store.private_dir("7", "portraits")
        folder.mkdir(parents=True, exist_ok=True)
        drawn = folder / "cyberpunk-5-job1.png"
        PORTRAIT.save(drawn)
        portrait = worker.store.db["portraits"].insert({"user_id": "7", "style": "cyberpunk", "seed": 5,
                                                        "path": worker.store.relative(drawn),
                                                        "created_at": "2026-12-07T00:00:00"}).last_pk
        return worker, portrait
    return make


def test_upscale_x4_makes_the_portrait_four_times_larger_fusing_the_face_only_if_that_reads_more_like_them(
        member_with_a_portrait, analyzer, tmp_path):
    from engine.generation.generate import Candidate
    from engine.generation.portrait import enrolled_face
    from engine.postprocess import make_fuser, rank_candidates
    from engine.provenance import check

    upscaler = make_random_rrdb(tmp_path / "RealESRGAN_x4plus.pth", passthrough=True)
    worker, portrait = member_with_a_portrait(upscaler=str(upscaler))  # a local file, as an owner may give
    job = worker.queue.enqueue("upscale", "7", {"portrait_id": portrait, "x4": True})
    worker.run(exit_when_idle=0)
    done = worker.queue.get(job.id)
    assert done.state == "done", done.error
    assert done.result["x4"] and done.result["size"] == [640, 640]
    [saved] = done.result["portraits"]
    path = worker.store.absolute(saved["path"])
    marks = check(path.read_bytes())
    assert Image.open(path).size == (640, 640) and marks.xmp and marks.c2pa_ai and marks.watermark_found

    # The likeness kept is the higher of the picture as upscaled and with the face fused again, each measured here.
    larger = [Candidate(PORTRAIT.resize((640, 640), Image.Resampling.NEAREST), 5)]
    enrolled = enrolled_face(worker.store, analyzer, "7")
    as_is = rank_candidates(analyzer, larger, enrolled, fuser=None)[0].similarity
    fused = rank_candidates(analyzer, larger, enrolled, fuser=make_fuser(worker.settings, analyzer))[0].similarity
    print(f"likeness after x4: {as_is:.3f} as upscaled, {fused:.3f} with the face fused again")
    assert saved["similarity"] == pytest.approx(max(as_is, fused), abs=1e-4)
    assert done.result["fused_again"] == (fused > as_is) and done.result["likeness_as_upscaled"] == as_is


def test_upscale_x4_without_its_model_waits_and_tells_the_owner(member_with_a_portrait):
    from engine.jobs.queue.base import WAITING_FOR_SETUP
    from engine.store.setup_problems import open_setup_problems

    worker, portrait = member_with_a_portrait(upscaler="")
    job = worker.queue.enqueue("upscale", "7", {"portrait_id": portrait, "x4": True})
    worker.run(exit_when_idle=0)
    waiting = worker.queue.get(job.id)
    assert waiting.state == "queued" and waiting.progress_text == WAITING_FOR_SETUP
    [problem] = [p for p in open_setup_problems(worker.store) if p.key == "upscaler"]
    assert "FACECHAIN_UPSCALER is empty" in problem.message and "lllyasviel/Annotators" in problem.message
