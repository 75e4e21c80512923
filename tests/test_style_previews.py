"""Style previews: drawn with the base model (no face), cached, at the lowest priority in the queue."""

from __future__ import annotations

import json

from PIL import Image

from engine.cli import main
from engine.config import load_settings
from engine.generation.previews import PREVIEW_USER, preview_file
from engine.jobs.queue import SqliteJobQueue
from engine.jobs.worker import Worker
from engine.provenance import check
from engine.store import Store


def tiny_settings(tiny_model, tmp_path, **changes):
    return load_settings(_env_file=None, data_dir=tmp_path / "data", base_model=str(tiny_model), device="cpu",
                         portrait_size=64, job_retry_seconds=0, **changes)


def test_the_previews_cli_draws_the_missing_ones_once(tiny_model, tmp_path, monkeypatch, capsys):
    for name, value in {"DATA_DIR": tmp_path / "data", "BASE_MODEL": tiny_model, "DEVICE": "cpu",
                        "PORTRAIT_SIZE": 64}.items():
        monkeypatch.setenv(f"FACECHAIN_{name}", str(value))
    assert main(["styles", "previews", "--only", "anime,cyberpunk", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["style"], r["drawn"]) for r in rows] == [("anime", True), ("cyberpunk", True)]
    assert Image.open(rows[0]["path"]).size == (64, 64)
    assert rows[0]["path"] == str(tmp_path / "data" / "cache" / "previews" / "anime.png")
    assert main(["styles", "previews", "--only", "anime", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["drawn"] is False  # cached
    assert main(["styles", "previews", "--only", "nope"]) == 2
    assert "Unknown style(s): nope" in capsys.readouterr().err


def test_preview_jobs_wait_behind_every_members_job(tiny_model, tmp_path):
    settings = tiny_settings(tiny_model, tmp_path)
    queue = SqliteJobQueue(Store(settings.data_dir), settings)
    preview = queue.enqueue("preview", PREVIEW_USER, {"style": "anime"})
    member = queue.enqueue("enroll", "42", {"uploads": []})
    assert queue.position(member.id).position == 1  # previews never count ahead of members
    assert queue.claim("w").id == member.id
    assert queue.claim("w").id == preview.id
    assert [u["id"] for u in queue.store.list_users()] == ["42"]  # the system's jobs make no member


def test_the_worker_queues_each_missing_preview_once_and_draws_it(tiny_model, tmp_path):
    settings = tiny_settings(tiny_model, tmp_path)
    worker = Worker(settings, "previews")
    count = len(__import__("engine.styles", fromlist=["load_styles"]).load_styles().styles)
    assert worker.queue_missing_previews() == 0  # no GPU here: the CLI draws them on a CPU
    assert worker.queue_missing_previews(force=True) == count
    assert worker.queue_missing_previews(force=True) == 0  # already queued
    job = worker.queue.claim("previews")
    worker.run_job(job)
    done = worker.queue.get(job.id)
    assert done.state == "done" and preview_file(settings, job.params["style"]).is_file()
    marks = check(preview_file(settings, job.params["style"]).read_bytes())  # a preview is a picture made by AI too
    assert marks.xmp and marks.c2pa_ai


def test_a_new_members_preview_portraits_wait_behind_trained_members_and_run_before_their_training(
        tiny_model, tmp_path):
    settings = tiny_settings(tiny_model, tmp_path)
    queue = SqliteJobQueue(Store(settings.data_dir), settings)
    teaser = queue.enqueue("teaser", "new", {"style": "anime", "count": 2})
    training = queue.enqueue("train", "new", {})
    portrait = queue.enqueue("generate", "trained", {"style": "anime"})
    system = queue.enqueue("preview", PREVIEW_USER, {"style": "clay"})
    order = [queue.claim("w").id for _ in range(4)]
    assert order == [portrait.id, teaser.id, training.id, system.id]


def test_preview_portraits_use_the_base_model_and_the_enrolled_face_and_skip_once_trained(
        tiny_model, tmp_path, analyzer):
    from engine.generation.portrait import TEASER_NOTICE
    from engine.preprocess.enroll import enroll_user
    from tests.conftest import photo

    settings = tiny_settings(tiny_model, tmp_path, portrait_candidates=2, train_resolution=64)
    worker = Worker(settings, "teaser")
    enroll_user(worker.store, analyzer, settings, "new", [photo(p) for p in
                                                          ("obama/obama1.jpg", "obama/obama2.jpg")], subject="man")
    teaser = worker.queue.enqueue("teaser", "new", {"style": "anime", "count": 2})
    worker.run_job(worker.queue.claim("teaser"))
    done = worker.queue.get(teaser.id)
    assert done.state == "done" and len(done.result["portraits"]) == 2
    assert done.result["notice"].startswith(TEASER_NOTICE)
    assert worker.store.ready_face_model("new") is None  # drawn without one
    worker.queue.enqueue("train", "new", {"steps": 2})
    worker.run_job(worker.queue.claim("teaser"))
    late = worker.queue.enqueue("teaser", "new", {"style": "anime", "count": 2})
    worker.run_job(worker.queue.claim("teaser"))
    assert worker.queue.get(late.id).result == {"skipped": "the face model is ready", "portraits": []}
