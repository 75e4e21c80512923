import json
import os
import sqlite3
import time

from engine.cli import main
from engine.jobs.queue import SqliteJobQueue
from engine.store.maintenance import backup_database, build_scheduler, delete_temp_files, enforce_retention, run_all
from tests.test_store import add


def old(store, table, row_id, days):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - days * 86400))
    store.db[table].update(row_id, {"created_at": stamp})


def portrait(store, user, name):
    path = store.private_dir(user, "portraits") / name
    path.write_bytes(b"png")
    return store.db["portraits"].insert({"user_id": user, "style": "anime", "path": store.relative(path),
                                         "created_at": "2020-01-01T00:00:00+00:00"}).last_pk, path


def test_retention_deletes_old_portraits_except_shared_ones_and_old_selfies(store, settings):
    selfie = add(store, "42")
    kept_id, kept = portrait(store, "42", "shared.png")
    gone_id, gone = portrait(store, "42", "old.png")
    store.db["gallery_entries"].insert({"guild_id": "1", "portrait_id": kept_id, "user_id": "42"})
    assert enforce_retention(store, settings) == {"portraits": 0, "selfies": 0}  # 0 days = keep forever
    old(store, "selfies", selfie.id, 40)
    removed = enforce_retention(store, settings.model_copy(update={"portrait_retention_days": 30,
                                                                    "selfie_retention_days": 30}))
    assert removed == {"portraits": 1, "selfies": 1}
    assert kept.exists() and not gone.exists() and not selfie.path.exists()


def test_old_temp_files_are_deleted(store, settings):
    folder = settings.data_dir / "tmp" / "uploads"
    folder.mkdir(parents=True)
    stale, fresh = folder / "stale.jpg", folder / "fresh.jpg"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    assert delete_temp_files(store, settings) == 1
    assert fresh.exists() and not stale.exists()


def test_backups_are_consistent_copies_and_only_the_newest_are_kept(store, settings):
    add(store, "42")
    limited = settings.model_copy(update={"backups_kept": 2})
    paths = [backup_database(store, limited) for _ in range(3)]
    remaining = sorted((settings.data_dir / "backups").glob("*.db"))
    assert remaining == sorted(paths[1:])
    copy = sqlite3.connect(paths[-1])
    assert copy.execute("select count(*) from selfies").fetchone()[0] == 1
    assert copy.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_run_all_reaps_expired_leases(store, settings):
    queue = SqliteJobQueue(store, settings.model_copy(update={"job_lease_seconds": 1}))
    job = queue.enqueue("train", "42")
    queue.claim("dead")
    time.sleep(1.1)
    summary = run_all(store, settings)
    assert summary["leases_reaped"] == 1 and queue.get(job.id).state == "queued"
    assert summary["backup"].endswith(".db")


def test_the_scheduler_has_every_task_and_runs_them(settings, store):
    scheduler = build_scheduler(settings)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"reap_expired_leases", "delete_temp_files", "enforce_retention", "backup_database",
                         "delete_old_audit"}
    for job in jobs.values():
        job.func()  # each opens its own connection, as it would on the scheduler's thread
    assert list((settings.data_dir / "backups").glob("*.db"))
    assert "backup_database" not in {j.id for j in build_scheduler(settings.model_copy(
        update={"backup_every_hours": 0})).get_jobs()}
    scheduler.start()
    scheduler.shutdown(wait=True)


def test_maintenance_cli(capsys, settings, monkeypatch):
    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(settings.data_dir))
    assert main(["maintenance", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["leases_reaped"] == 0 and summary["retention"] == {"portraits": 0, "selfies": 0}
