"""One SQLite file (WAL) plus a folder per user under the data dir.

Files are laid out as `<data_dir>/users/<user_id>/{selfies,models,portraits}/...`; rows keep
paths relative to the data dir so the folder can be moved. Folders are owner-only (0700) and
files 0600: selfies are biometric data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlite_utils

from engine.errors import FaceChainError
from engine.store.identities import bump_version
from engine.store.schema import MIGRATIONS
from engine.store.together import erase_together

SCHEMA_VERSION = len(MIGRATIONS)
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Tables holding rows of a user, children before parents so foreign keys never dangle.
USER_TABLES = ("gallery_likes", "gallery_entries", "portraits", "jobs", "face_models", "selfies", "identities")


# The owner of the jobs the system runs for itself (style previews); never listed as a member.
SYSTEM_USER = "facechain"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def equal_to(filters: dict[str, object]) -> tuple[list[str], list]:
    """`column = ?` conditions, and their values, for the filters that are set (None and "" are not).
    Column names come from our code, values only ever travel as parameters."""
    present = {column: value for column, value in filters.items() if value not in (None, "")}
    return [f"{column} = ?" for column in present], list(present.values())


def check_user_id(user_id: str) -> str:
    """User ids name folders, so only plain ids are allowed (Discord ids are digits)."""
    if not USER_ID_PATTERN.match(user_id):
        raise FaceChainError(
            f"Invalid user id {user_id!r}: use 1-64 letters, digits, '_' or '-' (a Discord id is all digits)."
        )
    return user_id


@dataclass(frozen=True)
class UserRecord:
    id: str
    subject: str
    trigger: str
    consent_at: str | None
    created_at: str
    suggested_subject: str | None = None  # a face engine's reading, shown beside the member's own choice
    together: str | None = None  # who may put them in a picture with someone: ask (None), always, never


@dataclass(frozen=True)
class SelfieRecord:
    id: int
    user_id: str
    sha256: str
    original_name: str
    path: Path  # absolute path of the aligned crop
    quality: float
    embedding: np.ndarray
    embedding_backend: str
    created_at: str


@dataclass(frozen=True)
class FaceModelRecord:
    id: int
    user_id: str
    version: int
    status: str  # training / ready / failed / superseded
    path: Path  # folder of the adapter weights and meta.json
    base_model: str
    meta: dict
    created_at: str
    finished_at: str | None
    family: str = "sd15"  # the base model family it was trained on (engine.models.family)


@dataclass(frozen=True)
class ForgetReport:
    user_id: str
    rows_deleted: dict[str, int]
    files_deleted: int

    @property
    def anything_deleted(self) -> bool:
        return self.files_deleted > 0 or any(self.rows_deleted.values())


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "facechain.db"
        try:
            connection = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False)
        except sqlite3.Error as error:
            raise FaceChainError(f"Cannot open the database {self.db_path}: {error}") from None
        connection.execute("PRAGMA foreign_keys = ON")
        self.db = sqlite_utils.Database(connection)
        self.db.enable_wal()
        self.migrate()

    # --- transactions -------------------------------------------------------------------------

    @contextmanager
    def transaction(self):
        """A write transaction that takes the write lock before it reads (BEGIN IMMEDIATE).

        A deferred transaction (sqlite-utils' atomic) that reads first and then writes fails at
        once with "database is locked" if another connection wrote in between, without waiting:
        with a worker, its heartbeat thread and the bot on one file, that happens. Nested calls
        join the outer transaction.
        """
        connection = self.db.conn
        if connection.in_transaction:
            yield
            return
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    # --- schema -------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise FaceChainError(
                f"The database {self.db_path} has schema version {current}, newer than this "
                f"program's {SCHEMA_VERSION}: upgrade facechain-discord."
            )
        for version in range(current, SCHEMA_VERSION):
            with self.transaction():
                MIGRATIONS[version](self.db)
                self.db.execute(f"PRAGMA user_version = {version + 1}")

    def close(self) -> None:
        self.db.conn.close()

    # --- files --------------------------------------------------------------------------------

    def user_dir(self, user_id: str) -> Path:
        return self.data_dir / "users" / check_user_id(user_id)

    def private_dir(self, user_id: str, kind: str) -> Path:
        """A folder of the user's, created owner-only."""
        folder = self.user_dir(user_id) / kind
        for part in (self.data_dir / "users", self.user_dir(user_id), folder):
            part.mkdir(mode=0o700, exist_ok=True)
        return folder

    def write_private_file(self, path: Path, data: bytes) -> None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.data_dir).as_posix()

    def absolute(self, relative_path: str) -> Path:
        return self.data_dir / relative_path

    # --- users --------------------------------------------------------------------------------

    def ensure_user(self, user_id: str, subject: str, trigger: str) -> UserRecord:
        """Create the user, or update their subject and trigger phrase."""
        check_user_id(user_id)
        existing = self.get_user(user_id)
        with self.transaction():
            if existing is None:
                self.db["users"].insert(
                    {"id": user_id, "subject": subject, "trigger": trigger, "consent_at": None,
                     "created_at": utc_now()}
                )
            else:
                self.db["users"].update(user_id, {"subject": subject, "trigger": trigger})
        return self.get_user(user_id)  # type: ignore[return-value]

    def suggest_subject(self, user_id: str, subject: str | None) -> None:
        with self.transaction():
            self.db["users"].update(user_id, {"suggested_subject": subject})

    def touch_user(self, user_id: str) -> None:
        """Make sure the user has a row (their first request may come before any enrollment)."""
        self.db["users"].insert(
            {"id": check_user_id(user_id), "subject": "person", "trigger": "a person", "consent_at": None,
             "created_at": utc_now()},
            ignore=True,
        )

    def record_consent(self, user_id: str) -> None:
        with self.transaction():
            self.db["users"].update(user_id, {"consent_at": utc_now()})

    def get_user(self, user_id: str) -> UserRecord | None:
        rows = list(self.db["users"].rows_where("id = ?", [user_id]))
        return UserRecord(**rows[0]) if rows else None

    def list_users(self) -> list[dict]:
        """Each user with counts of what is stored for them."""
        return list(
            self.db.query(
                """
                select u.id, u.subject, u.trigger, u.consent_at, u.created_at,
                  (select count(*) from selfies s where s.user_id = u.id and s.status = 'accepted') as selfies,
                  (select count(*) from face_models m where m.user_id = u.id and m.status = 'ready') as face_models,
                  (select count(*) from portraits p where p.user_id = u.id) as portraits
                from users u where u.id != ? order by u.created_at, u.id
                """, [SYSTEM_USER]
            )
        )

    # --- selfies ------------------------------------------------------------------------------

    def selfie_hashes(self, user_id: str) -> set[str]:
        rows = self.db.query(
            "select sha256 from selfies where user_id = ? and status = 'accepted'", [user_id]
        )
        return {row["sha256"] for row in rows}

    def add_selfie(
        self,
        user_id: str,
        sha256: str,
        original_name: str,
        crop_jpeg: bytes,
        quality: float,
        embedding: np.ndarray,
        embedding_backend: str,
    ) -> SelfieRecord:
        """Store an accepted selfie crop. The user must exist; a known hash is not stored twice."""
        if sha256 in self.selfie_hashes(user_id):
            raise FaceChainError(f"This photo is already enrolled for user {user_id}.")
        path = self.private_dir(user_id, "selfies") / f"{sha256[:32]}.jpg"
        self.write_private_file(path, crop_jpeg)
        row = {
            "user_id": user_id, "sha256": sha256, "original_name": original_name[:200],
            "path": self.relative(path), "status": "accepted", "reason": "", "detail": "",
            "quality": float(quality), "embedding": np.asarray(embedding, np.float32).tobytes(),
            "embedding_backend": embedding_backend, "created_at": utc_now(),
        }
        try:
            with self.transaction():
                # A photo rejected before and accepted now replaces its rejected row.
                self.db.execute("delete from selfies where user_id = ? and sha256 = ?", [user_id, sha256])
                row_id = self.db["selfies"].insert(row).last_pk
        except sqlite3.Error:
            path.unlink(missing_ok=True)
            raise
        return self._selfie(self.db["selfies"].get(row_id))

    def add_rejected_selfie(self, user_id: str, sha256: str, original_name: str, reason: str, detail: str) -> None:
        """Remember a rejection (no file is kept) so the user's history explains itself."""
        row = {
            "user_id": user_id, "sha256": sha256, "original_name": original_name[:200], "path": "",
            "status": "rejected", "reason": reason, "detail": detail[:500], "quality": None,
            "embedding": None, "embedding_backend": "", "created_at": utc_now(),
        }
        if sha256 in self.selfie_hashes(user_id):
            return  # an accepted copy of the same photo wins
        with self.transaction():
            self.db.execute(
                "delete from selfies where user_id = ? and sha256 = ? and status = 'rejected'",
                [user_id, sha256],
            )
            self.db["selfies"].insert(row)

    def accepted_selfies(self, user_id: str) -> list[SelfieRecord]:
        rows = self.db["selfies"].rows_where(
            "user_id = ? and status = 'accepted'", [user_id], order_by="quality desc, id"
        )
        return [self._selfie(row) for row in rows]

    def delete_selfie(self, selfie_id: int) -> None:
        """Remove one enrolled photo: its row and its crop (a copy can then be enrolled again)."""
        rows = list(self.db["selfies"].rows_where("id = ?", [selfie_id]))
        if not rows:
            return
        with self.transaction():
            self.db["selfies"].delete(selfie_id)
        if rows[0]["path"]:
            self.absolute(rows[0]["path"]).unlink(missing_ok=True)

    def rejected_selfies(self, user_id: str) -> list[dict]:
        return list(self.db["selfies"].rows_where("user_id = ? and status = 'rejected'", [user_id], order_by="id"))

    def _selfie(self, row: dict) -> SelfieRecord:
        return SelfieRecord(
            id=row["id"], user_id=row["user_id"], sha256=row["sha256"],
            original_name=row["original_name"], path=self.absolute(row["path"]),
            quality=row["quality"], embedding=np.frombuffer(row["embedding"], np.float32),
            embedding_backend=row["embedding_backend"], created_at=row["created_at"],
        )

    # --- face models ----------------------------------------------------------------------------

    def start_face_model(self, user_id: str, base_model: str, family: str = "sd15") -> FaceModelRecord:
        """The user's unfinished training to resume, or a new version in state 'training' (one of another
        family cannot be resumed: it is marked failed)."""
        for unfinished in self.face_models(user_id, status="training"):
            if unfinished.family == family:
                return unfinished
            self.fail_face_model(unfinished.id, f"the base model is {family} now")
        folder = self.private_dir(user_id, "models")
        with self.transaction():
            version = 1 + (self.db.execute(
                "select coalesce(max(version), 0) from face_models where user_id = ?", [user_id]).fetchone()[0])
            row_id = self.db["face_models"].insert({
                "user_id": user_id, "version": version, "status": "training",
                "path": self.relative(folder / f"v{version}"), "base_model": base_model, "family": family, "meta": "{}",
                "created_at": utc_now(), "finished_at": None,
            }).last_pk
        return self._face_model(self.db["face_models"].get(row_id))

    def finish_face_model(self, model_id: int, meta: dict) -> FaceModelRecord:
        """Mark a trained version ready; the versions before it become 'superseded'."""
        model = self._face_model(self.db["face_models"].get(model_id))
        with self.transaction():
            self.db.execute(
                "update face_models set status = 'superseded' where user_id = ? and status = 'ready'", [model.user_id])
            self.db["face_models"].update(
                model_id, {"status": "ready", "meta": json.dumps(meta), "finished_at": utc_now()})
        return self._face_model(self.db["face_models"].get(model_id))

    def fail_face_model(self, model_id: int, error: str) -> None:
        with self.transaction():
            self.db["face_models"].update(
                model_id, {"status": "failed", "meta": json.dumps({"error": error[:500]}), "finished_at": utc_now()})

    def face_models(self, user_id: str, status: str | None = None) -> list[FaceModelRecord]:
        """Newest first."""
        where, params = "user_id = ?", [user_id]
        if status:
            where, params = where + " and status = ?", params + [status]
        return [self._face_model(row) for row in self.db["face_models"].rows_where(where, params, order_by="version desc")]

    def face_model(self, model_id: int) -> FaceModelRecord:
        return self._face_model(self.db["face_models"].get(model_id))

    def face_model_stored(self, user_id: str, version: int) -> bool:
        """Whether the member still has that face model version, ready (not forgotten, not failed)."""
        return self.db.execute("select 1 from face_models where user_id = ? and version = ? and status = 'ready'",
                               [user_id, version]).fetchone() is not None

    def ready_face_model(self, user_id: str) -> FaceModelRecord | None:
        """The member's face model for the family the workers draw with (store.families); one trained on
        another base model family is none."""
        ready = self.face_models(user_id, status="ready")
        family = self.db.execute("select value from runtime where key = 'base_family'").fetchone()
        return ready[0] if ready and (family is None or ready[0].family == family[0]) else None

    def _face_model(self, row: dict) -> FaceModelRecord:
        return FaceModelRecord(
            id=row["id"], user_id=row["user_id"], version=row["version"], status=row["status"],
            path=self.absolute(row["path"]), base_model=row["base_model"], meta=json.loads(row["meta"] or "{}"),
            created_at=row["created_at"], finished_at=row["finished_at"], family=row["family"],
        )

    # --- portraits -----------------------------------------------------------------------------

    def portrait(self, portrait_id: int) -> dict | None:
        rows = list(self.db["portraits"].rows_where("id = ?", [portrait_id]))
        return rows[0] if rows else None

    def job_portraits(self, job_id: int) -> list[dict]:
        """A generate job's portraits, best first (the order they were saved in)."""
        return list(self.db["portraits"].rows_where("job_id = ?", [job_id], order_by="id"))

    def delete_portraits(self, portrait_ids: list[int]) -> int:
        """Delete portraits, their files and their gallery entries; returns how many were deleted."""
        if not portrait_ids:
            return 0
        marks = ", ".join("?" for _ in portrait_ids)
        rows = self.db.query(f"select path from portraits where id in ({marks})", portrait_ids)
        paths = [row["path"] for row in rows]
        with self.transaction():
            self.db.execute(f"delete from gallery_likes where entry_id in (select id from gallery_entries "
                            f"where portrait_id in ({marks}))", portrait_ids)
            self.db.execute(f"delete from gallery_entries where portrait_id in ({marks})", portrait_ids)
            self.db.execute(f"delete from share_approvals where portrait_id in ({marks})", portrait_ids)
            deleted = self.db.execute(f"delete from portraits where id in ({marks})", portrait_ids).rowcount
        for path in paths:
            self.absolute(path).unlink(missing_ok=True)
        self._drop_thumbnails(portrait_ids)
        return deleted

    def pictures_shown_in(self, user_id: str) -> list[int]:
        """The ids of other members' pictures `user_id` is in (pictures together)."""
        return [row[0] for row in self.db.execute("select id from portraits where partner_id = ?", [user_id])]

    def thumbnail_path(self, portrait_id: int) -> Path:
        """Where the web gallery caches a shared portrait's thumbnail."""
        return self.data_dir / "cache" / "thumbs" / f"{int(portrait_id)}.jpg"

    def _drop_thumbnails(self, portrait_ids: list[int]) -> None:
        for portrait_id in portrait_ids:
            self.thumbnail_path(portrait_id).unlink(missing_ok=True)

    # --- forgetting ---------------------------------------------------------------------------

    def delete_user(self, user_id: str) -> ForgetReport:
        """Remove every row and file of a user. Safe to call twice."""
        check_user_id(user_id)
        counts: dict[str, int] = {}
        portrait_ids = [row[0] for row in self.db.execute("select id from portraits where user_id = ?", [user_id])]
        # Pictures they are in beside another member go too (their files are in that member's folder).
        shown_in = self.pictures_shown_in(user_id)
        shown_in_files = sum(1 for i in shown_in if self.thumbnail_path(i).exists()) + sum(
            1 for (path,) in self.db.execute("select path from portraits where id in "
                                             f"({', '.join('?' for _ in shown_in)})", shown_in)
            if path and self.absolute(path).is_file())
        shown_in_deleted = self.delete_portraits(shown_in)  # with their gallery posts, whoever shared them
        with self.transaction():
            counts["together"] = erase_together(self.db, user_id)
            # Where their pictures were shown (cleared by the bot first) and the reports they made.
            counts["result_messages"] = self.db.execute(
                "delete from result_messages where job_id in (select id from jobs where user_id = ? or "
                "(kind = 'together' and json_extract(params, '$.with') = ?))", [user_id, user_id]).rowcount
            counts["reports"] = self.db.execute("delete from reports where reporter_id = ?", [user_id]).rowcount
            # The server's moderation records keep their lines, without the forgotten member's id (a bar of them
            # stays: it is the server's decision, and must hold if they come back).
            for table, column in (("audit_log", "actor_id"), ("audit_log", "target_id"), ("reports", "handled_by"),
                                  ("bars", "barred_by")):
                self.db.execute(f"update {table} set {column} = null where {column} = ?", [user_id])
            # Likes on this user's gallery entries (by anyone) and on their pictures another member shared
            # (a two-member picture); their own likes go with USER_TABLES.
            on_theirs = ("select id from gallery_entries where user_id = ? or portrait_id in "
                         "(select id from portraits where user_id = ?)")
            received = self.db.execute(f"delete from gallery_likes where entry_id in ({on_theirs})",
                                       [user_id, user_id]).rowcount
            shared_by_others = self.db.execute("delete from gallery_entries where user_id != ? and portrait_id in "
                                               "(select id from portraits where user_id = ?)",
                                               [user_id, user_id]).rowcount
            for table in USER_TABLES:
                counts[table] = self.db.execute(f"delete from {table} where user_id = ?", [user_id]).rowcount
            counts["gallery_likes"] += received
            counts["gallery_entries"] += shared_by_others
            counts["portraits"] += shown_in_deleted
            counts["users"] = self.db.execute("delete from users where id = ?", [user_id]).rowcount
            bump_version(self.db)  # their identity leaves every process's face-match index
        folder = self.user_dir(user_id)
        files = shown_in_files + (sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0)
        shutil.rmtree(folder, ignore_errors=True)
        files += sum(1 for i in portrait_ids if self.thumbnail_path(i).exists())
        self._drop_thumbnails(portrait_ids)
        return ForgetReport(user_id=user_id, rows_deleted=counts, files_deleted=files)
