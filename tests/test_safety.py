"""The optional safety check (the real StableDiffusionSafetyChecker class with tiny random weights)
and what each server's NSFW policy does with what it flags."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from engine.cli import main
from engine.config import load_settings
from engine.errors import ModelMissing
from engine.generation.portrait import ALL_HELD_BACK, make_portraits
from engine.jobs.worker import Worker
from engine.models.safety import load_safety_checker, may_show_flagged
from engine.preprocess.enroll import enroll_user
from engine.store.community import (
    add_gallery_entry,
    browse_gallery,
    set_gallery_message,
    update_guild_settings,
    week_winners,
)
from engine.styles import load_styles
from engine.training.train import train_user
from tests.conftest import DATA, files_under, photo
from tests.test_postprocess import SELFIES, PhotoGenerator, obama_user  # noqa: F401 - obama_user is a fixture

IMAGES = [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (100, 80), "blue")]
FACES = ["biden/biden2.jpg", "group/two_people.jpg", "rose_leslie/rose2.jpg"]  # two rankable candidates


def checker_settings(path: Path, **more):
    return load_settings(_env_file=None, safety_checker=str(path), **more)


class FlagFirst:
    """Flags the first `count` images it is shown (the best ranked): drives the replacement logic."""

    def __init__(self, count: int) -> None:
        self.count = count

    def flags(self, images):
        return [index < self.count for index in range(len(images))]


def test_no_checker_unless_one_is_set(settings):
    assert load_safety_checker(settings) is None


def test_the_checker_loads_from_its_own_folder_or_a_pipeline_folder(safety_checkers, tmp_path):
    assert load_safety_checker(checker_settings(safety_checkers["flags_all"])).flags(IMAGES) == [True, True]
    assert load_safety_checker(checker_settings(safety_checkers["flags_none"])).flags(IMAGES) == [False, False]
    pipeline = tmp_path / "sd15"  # a full Stable Diffusion download keeps it in safety_checker/ + feature_extractor/
    shutil.copytree(safety_checkers["flags_all"], pipeline / "safety_checker")
    shutil.copytree(safety_checkers["flags_all"], pipeline / "feature_extractor")
    (pipeline / "model_index.json").write_text("{}")
    assert load_safety_checker(checker_settings(pipeline)).flags(IMAGES[:1]) == [True]


def test_a_missing_or_broken_checker_says_what_to_set(tmp_path):
    with pytest.raises(ModelMissing, match=r"FACECHAIN_SAFETY_CHECKER=.* holds no safety checker"):
        load_safety_checker(checker_settings(tmp_path / "nothing"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(ModelMissing, match=r"could not be loaded .*FACECHAIN_SAFETY_CHECKER"):
        load_safety_checker(checker_settings(broken))


@pytest.mark.parametrize("policy, age_restricted, shown", [
    ("block", False, False), ("block", True, False),
    ("age_restricted_only", False, False), ("age_restricted_only", True, True),
    ("allow", False, True), ("allow", True, True), ("unknown", True, False),
])
def test_the_policy_decides_where_a_flagged_portrait_shows(policy, age_restricted, shown):
    assert may_show_flagged(policy, age_restricted) is shown


def test_a_flagged_candidate_gives_way_to_the_next_best(store, analyzer, settings, obama_user):  # noqa: F811
    plain = make_portraits(store, PhotoGenerator([FACES]), analyzer, settings, load_styles(), obama_user, "anime",
                           count=1, seed=40, out_dir=settings.data_dir / "plain")
    screened = make_portraits(store, PhotoGenerator([FACES]), analyzer, settings, load_styles(), obama_user, "anime",
                              count=1, seed=40, safety=FlagFirst(1))
    assert screened.held_back == 1 and screened.notice is None  # enough passed: nothing to tell
    assert len(screened.portraits) == 1 and screened.portraits[0].seed != plain.portraits[0].seed
    assert screened.portraits[0].nsfw is False

    few = make_portraits(store, PhotoGenerator([FACES]), analyzer, settings, load_styles(), obama_user, "anime",
                         count=2, seed=40, safety=FlagFirst(1))
    assert len(few.portraits) == 1 and few.notice == "Only 1 of the candidates passed this server's safety filter."


def test_every_flagged_candidate_is_held_back_and_never_stored(store, analyzer, settings, obama_user,  # noqa: F811
                                                               safety_checkers):
    checker = load_safety_checker(checker_settings(safety_checkers["flags_all"]))
    result = make_portraits(store, PhotoGenerator([FACES]), analyzer, settings, load_styles(), obama_user, "anime",
                            count=2, seed=40, safety=checker)
    assert result.portraits == [] and result.held_back == 2 and result.notice == ALL_HELD_BACK
    assert store.db["portraits"].count == 0 and files_under(store.private_dir(obama_user, "portraits")) == []

    shown = make_portraits(store, PhotoGenerator([FACES]), analyzer, settings, load_styles(), obama_user, "anime",
                           count=2, seed=40, safety=checker, show_flagged=True)
    assert [p.nsfw for p in shown.portraits] == [True, True] and shown.held_back == 0
    assert {row["nsfw"] for row in store.db["portraits"].rows} == {1}


def test_the_worker_applies_the_server_policy(tiny_model, tmp_path, safety_checkers, analyzer):
    settings = load_settings(_env_file=None, data_dir=tmp_path / "data", base_model=str(tiny_model), device="cpu",
                             train_resolution=64, portrait_size=64, portrait_candidates=2,
                             safety_checker=str(safety_checkers["flags_all"]))
    worker = Worker(settings, "test-worker")
    enroll_user(worker.store, analyzer, settings, "u", [photo(p) for p in SELFIES], subject="man")
    train_user(worker.store, worker.base, settings, "u", steps=2)
    update_guild_settings(worker.store, "g", nsfw_policy="age_restricted_only")
    queue = worker.queue
    params = {"style": "anime", "count": 1, "seed": 1}
    general = queue.enqueue("generate", "u", {**params, "age_restricted": False}, guild_id="g")
    after_dark = queue.enqueue("generate", "u", {**params, "age_restricted": True}, guild_id="g")
    by_dm = queue.enqueue("generate", "u", {**params, "age_restricted": True})  # no server: blocked
    worker.run(exit_when_idle=0)

    for job in (general, by_dm):
        done = queue.get(job.id)
        assert done.state == "done" and done.result["portraits"] == []
        assert done.result["held_back"] == 2 and done.result["notice"] == ALL_HELD_BACK
    shown = queue.get(after_dark.id)
    assert [p["nsfw"] for p in shown.result["portraits"]] == [True]
    assert [row["nsfw"] for row in worker.store.job_portraits(after_dark.id)] == [1]

    # Sharper x2 of the shown (flagged) portrait follows the same policy: held back outside the channel.
    flagged = worker.store.job_portraits(after_dark.id)[0]["id"]
    sharper_here = queue.enqueue("upscale", "u", {"portrait_id": flagged, "age_restricted": True}, guild_id="g")
    sharper_there = queue.enqueue("upscale", "u", {"portrait_id": flagged, "age_restricted": False}, guild_id="g")
    worker.run(exit_when_idle=0)
    assert len(queue.get(sharper_here.id).result["portraits"]) == 1
    held = queue.get(sharper_there.id).result
    assert held["portraits"] == [] and held["notice"] == ALL_HELD_BACK
    assert worker.store.job_portraits(sharper_there.id) == []


def test_the_portrait_cli_drops_or_marks_flagged_portraits(capsys, monkeypatch, tiny_model, tmp_path,
                                                           safety_checkers):
    for name, value in {"DATA_DIR": tmp_path / "data", "BASE_MODEL": tiny_model, "TRAIN_RESOLUTION": 64,
                        "PORTRAIT_SIZE": 64, "PORTRAIT_CANDIDATES": 2, "DEVICE": "cpu",
                        "SAFETY_CHECKER": safety_checkers["flags_all"]}.items():
        monkeypatch.setenv(f"FACECHAIN_{name}", str(value))
    assert main(["enroll", "--user", "u", *(str(DATA / p) for p in SELFIES)]) == 0
    assert main(["train", "--user", "u", "--steps", "2"]) == 0
    capsys.readouterr()
    ask = ["portrait", "--user", "u", "--style", "anime", "--count", "2", "--seed", "5", "--json"]
    assert main([*ask, "--out", str(tmp_path / "dropped")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [] and ALL_HELD_BACK in captured.err
    assert main([*ask, "--out", str(tmp_path / "kept"), "--show-flagged"]) == 0
    assert [p["nsfw"] for p in json.loads(capsys.readouterr().out)] == [True, True]


def test_the_doctor_loads_the_checker(capsys, monkeypatch, safety_checkers, tmp_path):
    def safety_check():
        main(["doctor", "--json"])
        return next(c for c in json.loads(capsys.readouterr().out) if c["name"] == "safety check")

    assert safety_check()["status"] == "ok"  # off
    monkeypatch.setenv("FACECHAIN_SAFETY_CHECKER", str(safety_checkers["flags_none"]))
    assert safety_check() == {"name": "safety check", "status": "ok", "detail": f"{safety_checkers['flags_none']} loaded",
                              "fix": ""}
    monkeypatch.setenv("FACECHAIN_SAFETY_CHECKER", str(tmp_path / "missing"))
    failed = safety_check()
    assert failed["status"] == "fail" and "holds no safety checker" in failed["detail"]


def test_galleries_leave_flagged_portraits_out_unless_asked(store):
    store.touch_user("u")
    entries = []
    for seed, nsfw in enumerate((0, 1, 0)):
        portrait = store.db["portraits"].insert({"user_id": "u", "style": "anime", "seed": seed, "path": f"p{seed}.png",
                                                 "nsfw": nsfw, "created_at": "2026-11-25T10:00:00+00:00"}).last_pk
        entry = add_gallery_entry(store, "g", portrait, "u", "c")
        set_gallery_message(store, entry["id"], f"m{seed}")
        entries.append(entry["id"])
    safe, total = browse_gallery(store, "g", limit=10)
    assert total == 2 and [item.entry_id for item in safe] == [entries[2], entries[0]]
    everything, total = browse_gallery(store, "g", limit=10, include_flagged=True)
    assert total == 3 and [item.nsfw for item in everything] == [0, 1, 0]
    assert len(week_winners(store, "g")) == 2 and len(week_winners(store, "g", include_flagged=True)) == 3
