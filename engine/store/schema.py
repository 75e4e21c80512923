"""The database schema, as an ordered list of migrations.

`PRAGMA user_version` holds how many migrations a database has had; opening a store applies the
rest in order, each in its own transaction. Never edit a released migration: append a new one.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils


def _initial(db: sqlite_utils.Database) -> None:
    db["users"].create(
        {
            "id": str,  # Discord user id (or a CLI name)
            "subject": str,  # man / woman / boy / girl / person
            "trigger": str,  # trigger phrase used in captions and prompts
            "consent_at": str,
            "created_at": str,
        },
        pk="id",
    )
    db["selfies"].create(
        {
            "id": int,
            "user_id": str,
            "sha256": str,  # hash of the uploaded bytes, for de-duplication
            "original_name": str,
            "path": str,  # aligned 512x512 crop, relative to the data dir; empty when rejected
            "status": str,  # accepted / rejected
            "reason": str,
            "detail": str,
            "quality": float,
            "embedding": bytes,  # float32 identity vector of the face
            "embedding_backend": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
    )
    db["selfies"].create_index(["user_id", "sha256"], unique=True)
    db["face_models"].create(
        {
            "id": int,
            "user_id": str,
            "version": int,
            "status": str,  # training / ready / failed / superseded
            "path": str,
            "base_model": str,
            "meta": str,  # json
            "created_at": str,
            "finished_at": str,
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
    )
    db["face_models"].create_index(["user_id", "version"], unique=True)
    db["jobs"].create(
        {
            "id": int,
            "kind": str,  # train / generate / preprocess
            "user_id": str,
            "guild_id": str,
            "channel_id": str,
            "params": str,  # json
            "state": str,  # queued / running / done / failed / cancelled
            "attempts": int,
            "progress": float,
            "progress_text": str,
            "lease_owner": str,
            "lease_expires_at": str,
            "error": str,
            "result": str,  # json
            "created_at": str,
            "started_at": str,
            "finished_at": str,
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
    )
    db["jobs"].create_index(["state", "created_at"])
    db["portraits"].create(
        {
            "id": int,
            "user_id": str,
            "job_id": int,
            "style": str,
            "seed": int,
            "similarity": float,
            "path": str,
            "guild_id": str,
            "channel_id": str,
            "message_id": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
    )
    db["guild_settings"].create(
        {
            "guild_id": str,
            "gallery_channel_id": str,
            "daily_quota": int,
            "allowed_styles": str,  # json list, empty = all
            "nsfw_policy": str,
            "updated_at": str,
        },
        pk="guild_id",
    )
    db["gallery_entries"].create(
        {
            "id": int,
            "guild_id": str,
            "portrait_id": int,
            "user_id": str,
            "channel_id": str,
            "message_id": str,
            "likes": int,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("portrait_id", "portraits", "id"), ("user_id", "users", "id")],
    )
    db["gallery_entries"].create_index(["guild_id", "portrait_id"], unique=True)


def _job_queue(db: sqlite_utils.Database) -> None:
    """What the persistent queue needs beyond the first jobs table."""
    jobs = db["jobs"]
    jobs.add_column("cancel_requested", int)
    jobs.add_column("run_after", str)  # a retried job waits until then
    jobs.add_column("heartbeat_at", str)
    jobs.add_column("delivered_at", str)  # the bot sets it once the result reached the user
    db["portraits"].create_index(["job_id"])
    jobs.create_index(["user_id", "state"])


def _galleries(db: sqlite_utils.Database) -> None:
    """Likes, weekly highlights and the web gallery link. (gallery_entries.likes from the first
    migration is not used: likes are counted from gallery_likes, so they can never drift.)"""
    db["gallery_likes"].create({"entry_id": int, "user_id": str, "created_at": str}, pk=("entry_id", "user_id"))
    db["gallery_likes"].create_index(["user_id"])
    settings = db["guild_settings"]
    settings.add_column("highlight_day", int)  # 0 = Monday ... 6 = Sunday; null = no weekly highlight
    settings.add_column("highlight_hour", int)  # UTC
    settings.add_column("last_highlight_at", str)
    settings.add_column("web_token", str)  # the secret part of the guild's web gallery address
    db["gallery_entries"].add_column("display_name", str)  # the sharer's name then, for the web page
    db["gallery_entries"].create_index(["guild_id", "created_at"])


def _safety(db: sqlite_utils.Database) -> None:
    """Portraits the safety check flagged (shown only where the server's NSFW policy allows)."""
    db["portraits"].add_column("nsfw", int, not_null_default=0)


def _queue_speed(db: sqlite_utils.Database) -> None:
    """When each user was last served, found by an index seek instead of a scan of the job history."""
    db.execute("create index jobs_last_served on jobs (user_id, coalesce(heartbeat_at, started_at))")


def _setup_problems(db: sqlite_utils.Database) -> None:
    """Problems only the bot's owner can fix (a model that cannot be had): one row per incident, so
    the owner is told once, not once per job."""
    db["setup_problems"].create({
        "id": int, "key": str, "message": str, "first_seen": str, "last_seen": str, "count": int,
        "notified_at": str, "resolved_at": str,
    }, pk="id")
    db["setup_problems"].create_index(["key", "resolved_at"])


def _blocked_words(db: sqlite_utils.Database) -> None:
    """Words a server's admins refuse in members' own prompt words (JSON list)."""
    db["guild_settings"].add_column("blocked_words", str)


def _ran_on(db: sqlite_utils.Database) -> None:
    """Which worker last ran each job (`facechain jobs list` shows it)."""
    db["jobs"].add_column("ran_on", str)


def _typical_run_times(db: sqlite_utils.Database) -> None:
    """Each kind's latest finished jobs by an index seek (ETAs read them for every watched job), and the
    jobs whose outcome has not reached their member without a scan of the whole history (the bot looks
    every second)."""
    db.execute("create index jobs_kind_done on jobs (kind, state, id)")
    db.execute("create index jobs_awaiting_delivery on jobs (id) where channel_id is not null and delivered_at is null")


def _lease_tokens(db: sqlite_utils.Database) -> None:
    """Each claim's own token (fencing): only the current holder of a job may heartbeat, record or end it."""
    db["jobs"].add_column("lease_token", str)


def _job_ids_never_reused(db: sqlite_utils.Database) -> None:
    """A job id is never given again, even after its member was forgotten (SQLite reuses the highest
    id once its row is gone): a progress message still watching a forgotten member's job must never
    show, or receive, another member's job. The table is rebuilt with AUTOINCREMENT (no table holds
    a foreign key to it)."""
    create = db["jobs"].schema
    indexes = [sql for (sql,) in db.execute(
        "select sql from sqlite_master where type = 'index' and tbl_name = 'jobs' and sql is not null")]
    rebuilt = create.replace('CREATE TABLE "jobs"', 'CREATE TABLE "jobs_rebuilt"', 1).replace(
        '"id" INTEGER PRIMARY KEY', '"id" INTEGER PRIMARY KEY AUTOINCREMENT', 1)
    db.execute(rebuilt)
    db.execute('insert into "jobs_rebuilt" select * from "jobs"')
    db.execute('drop table "jobs"')
    db.execute('alter table "jobs_rebuilt" rename to "jobs"')
    for sql in indexes:
        db.execute(sql)


def _suggested_subject(db: sqlite_utils.Database) -> None:
    """What a face engine that reads gender and age suggests for a member (never used unless they pick it)."""
    db["users"].add_column("suggested_subject", str)


def _together(db: sqlite_utils.Database) -> None:
    """Two members in one picture: who may put a member in one (users.together: ask, always or never;
    null is ask), the requests waiting on an answer, the requesters a member refuses for good, a
    picture's second member, and which of a two-member picture's members agreed to share it."""
    db["users"].add_column("together", str)
    db["portraits"].add_column("partner_id", str)
    db["portraits"].create_index(["partner_id"])
    db["together_requests"].create({
        "id": int, "requester_id": str, "partner_id": str, "guild_id": str, "channel_id": str,
        "params": str,  # json: what to draw, as the job will get it
        "state": str,  # asked / allowed / declined / expired
        "created_at": str, "expires_at": str, "answered_at": str,
        "message_channel_id": str, "message_id": str,  # the partner's Allow / Decline message
        "job_id": int,
    }, pk="id")
    db["together_requests"].create_index(["partner_id", "state"])
    db["together_requests"].create_index(["requester_id"])
    db["together_requests"].create_index(["state", "expires_at"])
    db["together_refusals"].create({"user_id": str, "requester_id": str, "created_at": str},
                                   pk=("user_id", "requester_id"))
    db["share_approvals"].create({"portrait_id": int, "user_id": str, "created_at": str}, pk=("portrait_id", "user_id"))
    db["share_approvals"].create_index(["user_id"])


def _families(db: sqlite_utils.Database) -> None:
    """Face models belong to a base model family (sd15, sdxl); `runtime` keeps the family the workers draw
    with, so every process looks up face models of that one."""
    db["face_models"].add_column("family", str, not_null_default="sd15")
    db["runtime"].create({"key": str, "value": str}, pk="key")


def _trust(db: sqlite_utils.Database) -> None:
    """What keeps consent and moderation honest: a request answered for the partner without asking them
    (`silent`: not enrolled, `never` or refused, told as a decline after a human's kind of wait); every
    message a result was sent in (so Delete for both reaches each copy); the weekly highlight posts and
    the pictures in them (so forgetting takes them down); a server's bars, reports and audit log; each
    member's identity vector for the bot-wide face match at enrollment."""
    db["together_requests"].add_column("silent", int, not_null_default=0)
    db["together_requests"].create_index(["requester_id", "partner_id", "state"])
    db["result_messages"].create({"job_id": int, "channel_id": str, "message_id": str, "created_at": str},
                                 pk=("job_id", "message_id"))
    db["highlight_posts"].create({"id": int, "guild_id": str, "channel_id": str, "message_id": str,
                                  "portrait_ids": str, "created_at": str}, pk="id")  # portrait_ids: json
    db["bars"].create({"guild_id": str, "user_id": str, "reason": str, "barred_by": str, "created_at": str},
                      pk=("guild_id", "user_id"))
    db["reports"].create({
        "id": int, "guild_id": str, "portrait_id": int, "entry_id": int, "reporter_id": str,
        "state": str,  # open / removed / dismissed
        "channel_id": str, "message_id": str,  # where the admins were shown it
        "created_at": str, "handled_by": str, "handled_at": str,
    }, pk="id")
    db["reports"].create_index(["guild_id", "state"])
    db["audit_log"].create({"id": int, "guild_id": str, "action": str, "actor_id": str, "target_id": str,
                            "detail": str, "created_at": str}, pk="id")
    db["audit_log"].create_index(["guild_id", "id"])
    db["guild_settings"].add_column("report_channel_id", str)
    db["identities"].create({"user_id": str, "backend": str, "vector": bytes, "photos": int, "updated_at": str},
                            pk=("user_id", "backend"))
    db["identities"].create_index(["backend"])
    _backfill_identities(db)


def _backfill_identities(db: sqlite_utils.Database) -> None:
    """Members enrolled before the face match get their identity from the selfies they have."""
    import numpy as np

    groups: dict[tuple[str, str], list] = {}
    for user_id, backend, vector in db.execute("select user_id, embedding_backend, embedding from selfies "
                                               "where status = 'accepted' and embedding is not null"):
        groups.setdefault((user_id, backend), []).append(np.frombuffer(vector, np.float32))
    db["identities"].insert_all(({"user_id": user_id, "backend": backend, "photos": len(vectors),
                                  "vector": np.mean(np.stack(vectors), axis=0).astype(np.float32).tobytes(),
                                  "updated_at": ""} for (user_id, backend), vectors in groups.items()))


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_initial, _job_queue, _galleries, _safety,
                                                             _queue_speed, _setup_problems, _blocked_words, _ran_on,
                                                             _typical_run_times, _lease_tokens, _job_ids_never_reused,
                                                             _suggested_subject, _together, _families, _trust]
