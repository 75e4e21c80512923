"""The job queue in the store's SQLite file.

A claim happens inside `BEGIN IMMEDIATE`, which takes the database's write lock before reading,
so two workers (threads or processes) can never take the same job. A claim is a lease: the
worker heartbeats to keep it, and a job whose lease ran out (its worker was killed) goes back
to the queue and is resumed by the next worker. An idle worker's look at an empty queue is a plain
read: it takes the write lock only when there is work in sight.

Fairness: the next job belongs to the user served least recently, so one member's twenty
requests wait behind everybody else's first one; a user's own jobs run in order, a read of their
face for instant portraits first (conditions.MEMBER_ORDER).
"""

from __future__ import annotations

import json
import math
import secrets
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from itertools import accumulate, zip_longest

from engine.config import Settings
from engine.errors import FaceChainError
from engine.jobs.queue.base import FINISHED, WAITING_FOR_SETUP, Job, Lease, LeaseLost, QueueLimit, QueuePosition
from engine.jobs.queue.conditions import BACK_IN_QUEUE, LEASE_RAN_OUT, MEMBER_ORDER, NO_LEASE, claimable
from engine.jobs.queue.progress_board import ProgressBoard
from engine.store import Store, equal_to
from engine.store.community import guild_settings
from engine.store.moderation import check_not_barred

KINDS = ("enroll", "instant", "train", "generate", "swap", "redraw", "upscale", "together", "teaser", "preview")
# Claimed in tiers, by each user's next job: members' requests; then previews of a member's look while their
# first face model trains ("teaser", queued before that training: behind trained members' portraits, before the
# member's own training); then the styles browser's preview images.
TIERS = (("enroll", "instant", "train", "generate", "swap", "redraw", "upscale", "together"), ("teaser",), ("preview",))
PICTURE_KINDS = ("generate", "swap", "redraw", "upscale", "together")
# For ETAs until the server has finished jobs of its own to measure.
TYPICAL_SECONDS = {"enroll": 10.0, "instant": 5.0, "train": 180.0, "generate": 30.0, "swap": 5.0, "redraw": 20.0,
                   "upscale": 30.0, "together": 40.0, "teaser": 20.0, "preview": 5.0}


def now() -> datetime:
    return datetime.now(timezone.utc)


def stamp(moment: datetime) -> str:
    """Microsecond ISO times: they sort as strings in the same order as in time."""
    return moment.isoformat(timespec="microseconds")


class SqliteJobQueue:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.db = store.db
        self._typical: dict[str, tuple[int | None, float]] = {}  # kind -> (latest done job, mean seconds)
        self._board: ProgressBoard | None = None

    @property
    def board(self) -> ProgressBoard:
        """Running jobs' progress between their lease's beats (its own file: none of the queue's write lock)."""
        if self._board is None:
            self._board = ProgressBoard(self.store.data_dir)
        return self._board

    def _row(self, job_id: int) -> dict | None:
        rows = list(self.db["jobs"].rows_where("id = ?", [job_id]))
        return rows[0] if rows else None

    def _jobs(self, rows: Iterable[dict]) -> list[Job]:
        rows = list(rows)
        claims = {row["id"]: row["lease_token"] for row in rows if row["state"] == "running"}
        jobs = [_job(row) for row in rows]
        return self.board.lay_over(jobs, claims) if claims else jobs  # no board file until a job runs

    def get(self, job_id: int) -> Job | None:
        row = self._row(job_id)
        return self._jobs([row])[0] if row else None

    # --- enqueue ----------------------------------------------------------------------------------

    def enqueue(self, kind: str, user_id: str, params: dict | None = None, guild_id: str | None = None,
                channel_id: str | None = None, follows: int | None = None) -> Job:
        """Queue a job within the limits; `follows` is a running job this one continues (a training that
        trains again as it ends), which the one-training-at-a-time rule does not count."""
        if kind not in KINDS:
            raise FaceChainError(f"Unknown job kind {kind!r}: one of {', '.join(KINDS)}.")
        with self.store.transaction():
            check_not_barred(self.store, guild_id, user_id)
            self.store.touch_user(user_id)
            self._check_limits(kind, user_id, guild_id, follows)
            job_id = self.db["jobs"].insert({
                "kind": kind, "user_id": user_id, "guild_id": guild_id, "channel_id": channel_id,
                "params": json.dumps(params or {}), "state": "queued", "attempts": 0, "progress": 0.0,
                "progress_text": "queued", "cancel_requested": 0, "created_at": stamp(now()),
            }).last_pk
        return self.get(job_id)

    def _check_limits(self, kind: str, user_id: str, guild_id: str | None, follows: int | None = None) -> None:
        def count(where: str, params: list) -> int:
            return self.db.execute(f"select count(*) from jobs where {where}", params).fetchone()[0]

        active = "state in ('queued', 'running')"
        if kind == "train" and count(f"user_id = ? and kind = 'train' and {active} and id != ?",
                                     [user_id, follows or 0]):
            raise QueueLimit("Your face model is already training: wait for it to finish (or cancel it) first.")
        limit = self.settings.max_queued_portraits_per_user
        # Every request that makes pictures counts towards the waiting limit (portraits, swaps, sharper x2).
        pictures = f"kind in {PICTURE_KINDS}"
        if kind in PICTURE_KINDS and count(f"user_id = ? and {pictures} and {active}", [user_id]) >= limit:
            raise QueueLimit(f"You already have {limit} portrait requests waiting: wait for one to finish.")
        quota = self.settings.guild_daily_quota
        if guild_id is not None:
            override = guild_settings(self.store, guild_id).daily_quota
            quota = quota if override is None else override
        if quota and guild_id is not None:
            midnight = stamp(now().replace(hour=0, minute=0, second=0, microsecond=0))
            if count("guild_id = ? and created_at >= ? and state != 'cancelled'", [guild_id, midnight]) >= quota:
                raise QueueLimit(f"This server has used its {quota} jobs for today: try again after midnight UTC.")

    # --- claiming -------------------------------------------------------------------------------------

    def claim(self, worker_id: str, kinds: tuple[str, ...] | None = None) -> Job | None:
        """The next job in fair order, leased to `worker_id`; None when nothing is ready."""
        kinds = kinds or KINDS
        if not self._work_in_sight(kinds):  # idle workers look several times a second: no write lock for that
            return None
        with self.store.transaction():
            self._reap(now())
            # Each user's next job, then the first tier that has any: a user whose next job is a lower tier
            # waits (their later jobs too) until no user's next job is of a higher one.
            ready = self._ready_heads(kinds)
            heads = next((found for tier in TIERS if (found := [h for h in ready if h["kind"] in tier])), [])
            if not heads:
                return None
            job_id = self._fair_order(heads)[0]["id"]  # the same order position() reports
            moment, token = now(), secrets.token_hex(8)
            self.db.execute(
                """update jobs set state = 'running', lease_owner = ?, lease_token = ?, lease_expires_at = ?,
                   heartbeat_at = ?, attempts = attempts + 1, started_at = coalesce(started_at, ?),
                   progress_text = 'starting', ran_on = ? where id = ? and state = 'queued'""",
                [worker_id, token, stamp(moment + self._lease()), stamp(moment), stamp(moment), worker_id, job_id],
            )
        return replace(self.get(job_id), lease=Lease(job_id, worker_id, token))

    def _work_in_sight(self, kinds: tuple[str, ...]) -> bool:
        """A plain read: a job of `kinds` that may run now (not one waiting for its retry time or for a
        training), or a lease to take back. (A job enqueued just after it is claimed on the worker's next look.)"""
        moment = stamp(now())
        return bool(self.db.execute(
            f"select exists(select 1 from jobs j where {claimable(kinds)}) "
            f"or exists(select 1 from jobs where {LEASE_RAN_OUT})",
            [*kinds, moment, moment]).fetchone()[0])

    def _lease(self) -> timedelta:
        return timedelta(seconds=self.settings.job_lease_seconds)

    def _ready_heads(self, kinds: tuple[str, ...]) -> list[dict]:
        """Each user's next job of `kinds` that may run now (MEMBER_ORDER; the fair order's first job is one of
        these). A portrait that chose to wait for a training in progress waits."""
        if not kinds:
            return []
        return list(self.db.query(
            f"""select id, user_id, kind from (select j.id, j.user_id, j.kind, row_number() over (
                   partition by j.user_id order by {MEMBER_ORDER}) as place from jobs j where {claimable(kinds)})
                where place = 1""", [*kinds, stamp(now())]))

    def _last_served(self) -> dict[str, str]:
        """When each user with a queued job was last served (never served: absent). One index seek per
        queued user (jobs_last_served), however long the job history is."""
        served = dict(self.db.execute(
            "select u.user_id, (select max(coalesce(heartbeat_at, started_at)) from jobs where user_id = u.user_id) "
            "from (select distinct user_id from jobs where state = 'queued') u").fetchall())
        return {user: at for user, at in served.items() if at is not None}

    def _fair_order(self, queued: list[dict], served: dict[str, str] | None = None) -> list[dict]:
        """Round-robin across users, least recently served first; FIFO within a user (`queued` in id order)."""
        served = self._last_served() if served is None else served
        by_user: dict[str, list[dict]] = defaultdict(list)
        for row in queued:
            by_user[row["user_id"]].append(row)
        # Users never served go first (in order of their first request), then by last service time.
        users = sorted(by_user, key=lambda u: (served.get(u) is not None, served.get(u) or "", by_user[u][0]["id"]))
        # Round r takes each user's r-th job, in user order.
        rounds = zip_longest(*(by_user[user] for user in users))
        return [row for round_ in rounds for row in round_ if row is not None]

    # --- the worker's side ----------------------------------------------------------------------------

    def _owned(self, lease: Lease) -> dict:
        row = self._row(lease.job_id)
        if row is None or row["state"] != "running" or row["lease_owner"] != lease.worker_id \
                or row["lease_token"] != lease.token:
            raise LeaseLost(f"Job {lease.job_id} is no longer leased to {lease.worker_id} under this claim.")
        return row

    def check_lease(self, lease: Lease) -> None:
        """LeaseLost unless `lease` is still the job's current claim (not cancelled, expired, claimed
        again or forgotten meanwhile)."""
        self._owned(lease)

    def kept_result(self, lease: Lease) -> dict | None:
        """The result an earlier attempt of this job recorded before its end could be written (its
        `complete` failed): the job is finished with it instead of being computed and recorded again."""
        return _loads(self._owned(lease)["result"])

    def keep_result(self, lease: Lease, result: dict) -> None:
        """Note a job's recorded result; call it in the transaction that records it, so that the two
        happen together or not at all."""
        with self.store.transaction():
            self._owned(lease)
            self.db["jobs"].update(lease.job_id, {"result": json.dumps(result)})

    def record_ran_on(self, job_id: int, where: str) -> None:
        """Where a claimed job runs (a cluster actor and its node), shown by `facechain jobs list`."""
        with self.store.transaction():
            self.db["jobs"].update(job_id, {"ran_on": where[:200]})

    def heartbeat(self, lease: Lease, progress: float | None = None, text: str | None = None) -> bool:
        """Extend the lease and record progress; True when the job's cancellation was requested."""
        job_id = lease.job_id
        with self.store.transaction():
            row = self._owned(lease)
            moment = now()
            changes = {"lease_expires_at": stamp(moment + self._lease()), "heartbeat_at": stamp(moment)}
            if progress is not None:
                changes["progress"] = max(0.0, min(1.0, float(progress)))
            if text is not None:
                changes["progress_text"] = text[:200]
            self.db["jobs"].update(job_id, changes)
        return bool(row["cancel_requested"])

    def complete(self, lease: Lease, result: dict) -> Job:
        with self.store.transaction():
            self._owned(lease)
            self._finish(lease.job_id, "done", result=json.dumps(result), progress=1.0, progress_text="done")
        return self.get(lease.job_id)

    def fail(self, lease: Lease, error: str, transient: bool = False, params_update: dict | None = None) -> Job:
        """A transient failure is retried with backoff while attempts last; anything else fails now."""
        job_id = lease.job_id
        with self.store.transaction():
            row = self._owned(lease)
            changes: dict = {}
            if params_update:
                changes["params"] = json.dumps({**json.loads(row["params"] or "{}"), **params_update})
            if transient and row["attempts"] < self.settings.job_max_attempts:
                delay = self.settings.job_retry_seconds * 2 ** (row["attempts"] - 1)
                self.db["jobs"].update(job_id, {
                    **changes, "state": "queued", **NO_LEASE,
                    "run_after": stamp(now() + timedelta(seconds=delay)), "error": error[:1000],
                    "progress_text": f"retrying in {delay:.0f} s",
                })
            else:
                if changes:
                    self.db["jobs"].update(job_id, changes)
                if transient:  # a passing failure, for the last time: say so, promise nothing
                    tries = "once" if row["attempts"] == 1 else f"{row['attempts']} times"
                    error = f"{error} It failed {tries}, so it was stopped: please ask again later."
                self._finish(job_id, "failed", error=error[:1000], progress_text="failed")
        return self.get(job_id)

    def release(self, lease: Lease) -> Job:
        """Give a job back untouched (the worker is shutting down); it does not count as an attempt."""
        with self.store.transaction():
            self._owned(lease)
            self.db.execute(
                f"update jobs set {BACK_IN_QUEUE}, "
                "attempts = attempts - 1, progress_text = 'queued (worker restarted)' where id = ?", [lease.job_id])
        return self.get(lease.job_id)

    def wait_for_training(self, lease: Lease, text: str) -> Job:
        """Put a portrait back to wait for the member's face model, rebuilt for a new base model (no attempt
        used): it runs once that training ends."""
        with self.store.transaction():
            row = self._owned(lease)
            params = {**json.loads(row["params"] or "{}"), "wait_for_training": True, "rebuilding": True}
            self.db.execute(f"update jobs set {BACK_IN_QUEUE}, attempts = attempts - 1, params = ?, progress = 0, "
                            "progress_text = ? where id = ?", [json.dumps(params), text, lease.job_id])
        return self.get(lease.job_id)

    def wait_for_setup(self, lease: Lease, seconds: float, also_kinds: tuple[str, ...] = ()) -> Job:
        """Put a job back to wait for the owner to fix the setup: no attempt is used, and it is tried
        again after about `seconds` (and again, until the setup works). The same member's queued jobs of
        `also_kinds` (those that need the same models) wait with it until the same moment, so once the
        setup works the member's jobs run in their order, not in the order they happened to fail in."""
        retry_at = stamp(datetime.fromtimestamp(math.ceil((now().timestamp() + seconds) / seconds) * seconds,
                                                timezone.utc))
        job_id = lease.job_id
        with self.store.transaction():
            row = self._owned(lease)
            self.db.execute(
                f"update jobs set {BACK_IN_QUEUE}, "
                "attempts = attempts - 1, run_after = ?, progress = 0, progress_text = ? where id = ?",
                [retry_at, WAITING_FOR_SETUP, job_id])
            if also_kinds:
                marks = ", ".join("?" for _ in also_kinds)
                self.db.execute(
                    f"update jobs set run_after = ?, progress_text = ? where user_id = ? and state = 'queued' "
                    f"and id != ? and kind in ({marks})", [retry_at, WAITING_FOR_SETUP, row["user_id"], job_id,
                                                          *also_kinds])
        return self.get(job_id)

    def hold_for_setup(self, waiting: bool = True) -> int:
        """Show every queued job as waiting for the owner's fix (nothing can run them: the cluster serves
        nobody, the worker cannot start), or, with `waiting=False`, as queued again once it works.
        Returns how many changed."""
        with self.store.transaction():
            if waiting:
                return self.db.execute("update jobs set progress_text = ? where state = 'queued' and progress_text "
                                       "!= ?", [WAITING_FOR_SETUP, WAITING_FOR_SETUP]).rowcount
            return self.db.execute(  # not the jobs that wait for a model (they come back on their own clock)
                "update jobs set progress_text = 'queued' where state = 'queued' and progress_text = ? "
                "and (run_after is null or run_after <= ?)", [WAITING_FOR_SETUP, stamp(now())]).rowcount

    def _finish(self, job_id: int, state: str, **changes) -> None:
        self.db["jobs"].update(job_id, {"state": state, **NO_LEASE,
                                        "finished_at": stamp(now()), **changes})

    # --- users and admins -----------------------------------------------------------------------------

    def cancel(self, job_id: int, user_id: str | None = None) -> Job:
        """Cancel a waiting job at once; ask a running one to stop. `user_id` must own the job if given."""
        with self.store.transaction():
            row = self._row(job_id)
            if row is None or (user_id is not None and row["user_id"] != user_id):
                raise FaceChainError(f"No job {job_id} of yours to cancel." if user_id else f"No job {job_id}.")
            if row["state"] in FINISHED:
                raise FaceChainError(f"Job {job_id} has already finished ({row['state']}).")
            if row["state"] == "queued":
                self._finish(job_id, "cancelled", progress_text="cancelled")
            else:
                self.db["jobs"].update(job_id, {"cancel_requested": 1, "progress_text": "cancelling"})
        return self.get(job_id)

    def cancel_was_requested(self, job_id: int) -> bool:
        row = self.db.execute("select cancel_requested from jobs where id = ?", [job_id]).fetchone()
        return bool(row and row[0])

    def mark_cancelled(self, lease: Lease) -> Job:
        with self.store.transaction():
            self._owned(lease)
            self._finish(lease.job_id, "cancelled", progress_text="cancelled")
        return self.get(lease.job_id)

    def mark_delivered(self, job_id: int) -> None:
        with self.store.transaction():
            self.db["jobs"].update(job_id, {"delivered_at": stamp(now())})

    def undelivered(self) -> list[Job]:
        """Finished jobs whose result has not reached the user yet (the bot delivers them on start)."""
        rows = self.db["jobs"].rows_where("state in ('done', 'failed') and delivered_at is null", order_by="id")
        return [_job(row) for row in rows]

    def awaiting_delivery(self, watched: Iterable[int] | None = None) -> list[Job]:
        """Jobs a chat user is waiting on (they carry a channel) whose outcome has not reached them. With
        `watched`, only the finished ones and those of `watched` (the ones the bot shows progress of):
        the rest of a long backlog is not read every second."""
        where, params = "channel_id is not null and delivered_at is null", []
        if watched is not None:
            marks = ", ".join(f"'{state}'" for state in FINISHED)
            where += f" and (state in ({marks}) or id in (select value from json_each(?)))"
            params = [json.dumps(list(watched))]
        return self._jobs(self.db["jobs"].rows_where(where, params, order_by="id"))

    def jobs(self, state: str | None = None, user_id: str | None = None, limit: int = 100) -> list[Job]:
        where, params = equal_to({"state": state, "user_id": user_id})
        return self._jobs(self.db["jobs"].rows_where(" and ".join(where) or None, params, order_by="id desc",
                                                      limit=limit))

    def active_jobs(self, user_id: str | None = None, guild_id: str | None = None) -> list[Job]:
        """Queued and running jobs, oldest first, of a user or a guild (or all)."""
        where, params = equal_to({"user_id": user_id, "guild_id": guild_id})
        where.append("state in ('queued', 'running')")
        return self._jobs(self.db["jobs"].rows_where(" and ".join(where), params, order_by="id"))

    def active_pictures_with(self, partner_id: str) -> list[Job]:
        """Queued and running pictures together that draw `partner_id` beside the member who asked."""
        where = "kind = 'together' and state in ('queued', 'running') and json_extract(params, '$.with') = ?"
        return [_job(row) for row in self.db["jobs"].rows_where(where, [partner_id], order_by="id")]

    # --- position and ETA -----------------------------------------------------------------------------

    def typical_seconds(self, kind: str) -> float:
        """Mean run time of the last 20 finished jobs of a kind, or a typical figure before any. Cached
        per kind, and measured again once a newer job of that kind has finished (in any process)."""
        return self._typical_run_times()[kind]

    def _typical_run_times(self) -> dict[str, float]:
        latest = dict(self.db.execute(
            "select k.kind, (select max(id) from jobs where kind = k.kind and state = 'done') from ("
            + " union all ".join("select ? as kind" for _ in KINDS) + ") k", KINDS).fetchall())
        for kind in KINDS:
            cached = self._typical.get(kind)
            if cached is None or cached[0] != latest[kind]:
                self._typical[kind] = (latest[kind], self._measure_typical(kind))
        return {kind: seconds for kind, (_, seconds) in self._typical.items()}

    def _measure_typical(self, kind: str) -> float:
        rows = self.db.execute(
            "select started_at, finished_at from jobs where kind = ? and state = 'done' and started_at is not null "
            "order by id desc limit 20", [kind]).fetchall()
        spans = [(datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() for start, end in rows]
        return sum(spans) / len(spans) if spans else TYPICAL_SECONDS[kind]

    def position(self, job_id: int) -> QueuePosition | None:
        return self.positions([job_id]).get(job_id)

    def positions(self, job_ids: Iterable[int]) -> dict[int, QueuePosition]:
        """Where each of `job_ids` stands, from one pass over the queue (delivery refreshes every watched
        job at once); finished and unknown jobs are left out. A running job is at 0 with its time left;
        a queued one at its place in the order the worker claims in (members' requests, then previews
        while a first face model trains, then style previews; fair within each), with the time of the
        running jobs and of the jobs ahead of it."""
        wanted = list(dict.fromkeys(job_ids))
        if not wanted:
            return {}
        rows = self.db.execute(
            "select id, kind, state, progress from jobs where id in (select value from json_each(?))",
            [json.dumps(wanted)]).fetchall()
        typical = self._typical_run_times()
        positions = {job_id: QueuePosition(0, (1.0 - (progress or 0.0)) * typical[kind])
                     for job_id, kind, state, progress in rows if state == "running"}
        queued = [(job_id, kind) for job_id, kind, state, _ in rows if state == "queued"]
        if not queued:
            return positions
        busy = sum((1.0 - (progress or 0.0)) * typical[kind] for kind, progress in
                   self.db.execute("select kind, progress from jobs where state = 'running'"))
        waiting = list(self.db.query(f"select j.id, j.user_id, j.kind from jobs j where j.state = 'queued' "
                                     f"order by {MEMBER_ORDER}"))
        served = self._last_served()
        order = [row for tier in TIERS for row in self._fair_order([r for r in waiting if r["kind"] in tier], served)]
        places = {row["id"]: index for index, row in enumerate(order)}
        ahead = list(accumulate((typical[row["kind"]] for row in order), initial=0.0))
        for job_id, kind in queued:
            if (place := places.get(job_id)) is not None:  # else claimed between the reads: asked again soon
                positions[job_id] = QueuePosition(place + 1, busy + ahead[place] + typical[kind])
        return positions

    # --- leases -----------------------------------------------------------------------------------------

    def reap_expired(self) -> int:
        with self.store.transaction():
            return self._reap(now())

    def reclaim_leases(self, owners: list[str]) -> int:
        """Put the running jobs leased to `owners` (workers known to be gone) back in the queue now,
        instead of after their lease runs out."""
        if not owners:
            return 0
        marks = ", ".join("?" for _ in owners)
        with self.store.transaction():
            return self.db.execute(
                f"update jobs set {BACK_IN_QUEUE}, "
                f"progress_text = 'queued (worker stopped)' where state = 'running' and lease_owner in ({marks})",
                owners).rowcount

    def lease_owners(self) -> list[str]:
        return [owner for (owner,) in self.db.execute(
            "select distinct lease_owner from jobs where state = 'running' and lease_owner is not null")]

    def _reap(self, moment: datetime) -> int:
        """Running jobs whose worker stopped heartbeating go back to the queue."""
        return self.db.execute(
            f"update jobs set {BACK_IN_QUEUE}, "
            f"progress_text = 'queued (worker stopped)' where {LEASE_RAN_OUT}",
            [stamp(moment)],
        ).rowcount


def _job(row: dict) -> Job:
    return Job(
        id=row["id"], kind=row["kind"], user_id=row["user_id"], guild_id=row["guild_id"],
        channel_id=row["channel_id"], params=json.loads(row["params"] or "{}"), state=row["state"],
        attempts=row["attempts"] or 0, progress=row["progress"] or 0.0, progress_text=row["progress_text"] or "",
        error=row["error"], result=_loads(row["result"]),
        cancel_requested=bool(row["cancel_requested"]), created_at=row["created_at"],
        started_at=row["started_at"], finished_at=row["finished_at"], delivered_at=row["delivered_at"],
        ran_on=row.get("ran_on"),
    )


def _loads(text: str | None) -> dict | None:
    return json.loads(text) if text else None


def open_queue(settings: Settings, store: Store | None = None) -> SqliteJobQueue:
    return SqliteJobQueue(store or Store(settings.data_dir), settings)



