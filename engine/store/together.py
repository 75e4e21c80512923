"""Who may put a member in a picture with another member, and the requests waiting on an answer.

Each member chooses in `/facechain me` (or `facechain users set --together`): `ask` (the default),
`always` or `never`, and may refuse one requester for good from a request's message. A request asks
once; it is allowed, declined, or expires after ANSWER_HOURS. The requester only ever learns
NOT_ALLOWED (declined, `never`, refused for good, not enrolled) or NO_ANSWER (expired), never which
made it so, and never sooner than a person could answer: a request the partner is not asked about
(`silent`) is declined after a random wait of SILENT_WAIT seconds, as a person's decline comes. The
worker checks again before it draws and inside the transaction that records the picture (`may_draw`):
a member who changed their mind, or was forgotten, is never drawn.

Limits: one open question per pair, and ASKS_PER_DAY questions a day per asker (the setting
FACECHAIN_TOGETHER_ASKS_PER_DAY).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from engine.errors import FaceChainError

if TYPE_CHECKING:
    import sqlite_utils

    from engine.store.store import Store

CHOICES = ("ask", "always", "never")
DEFAULT_CHOICE = "ask"
ANSWER_HOURS = 24
DEFAULT_STYLE = "polaroid"  # a scene without a style named: a snapshot of friends
DEFAULT_POSE = "side-by-side"
NOT_ALLOWED = "not allowed"
NO_ANSWER = "no answer"
SILENT_WAIT = (45.0, 1800.0)  # seconds: a decline the partner was not asked about comes after a person's kind of wait


@dataclass(frozen=True)
class TogetherRequest:
    id: int
    requester_id: str
    partner_id: str
    guild_id: str | None
    channel_id: str | None
    params: dict
    state: str  # asked / allowed / declined / expired
    created_at: str
    expires_at: str
    message_channel_id: str | None = None
    message_id: str | None = None
    job_id: int | None = None
    silent: bool = False  # the partner is not asked: declined when it expires


def silent_wait() -> float:
    """Seconds until a silent request is declined: log-uniform over SILENT_WAIT, as people answer."""
    low, high = SILENT_WAIT
    return math.exp(random.uniform(math.log(low), math.log(high)))


@dataclass(frozen=True)
class Asked:
    """What asking came to: `go` (the partner allows it always), `refused` (answered NOT_ALLOWED at once)
    or `asked` (`request` waits on the partner's answer)."""

    outcome: str
    request: TogetherRequest | None = None


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def together_choice(store: Store, user_id: str) -> str:
    row = store.db.execute("select together from users where id = ?", [user_id]).fetchone()
    return (row[0] if row else None) or DEFAULT_CHOICE


def set_together(store: Store, user_id: str, choice: str) -> str:
    """Set who may put `user_id` in a picture with someone (one of CHOICES); FaceChainError for an unknown
    member or choice."""
    if choice not in CHOICES:
        raise FaceChainError(f"Unknown choice {choice!r}: one of {', '.join(CHOICES)}.")
    with store.transaction():
        if not store.db.execute("update users set together = ? where id = ?", [choice, user_id]).rowcount:
            raise FaceChainError(f"User {user_id} is not enrolled.")
    return choice


def _refuses(store: Store, partner_id: str, requester_id: str) -> bool:
    return store.db.execute("select 1 from together_refusals where user_id = ? and requester_id = ?",
                            [partner_id, requester_id]).fetchone() is not None


def ask(store: Store, requester_id: str, partner_id: str, params: dict, guild_id: str | None = None,
        channel_id: str | None = None, now: datetime | None = None, ready: bool = True,
        asks_per_day: int = 10) -> Asked:
    """Ask `partner_id` whether `requester_id` may put them in a picture (what `params` describes).

    `ready`: the partner has what the picture needs (a face model, or enrolled selfies for a photo). A
    partner who is not ready, chose `never` or refuses this requester is not asked: the request is
    `silent`, declined after a person's kind of wait, so the asker cannot tell which it was."""
    moment = _now(now)
    with store.transaction():
        open_question = store.db.execute(
            "select expires_at from together_requests where requester_id = ? and partner_id = ? and state = 'asked'",
            [requester_id, partner_id]).fetchone()
        if open_question:
            expires = int(datetime.fromisoformat(open_question[0]).timestamp())
            raise FaceChainError(f"You already asked <@{partner_id}>: wait for their answer (the question ends "
                                 f"<t:{expires}:R>).")
        since = _stamp(moment - timedelta(days=1))
        asked_today = store.db.execute("select count(*) from together_requests where requester_id = ? and "
                                       "created_at > ?", [requester_id, since]).fetchone()[0]
        if asks_per_day and asked_today >= asks_per_day:
            raise FaceChainError(f"You can ask for {asks_per_day} pictures together a day: try again tomorrow.")
        choice = together_choice(store, partner_id) if ready else "never"
        silent = choice == "never" or _refuses(store, partner_id, requester_id)
        if choice == "always" and not silent:
            return Asked("go")
        expires = moment + (timedelta(seconds=silent_wait()) if silent else timedelta(hours=ANSWER_HOURS))
        request_id = store.db["together_requests"].insert({
            "requester_id": requester_id, "partner_id": partner_id, "guild_id": guild_id, "channel_id": channel_id,
            "params": json.dumps(params), "state": "asked", "created_at": _stamp(moment),
            "expires_at": _stamp(expires), "silent": int(silent),
        }).last_pk
    return Asked("asked", get_request(store, request_id))


def get_request(store: Store, request_id: int) -> TogetherRequest | None:
    rows = list(store.db["together_requests"].rows_where("id = ?", [request_id]))
    return _request(rows[0]) if rows else None


def _request(row: dict) -> TogetherRequest:
    return TogetherRequest(row["id"], row["requester_id"], row["partner_id"], row["guild_id"], row["channel_id"],
                           json.loads(row["params"] or "{}"), row["state"], row["created_at"], row["expires_at"],
                           row["message_channel_id"], row["message_id"], row["job_id"], bool(row.get("silent")))


def set_request_message(store: Store, request_id: int, channel_id: str, message_id: str) -> None:
    """Where the partner's Allow / Decline message is (it is edited when the request expires)."""
    with store.transaction():
        store.db["together_requests"].update(request_id, {"message_channel_id": channel_id, "message_id": message_id})


def answer(store: Store, request_id: int, partner_id: str, allow: bool, refuse_for_good: bool = False,
           now: datetime | None = None) -> TogetherRequest:
    """The partner's answer; FaceChainError when the request is not theirs, was answered or has expired."""
    moment = _now(now)
    with store.transaction():
        request = get_request(store, request_id)
        if request is None or request.partner_id != partner_id or request.silent:
            raise FaceChainError("This request is not for you.")
        if request.state != "asked" and request.state != "expired":
            raise FaceChainError(f"You already answered this request ({request.state}).")
        if request.state == "expired" or request.expires_at <= _stamp(moment):
            raise FaceChainError("This request has expired: nothing will be drawn.")
        state = "allowed" if allow else "declined"
        store.db["together_requests"].update(request_id, {"state": state, "answered_at": _stamp(moment)})
        if refuse_for_good:
            store.db["together_refusals"].upsert({"user_id": partner_id, "requester_id": request.requester_id,
                                                  "created_at": _stamp(moment)}, pk=("user_id", "requester_id"))
    return get_request(store, request_id)


def set_request_job(store: Store, request_id: int, job_id: int) -> None:
    with store.transaction():
        store.db["together_requests"].update(request_id, {"job_id": job_id})


def expire_due(store: Store, now: datetime | None = None) -> list[TogetherRequest]:
    """Requests unanswered past their day, now marked expired (their requesters are owed NO_ANSWER), and
    silent ones past their wait, now declined (owed NOT_ALLOWED)."""
    moment = _stamp(_now(now))
    # The bot asks every few seconds: a read first, so the database's write lock is taken only when one is due.
    if not store.db.execute("select 1 from together_requests where state = 'asked' and expires_at <= ? limit 1",
                            [moment]).fetchone():
        return []
    with store.transaction():
        rows = list(store.db["together_requests"].rows_where("state = 'asked' and expires_at <= ?", [moment]))
        store.db.execute("update together_requests set state = case when silent then 'declined' else 'expired' end, "
                         "answered_at = ? where state = 'asked' and expires_at <= ?", [moment, moment])
    return [_request({**row, "state": "declined" if row["silent"] else "expired"}) for row in rows]


def may_draw(store: Store, requester_id: str, partner_id: str, request_id: int | None) -> bool:
    """Whether `partner_id` allows `requester_id` to draw them now: enrolled, not `never`, not refusing
    this requester, and `always` or an allowed request between the two."""
    if store.get_user(partner_id) is None:
        return False
    choice = together_choice(store, partner_id)
    if choice == "never" or _refuses(store, partner_id, requester_id):
        return False
    if choice == "always":
        return True
    request = get_request(store, request_id) if request_id is not None else None
    return (request is not None and request.state == "allowed" and request.requester_id == requester_id
            and request.partner_id == partner_id)


def approve_share(store: Store, portrait_id: int, user_id: str) -> set[str]:
    """`user_id` agrees to share a two-member picture; returns everyone who has agreed so far."""
    with store.transaction():
        store.db["share_approvals"].upsert({"portrait_id": portrait_id, "user_id": user_id,
                                            "created_at": _stamp(_now(None))}, pk=("portrait_id", "user_id"))
    return {row[0] for row in store.db.execute("select user_id from share_approvals where portrait_id = ?",
                                               [portrait_id])}


def erase_together(db: sqlite_utils.Database, user_id: str) -> int:
    """A forgotten member's requests (either side), the refusals they made and their share approvals; run
    inside the forgetting's transaction. Returns the rows deleted. A refusal of them by another member is
    that member's data: it stays (by Discord id), so forgetting and enrolling again does not undo it."""
    return sum(db.execute(sql, [user_id, user_id][:sql.count("?")]).rowcount for sql in (
        "delete from together_requests where requester_id = ? or partner_id = ?",
        "delete from together_refusals where user_id = ?",
        "delete from share_approvals where user_id = ?",
    ))


def open_request_uploads(store: Store) -> set[str]:
    """The photos open questions still need (maintenance keeps them past its usual day)."""
    return {json.loads(params or "{}").get("upload") or "" for (params,) in store.db.execute(
        "select params from together_requests where state in ('asked', 'allowed') and "
        "(job_id is null or job_id in (select id from jobs where state in ('queued', 'running')))")} - {""}
