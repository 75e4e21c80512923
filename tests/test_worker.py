"""The worker running real jobs (tiny model) from the queue, in this process."""

import os
import shutil
import threading
import time

import pytest

from engine.config import load_settings
from engine.jobs.queue import SqliteJobQueue
from engine.jobs.worker import HANDLERS, Worker
from engine.preprocess.enroll import enroll_user
from tests.conftest import DATA, files_under, photo

OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]


@pytest.fixture
def worker_settings(tiny_model, tmp_path):
    return load_settings(_env_file=None, data_dir=tmp_path / "data", base_model=str(tiny_model), device="cpu",
                         train_resolution=64, portrait_size=64, portrait_candidates=2, job_lease_seconds=3,
                         job_retry_seconds=0)


@pytest.fixture
def worker(worker_settings):
    return Worker(worker_settings, "test-worker")


def uploads(settings, names):
    folder = settings.data_dir / "tmp" / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in names:
        target = folder / name.replace("/", "_")
        shutil.copy(DATA / name, target)
        entries.append({"name": name, "path": str(target)})
    return entries


def test_enroll_train_and_portrait_jobs_run_end_to_end(worker, worker_settings):
    queue = worker.queue
    enroll = queue.enqueue("enroll", "42", {"uploads": uploads(worker_settings, [*OBAMA, "biden/biden1.jpg"]),
                                            "subject": "man"})
    worker.run(exit_when_idle=0)
    done = queue.get(enroll.id)
    assert done.state == "done" and len(done.result["accepted"]) == 3
    assert [r["reason"] for r in done.result["rejected"]] == ["different_person"]
    assert files_under(worker_settings.data_dir / "tmp") == []  # uploads are gone once processed

    train = queue.enqueue("train", "42", {"steps": 6})
    portrait = queue.enqueue("generate", "42", {"style": "anime", "count": 1, "seed": 3, "wait_for_training": True})
    worker.run(exit_when_idle=0)
    assert queue.get(train.id).state == "done" and queue.get(train.id).result["version"] == 1
    assert queue.get(train.id).ran_on == "test-worker"  # where it ran, for `facechain jobs list`
    result = queue.get(portrait.id)
    assert result.state == "done" and result.progress == 1.0
    [saved] = result.result["portraits"]
    assert f"job{portrait.id}" in saved["path"] and saved["style"] == "anime"
    rows = list(worker.store.db["portraits"].rows_where("job_id = ?", [portrait.id]))
    assert len(rows) == 1


def test_bad_input_fails_once_with_a_readable_reason(worker):
    job = worker.queue.enqueue("train", "nobody")
    worker.run(exit_when_idle=0)
    failed = worker.queue.get(job.id)
    assert failed.state == "failed" and failed.attempts == 1
    assert "no enrolled selfies" in failed.error


def test_an_upload_outside_the_uploads_folder_is_refused(worker, tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((DATA / OBAMA[0]).read_bytes())
    job = worker.queue.enqueue("enroll", "42", {"uploads": [{"name": "x.jpg", "path": str(secret)}]})
    worker.run(exit_when_idle=0)
    assert worker.queue.get(job.id).state == "failed"
    assert secret.exists()


def test_an_unexpected_crash_is_retried(worker, monkeypatch):
    calls = []

    def flaky(worker_, job, beat):
        calls.append(job.attempts)
        if len(calls) == 1:
            raise RuntimeError("driver hiccup")
        return {"ok": True}

    monkeypatch.setitem(HANDLERS, "generate", flaky)
    job = worker.queue.enqueue("generate", "42", {"style": "anime"})
    worker.run(exit_when_idle=0.5, poll_seconds=0.1)
    assert calls == [1, 2]
    assert worker.queue.get(job.id).state == "done"


def test_the_last_failed_attempt_promises_no_retry_and_names_no_exception(worker, monkeypatch):
    def broken(worker_, job, beat):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(HANDLERS, "generate", broken)
    job = worker.queue.enqueue("generate", "42", {"style": "anime"})
    worker.run(exit_when_idle=0.5, poll_seconds=0.1)
    failed = worker.queue.get(job.id)
    assert failed.state == "failed" and failed.attempts == worker.settings.job_max_attempts
    assert failed.error == ("Something went wrong on the server while doing this. It failed 3 times, so it was "
                            "stopped: please ask again later.")
    assert "retried" not in failed.error and "RuntimeError" not in failed.error and "CUDA" not in failed.error


def test_cancelling_a_running_training_stops_it_within_seconds(worker_settings, analyzer):
    """With the default minute-long lease (a heartbeat every 20 s), a cancel still arrives at once."""
    settings = worker_settings.model_copy(update={"job_lease_seconds": 60})
    worker = Worker(settings, "test-worker")
    enroll_user(worker.store, analyzer, settings, "42", [photo(p) for p in OBAMA], subject="man")
    job = worker.queue.enqueue("train", "42", {"steps": 5000})
    runner = threading.Thread(target=worker.run, kwargs={"exit_when_idle": 0})
    runner.start()
    other = SqliteJobQueue(type(worker.store)(settings.data_dir), settings)  # e.g. the bot
    deadline = time.monotonic() + 60
    while other.get(job.id).state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # into the training (the tiny model loads in a moment)
    other.cancel(job.id, user_id="42")
    asked = time.monotonic()
    while other.get(job.id).state == "running" and time.monotonic() - asked < 30:
        time.sleep(0.05)
    stopped_after = time.monotonic() - asked
    runner.join(timeout=60)
    assert other.get(job.id).state == "cancelled"
    assert stopped_after < 5, f"the cancel took {stopped_after:.1f} s to reach the training"
    assert worker.store.ready_face_model("42") is None


def test_a_busy_gpu_gives_a_clear_message_and_a_retry(worker, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(1.2 * 2**30), 80 * 2**30))
    worker.settings = worker.settings.model_copy(update={"device": "auto"})
    job = worker.queue.enqueue("generate", "42", {"style": "anime"})
    worker.run_job(worker.queue.claim(worker.worker_id))
    waiting = worker.queue.get(job.id)
    assert waiting.state == "queued" and waiting.error.startswith("The GPU has only 1.2 GiB free")


def test_out_of_memory_is_retried_once_with_memory_savers_then_fails_in_plain_words(worker, monkeypatch):
    import torch

    seen = []

    def greedy(worker_, job, beat):
        seen.append(job.params.get("low_memory", False))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(HANDLERS, "generate", greedy)
    job = worker.queue.enqueue("generate", "42", {"style": "anime"})
    worker.run(exit_when_idle=0.5, poll_seconds=0.1)
    assert seen == [False, True]
    failed = worker.queue.get(job.id)
    assert failed.state == "failed"
    assert failed.error.startswith("The GPU ran out of memory even with memory savers on")


def test_a_damaged_face_model_fails_once_with_a_plain_reason(worker, worker_settings):
    from engine.training.files import WEIGHTS_FILE

    enroll_user(worker.store, worker.analyzer, worker_settings, "77", [photo(p) for p in OBAMA], subject="man")
    worker.queue.enqueue("train", "77", {"steps": 2})
    worker.run(exit_when_idle=0)
    weights = worker.store.ready_face_model("77").path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as after a crash or a bad disk
    job = worker.queue.enqueue("generate", "77", {"style": "anime", "count": 1})
    worker.run(exit_when_idle=0)
    failed = worker.queue.get(job.id)
    assert failed.state == "failed" and failed.attempts == 1 and "face model file is damaged" in failed.error


def test_a_full_disk_keeps_the_job_and_its_photos_for_a_retry(worker_settings, monkeypatch):
    import errno
    from pathlib import Path

    from engine.store import Store

    worker = Worker(worker_settings.model_copy(update={"job_retry_seconds": 3600}), "patient")

    def disk_full(self, path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Store, "write_private_file", disk_full)
    sent = uploads(worker_settings, OBAMA)
    job = worker.queue.enqueue("enroll", "88", {"uploads": sent, "subject": "man"})
    worker.run(exit_when_idle=0)
    waiting = worker.queue.get(job.id)
    assert waiting.state == "queued" and "disk is full" in waiting.error
    assert all(Path(upload["path"]).exists() for upload in sent)
    assert worker.store.accepted_selfies("88") == [] and files_under(worker_settings.data_dir / "users") == []

    monkeypatch.undo()  # space freed
    worker.queue.db.execute("update jobs set run_after = null where id = ?", [job.id])
    worker.run(exit_when_idle=0)
    assert worker.queue.get(job.id).state == "done" and len(worker.store.accepted_selfies("88")) == 3


def test_a_restarted_worker_takes_back_at_once_the_jobs_of_a_dead_worker_of_its_host(worker, worker_settings):
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_id = f"{socket.gethostname()}-{gone.stdout.strip()}"  # its process has exited
    alive_id = f"{socket.gethostname()}-{os.getpid()}"
    queue = worker.queue
    orphan, busy, elsewhere = (queue.enqueue("generate", user, {"style": "anime"}) for user in ("a", "b", "c"))
    for job, owner in ((orphan, dead_id), (busy, alive_id), (elsewhere, "other-host-123")):
        queue.store.db.execute("update jobs set state = 'running', lease_owner = ?, lease_expires_at = '9999' "
                               "where id = ?", [owner, job.id])
    assert worker.reclaim_dead_leases() == 1
    assert queue.get(orphan.id).state == "queued"  # no waiting out its lease
    assert queue.get(busy.id).state == "running" and queue.get(elsewhere.id).state == "running"


def test_a_result_for_a_job_no_longer_leased_to_the_worker_is_thrown_away(worker, worker_settings, analyzer,
                                                                          monkeypatch):
    """The job's lease ran out while it was drawn (the worker stalled) and another worker took it: the
    first one's portraits are not recorded and the job stays the other's."""
    from dataclasses import replace

    from engine.jobs import runners as job_runners

    enroll_user(worker.store, analyzer, worker_settings, "42", [photo(p) for p in OBAMA], subject="man")
    worker.queue.enqueue("train", "42", {"steps": 4})
    worker.run(exit_when_idle=0)
    job = worker.queue.enqueue("generate", "42", {"style": "anime", "count": 1, "seed": 3})
    runner = job_runners.RUNNERS["generate"]

    def compute_then_lose_the_lease(models, inputs, context):
        drawn = runner.compute(models, inputs, context)
        other = SqliteJobQueue(worker.store, worker_settings)
        other.reclaim_leases([worker.worker_id])
        assert other.claim("other-worker").id == job.id
        return drawn

    monkeypatch.setitem(job_runners.RUNNERS, "generate", replace(runner, compute=compute_then_lose_the_lease))
    worker.run(exit_when_idle=0)
    taken = worker.queue.get(job.id)
    assert taken.state == "running" and taken.ran_on == "other-worker"
    assert list(worker.store.db["portraits"].rows_where("job_id = ?", [job.id])) == []


def test_a_result_recorded_once_even_when_finishing_the_job_fails(worker, worker_settings, analyzer, monkeypatch):
    """`complete` fails after the portraits or the face model were recorded (a locked database): the
    retry finishes the job with what was recorded, and records nothing twice."""
    import sqlite3

    enroll_user(worker.store, analyzer, worker_settings, "42", [photo(p) for p in OBAMA], subject="man")
    train = worker.queue.enqueue("train", "42", {"steps": 4})
    portrait = worker.queue.enqueue("generate", "42", {"style": "anime", "count": 1, "wait_for_training": True})
    real_complete, failed_once = worker.queue.complete, set()

    def complete_failing_once(lease, result):
        if lease.job_id not in failed_once:
            failed_once.add(lease.job_id)
            raise sqlite3.OperationalError("database is locked")
        return real_complete(lease, result)

    monkeypatch.setattr(worker.queue, "complete", complete_failing_once)
    worker.run(exit_when_idle=0.5, poll_seconds=0.1)
    assert failed_once == {train.id, portrait.id}
    trained, drawn = worker.queue.get(train.id), worker.queue.get(portrait.id)
    assert trained.state == "done" and trained.attempts == 2 and drawn.state == "done" and drawn.attempts == 2
    assert [model.version for model in worker.store.face_models("42")] == [1]  # not a second version
    assert len(list(worker.store.db["portraits"].rows_where("job_id = ?", [portrait.id]))) == 1
    assert len(drawn.result["portraits"]) == 1


def test_scratch_folders_of_stopped_processes_are_swept_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from engine.jobs.scratch import sweep_stale_scratch

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        left = [tmp_path / f"facechain-train-{gone.pid}-abc", tmp_path / f"facechain-faces-{gone.pid}",
                tmp_path / f"facechain-actor-{gone.pid}-x"]
        kept = [tmp_path / f"facechain-train-{alive.pid}-def", tmp_path / f"facechain-faces-{os.getpid()}",
                tmp_path / "facechain-bench-1", tmp_path / "unrelated"]
        legacy_old, legacy_new = tmp_path / "facechain-train-1nc_koux", tmp_path / "facechain-train-3h779gmf"
        left.append(legacy_old)  # named before folders carried their process, and a day old
        kept.append(legacy_new)  # ... and recent: it may be a training running now
        for folder in left + kept:
            (folder / "crops").mkdir(parents=True)
            (folder / "crops" / "face.jpg").write_bytes(b"a member's face")
        os.utime(legacy_old, (time.time() - 2 * 86400,) * 2)
        assert sorted(sweep_stale_scratch(tmp_path)) == sorted(left)
        assert not any(folder.exists() for folder in left) and all(folder.exists() for folder in kept)
    finally:
        alive.kill()
        alive.wait()


def test_a_forgotten_members_face_adapter_leaves_the_workers_memory(worker, worker_settings, analyzer):
    for user, photos in (("42", OBAMA), ("43", ["biden/biden1.jpg", "biden/biden2.jpg"])):  # two people
        enroll_user(worker.store, analyzer, worker_settings, user, [photo(p) for p in photos], subject="man")
        worker.queue.enqueue("train", user, {"steps": 2})
        worker.queue.enqueue("generate", user, {"style": "anime", "count": 1, "wait_for_training": True})
    worker.run(exit_when_idle=0)
    loaded = worker.models.loaded_adapters()
    assert any(name.startswith("42-v1-") for name in loaded) and any(name.startswith("43-v1-") for name in loaded)
    assert worker.forget_removed_faces() == []  # nothing to drop while both are stored
    worker.store.delete_user("42")  # /facechain forget, from the bot's process
    [dropped] = worker.forget_removed_faces()
    assert dropped.startswith("42-v1-")
    assert not any(name.startswith("42-") for name in worker.models.loaded_adapters())
    assert any(name.startswith("43-v1-") for name in worker.models.loaded_adapters())  # others' stay


def test_new_words_while_a_training_runs_train_again_when_it_ends(worker_settings, analyzer, monkeypatch):
    """The member changes how portraits describe them (or removes a photo) mid-training: that training
    finishes on what it read, and another one follows with the new words, once."""
    import engine.training.train as train_module
    from engine.store.members import change_subject

    worker = Worker(worker_settings.model_copy(update={"train_steps_per_photo": 2}), "test-worker")
    queue = worker.queue
    enroll_user(queue.store, analyzer, worker_settings, "42", [photo(p) for p in OBAMA], subject="man")
    first = queue.enqueue("train", "42", {"steps": 4})
    original = train_module.train_from_inputs

    def train_while_the_member_changes_their_words(*args, **kwargs):
        if queue.store.get_user("42").subject == "man":  # during the first training only
            change = change_subject(queue.store, queue, "42", "woman")
            assert change.changed and change.train_job_id == first.id  # the running one will see to it
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_from_inputs", train_while_the_member_changes_their_words)
    worker.run(exit_when_idle=0)
    done = queue.get(first.id)
    assert done.state == "done" and done.result["retrain_job_id"]
    again = queue.get(done.result["retrain_job_id"])
    assert again.state == "done" and "retrain_job_id" not in again.result  # nothing changed during the second
    models = queue.store.face_models("42")
    assert [(m.version, m.meta["trigger"]) for m in sorted(models, key=lambda m: m.version)] == [
        (1, "a handsome man"), (2, "a beautiful woman")]


def test_a_portraits_pictures_are_marked_as_ai_made_before_the_write_lock_is_taken(worker, worker_settings, analyzer,
                                                                                     monkeypatch):
    """Marking a picture (watermark, XMP, a signed manifest) takes ~25 ms: done inside the transaction that records
    the job, it held the queue's write lock meanwhile, and every claim, beat and bot write waited on it. The files
    are marked first; the portraits still carry all three marks."""
    import sqlite3

    import engine.provenance as provenance

    enroll_user(worker.store, analyzer, worker_settings, "42", [photo(p) for p in OBAMA], subject="man")
    worker.queue.enqueue("train", "42", {"steps": 4})
    worker.run(exit_when_idle=0)
    lock_free_while_marking = []
    real_encode = provenance.encode

    def encode_and_try_the_lock(image, fmt, **options):
        other = sqlite3.connect(worker.store.db_path, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            lock_free_while_marking.append(True)
        except sqlite3.OperationalError:  # database is locked
            lock_free_while_marking.append(False)
        finally:
            other.close()
        return real_encode(image, fmt, **options)

    monkeypatch.setattr(provenance, "encode", encode_and_try_the_lock)
    job = worker.queue.enqueue("generate", "42", {"style": "anime", "count": 2, "seed": 5})
    worker.run(exit_when_idle=0)
    done = worker.queue.get(job.id)
    assert done.state == "done", done.error
    assert lock_free_while_marking == [True, True]
    for saved in done.result["portraits"]:
        marks = provenance.check((worker_settings.data_dir / saved["path"]).read_bytes())
        assert marks.xmp and marks.c2pa_ai and marks.watermark_found, marks


def test_the_worker_process_sets_its_libraries_and_model_aside_from_the_cycle_collector(worker_settings):
    """A full collection between jobs walked every object of diffusers, transformers and the model (~430,000
    objects, ~350 ms a job on a fast CPU). The `facechain worker` process and a cluster actor keep them for their
    life and set them aside once loaded: a collection then walks the jobs' own objects only."""
    import subprocess
    import sys

    script = """
import gc, sys, argparse
from engine.config import load_settings
from engine.cli.jobs import _worker_for
from engine.jobs.cluster.actor import GpuActor
settings = load_settings(_env_file=None, data_dir=sys.argv[1], base_model=sys.argv[2], device="cpu")
_, worker = _worker_for(argparse.Namespace(id="w"), settings)
worker.models.base
print(gc.get_freeze_count(), len(gc.get_objects()))
gc.unfreeze()
actor = GpuActor(settings.model_dump(exclude={"data_dir"}), "actor")
print(gc.get_freeze_count(), len(gc.get_objects()), actor.models.for_life)
"""
    out = subprocess.run([sys.executable, "-c", script, str(worker_settings.data_dir), worker_settings.base_model],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (worker_set_aside, worker_walked), (actor_set_aside, actor_walked, actor_for_life) = [
        line.split() for line in out.stdout.strip().splitlines()[-2:]]
    assert int(worker_set_aside) > 100_000 and int(worker_walked) < int(worker_set_aside) / 20
    assert int(actor_set_aside) > 100_000 and int(actor_walked) < int(actor_set_aside) / 20
    assert actor_for_life == "True"  # and its base model, once loaded
