import os
import stat

import numpy as np
import pytest

from engine.config import load_settings
from engine.errors import FaceChainError
from engine.store import SCHEMA_VERSION, Store, schema
from tests.conftest import files_under

EMBEDDING = np.arange(128, dtype=np.float32) / 128


def add(store: Store, user: str, digest: str = "a" * 64):
    store.ensure_user(user, "man", "a handsome man")
    return store.add_selfie(user, digest, "me.jpg", b"jpeg-bytes", 0.8, EMBEDDING, "dlib")


def test_a_new_store_is_migrated_to_the_current_schema_in_wal_mode(store):
    assert store.schema_version == SCHEMA_VERSION >= 1
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"users", "selfies", "face_models", "jobs", "portraits", "guild_settings", "gallery_entries"} <= set(
        store.db.table_names()
    )


def test_reopening_keeps_data_and_does_not_migrate_again(settings):
    first = Store(settings.data_dir)
    add(first, "42")
    first.close()
    again = Store(settings.data_dir)
    assert again.schema_version == SCHEMA_VERSION
    assert [s.sha256 for s in again.accepted_selfies("42")] == ["a" * 64]


def test_a_database_from_a_newer_version_is_refused_untouched(settings):
    store = Store(settings.data_dir)
    store.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    store.close()
    with pytest.raises(FaceChainError, match="newer than this program"):
        Store(settings.data_dir)


def test_a_failing_migration_leaves_the_database_at_its_previous_version(settings, monkeypatch):
    Store(settings.data_dir).close()

    def broken(db):
        db["half_done"].create({"id": int})
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, broken])
    monkeypatch.setattr("engine.store.store.MIGRATIONS", schema.MIGRATIONS)
    monkeypatch.setattr("engine.store.store.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError):
        Store(settings.data_dir)
    monkeypatch.undo()
    reopened = Store(settings.data_dir)
    assert reopened.schema_version == SCHEMA_VERSION
    assert "half_done" not in reopened.db.table_names()


def test_selfies_round_trip_with_embedding_and_private_files(store):
    selfie = add(store, "42")
    assert selfie.path.read_bytes() == b"jpeg-bytes"
    np.testing.assert_array_equal(selfie.embedding, EMBEDDING)
    assert stat.S_IMODE(os.stat(selfie.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(selfie.path.parent).st_mode) == 0o700
    assert selfie.path.is_relative_to(store.data_dir / "users" / "42")


def test_the_same_photo_is_never_stored_twice(store):
    add(store, "42")
    with pytest.raises(FaceChainError, match="already enrolled"):
        store.add_selfie("42", "a" * 64, "again.jpg", b"other", 0.5, EMBEDDING, "dlib")
    assert len(store.accepted_selfies("42")) == 1
    assert len(files_under(store.user_dir("42"))) == 1


def test_a_rejection_is_remembered_without_a_file_and_replaced_when_accepted_later(store):
    store.ensure_user("42", "man", "a handsome man")
    store.add_rejected_selfie("42", "b" * 64, "dark.jpg", "bad_exposure", "too dark")
    store.add_rejected_selfie("42", "b" * 64, "dark.jpg", "bad_exposure", "too dark")
    assert [row["reason"] for row in store.rejected_selfies("42")] == ["bad_exposure"]
    assert files_under(store.user_dir("42")) == []
    store.add_selfie("42", "b" * 64, "dark.jpg", b"fixed", 0.7, EMBEDDING, "dlib")
    assert store.rejected_selfies("42") == []


@pytest.mark.parametrize("user_id", ["../etc", "a/b", "", "x" * 65, "robert'); drop table users;--"])
def test_user_ids_that_could_escape_the_data_dir_are_refused(store, user_id):
    with pytest.raises(FaceChainError, match="Invalid user id"):
        store.ensure_user(user_id, "man", "a handsome man")
    with pytest.raises(FaceChainError, match="Invalid user id"):
        store.delete_user(user_id)


def test_deleting_a_user_removes_every_row_and_file_and_nothing_of_others(store):
    for user in ("42", "43"):
        add(store, user)
        store.db["face_models"].insert({"user_id": user, "version": 1, "status": "ready", "path": f"users/{user}/models/v1"})
        job = store.db["jobs"].insert({"user_id": user, "kind": "train", "state": "done"}).last_pk
        portrait = store.db["portraits"].insert({"user_id": user, "job_id": job, "style": "anime"}).last_pk
        entry = store.db["gallery_entries"].insert({"user_id": user, "portrait_id": portrait, "guild_id": "7"}).last_pk
        store.db["gallery_likes"].insert({"entry_id": entry, "user_id": "43" if user == "42" else "42"})
        (store.private_dir(user, "portraits") / "1.png").write_bytes(b"png")
    report = store.delete_user("42")
    # 42's like of 43's entry and 43's like of 42's entry both go: nothing of 42 stays, even as a like.
    assert report.rows_deleted == {"gallery_likes": 2, "gallery_entries": 1, "portraits": 1, "jobs": 1, "face_models": 1,
                                   "selfies": 1, "users": 1, "together": 0, "identities": 0, "result_messages": 0,
                                   "reports": 0}
    assert report.files_deleted == 2
    assert not store.user_dir("42").exists()
    for table in ("selfies", "face_models", "jobs", "portraits", "gallery_entries"):
        assert store.db[table].count_where("user_id = ?", ["42"]) == 0
        assert store.db[table].count_where("user_id = ?", ["43"]) == 1
    assert len(files_under(store.user_dir("43"))) == 2
    assert not store.delete_user("42").anything_deleted  # a second forget is harmless


def hammer(settings, transaction_of) -> list[Exception]:
    """One connection writes in a loop (a heartbeat) while another reads then writes (an enrollment)."""
    import threading

    writer, reader = Store(settings.data_dir), Store(settings.data_dir)
    writer.ensure_user("beat", "man", "a handsome man")
    reader.ensure_user("42", "man", "a handsome man")
    errors: list[Exception] = []

    def beat():
        for n in range(300):
            with writer.transaction():
                writer.db["users"].update("beat", {"trigger": f"t{n}"})

    def enroll():
        for n in range(300):
            try:
                with transaction_of(reader):
                    reader.get_user("42")  # read first ...
                    reader.db["users"].update("42", {"trigger": f"t{n}"})  # ... then write
            except Exception as error:
                errors.append(error)

    threads = [threading.Thread(target=beat), threading.Thread(target=enroll)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_read_then_write_transactions_never_fail_with_database_is_locked(settings):
    assert hammer(settings, lambda store: store.transaction()) == []


def test_a_forgotten_members_job_ids_are_never_given_to_another_member(store, settings):
    """A progress message still watching a forgotten member's job id must never see another's job."""
    from engine.jobs.queue import SqliteJobQueue

    queue = SqliteJobQueue(store, settings)
    kept = queue.enqueue("train", "bob")
    forgotten = queue.enqueue("generate", "ann", {"style": "anime"})  # the newest job, then gone
    store.delete_user("ann")
    assert queue.get(forgotten.id) is None
    after = queue.enqueue("generate", "cy", {"style": "anime"})
    assert after.id > forgotten.id > kept.id


def test_the_job_ids_migration_keeps_every_job_and_index(tmp_path):
    from engine.jobs.queue import SqliteJobQueue

    settings = load_settings(_env_file=None, data_dir=tmp_path / "data")
    with pytest.MonkeyPatch.context() as before:  # a data folder from before the migration, with jobs in it
        before.setattr("engine.store.store.MIGRATIONS", schema.MIGRATIONS[:-1])
        before.setattr("engine.store.store.SCHEMA_VERSION", len(schema.MIGRATIONS) - 1)
        opened = Store(tmp_path / "data")
        ids = [SqliteJobQueue(opened, settings).enqueue("train", user).id for user in ("ann", "bob")]
        opened.close()
    migrated = Store(tmp_path / "data")
    assert [job.id for job in SqliteJobQueue(migrated, settings).jobs()] == ids[::-1]
    assert "AUTOINCREMENT" in migrated.db["jobs"].schema
    indexes = {name for (name,) in migrated.db.execute("select name from sqlite_master where tbl_name = 'jobs' "
                                                       "and type = 'index' and sql is not null")}
    assert {"jobs_last_served", "jobs_kind_done", "jobs_awaiting_delivery"} <= indexes
    migrated.close()
