"""A server's moderation: its audit log, the members it barred, and the reports on its pictures.

Everything is per server (guild): a bar on one server changes nothing on another. The audit log keeps
AUDIT_DAYS of admins' actions, reports, bars and refusals of enrollment by face match; maintenance
deletes older rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from engine.errors import FaceChainError
from engine.store.store import Store, utc_now

AUDIT_DAYS = 90
AUDIT_PAGE = 10
BARRED = "A moderator of this server has barred you from FaceChain here."


@dataclass(frozen=True)
class AuditEntry:
    id: int
    guild_id: str
    action: str
    actor_id: str | None
    target_id: str | None
    detail: str
    created_at: str


def audit(store: Store, guild_id: str | None, action: str, actor_id: str | None = None,
          target_id: str | None = None, detail: str = "") -> None:
    """Write one line of a server's audit log (nothing for a DM: no server's admins to show it to)."""
    if not guild_id:
        return
    with store.transaction():
        store.db["audit_log"].insert({"guild_id": str(guild_id), "action": action, "actor_id": actor_id,
                                      "target_id": target_id, "detail": detail[:500], "created_at": utc_now()})


def audit_page(store: Store, guild_id: str, page: int = 0, per_page: int = AUDIT_PAGE) -> tuple[list[AuditEntry], int]:
    """A page of a server's audit log, newest first, and how many pages there are."""
    total = store.db.execute("select count(*) from audit_log where guild_id = ?", [guild_id]).fetchone()[0]
    rows = store.db.query("select * from audit_log where guild_id = ? order by id desc limit ? offset ?",
                          [guild_id, per_page, page * per_page])
    return [AuditEntry(**row) for row in rows], max(1, -(-total // per_page))


def delete_old_audit(store: Store, days: float = AUDIT_DAYS) -> int:
    since = (datetime.now(timezone.utc) - timedelta(days=days)).isoformat(timespec="seconds")
    with store.transaction():
        return store.db.execute("delete from audit_log where created_at < ?", [since]).rowcount


# --- bars ------------------------------------------------------------------------------------------

def is_barred(store: Store, guild_id: str | None, user_id: str) -> bool:
    return bool(guild_id) and store.db.execute("select 1 from bars where guild_id = ? and user_id = ?",
                                               [str(guild_id), user_id]).fetchone() is not None


def check_not_barred(store: Store, guild_id: str | None, user_id: str) -> None:
    if is_barred(store, guild_id, user_id):
        raise FaceChainError(BARRED)


def bar(store: Store, guild_id: str, user_id: str, actor_id: str, reason: str = "") -> bool:
    """Bar a member on one server; False when they already were. Their queued jobs there are the caller's
    to cancel (the queue lives beside the store)."""
    with store.transaction():
        if is_barred(store, guild_id, user_id):
            return False
        store.db["bars"].insert({"guild_id": guild_id, "user_id": user_id, "reason": reason[:300],
                                 "barred_by": actor_id, "created_at": utc_now()})
        audit(store, guild_id, "bar", actor_id, user_id, reason)
    return True


def unbar(store: Store, guild_id: str, user_id: str, actor_id: str) -> bool:
    with store.transaction():
        removed = store.db.execute("delete from bars where guild_id = ? and user_id = ?", [guild_id, user_id]).rowcount
        if removed:
            audit(store, guild_id, "unbar", actor_id, user_id)
    return bool(removed)


# --- reports ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Report:
    id: int
    guild_id: str
    portrait_id: int
    entry_id: int | None
    reporter_id: str
    state: str  # open / removed / dismissed
    channel_id: str | None
    message_id: str | None
    created_at: str
    handled_by: str | None
    handled_at: str | None


def report(store: Store, guild_id: str, portrait_id: int, reporter_id: str, entry_id: int | None = None) -> Report:
    """A member reports a picture to the server's admins; one open report per picture and reporter."""
    with store.transaction():
        if store.portrait(portrait_id) is None:
            raise FaceChainError("This picture no longer exists.")
        open_one = store.db.execute("select id from reports where guild_id = ? and portrait_id = ? and "
                                    "reporter_id = ? and state = 'open'", [guild_id, portrait_id, reporter_id]
                                    ).fetchone()
        if open_one:
            raise FaceChainError("You already reported this picture: the server's moderators have it.")
        report_id = store.db["reports"].insert({
            "guild_id": guild_id, "portrait_id": portrait_id, "entry_id": entry_id, "reporter_id": reporter_id,
            "state": "open", "created_at": utc_now()}).last_pk
        audit(store, guild_id, "report", reporter_id, None, f"picture {portrait_id}")
    return get_report(store, report_id)


def get_report(store: Store, report_id: int) -> Report | None:
    rows = list(store.db["reports"].rows_where("id = ?", [report_id]))
    return Report(**rows[0]) if rows else None


def set_report_message(store: Store, report_id: int, channel_id: str, message_id: str) -> None:
    with store.transaction():
        store.db["reports"].update(report_id, {"channel_id": channel_id, "message_id": message_id})


def handle_report(store: Store, report_id: int, actor_id: str, outcome: str) -> Report:
    """An admin removes the reported picture's posts (`removed`) or dismisses the report; FaceChainError when
    another admin handled it first."""
    with store.transaction():
        found = get_report(store, report_id)
        if found is None:
            raise FaceChainError("This report no longer exists.")
        if found.state != "open":
            raise FaceChainError(f"This report was already handled ({found.state}).")
        store.db["reports"].update(report_id, {"state": outcome, "handled_by": actor_id, "handled_at": utc_now()})
        audit(store, found.guild_id, f"report {outcome}", actor_id, None, f"picture {found.portrait_id}")
    return get_report(store, report_id)


def close_reports_of(store: Store, portrait_ids: list[int]) -> list[Report]:
    """Open reports on pictures that were deleted (their member deleted or forgot them): closed as removed."""
    if not portrait_ids:
        return []
    marks = ", ".join("?" for _ in portrait_ids)
    with store.transaction():
        rows = list(store.db["reports"].rows_where(f"state = 'open' and portrait_id in ({marks})", portrait_ids))
        store.db.execute(f"update reports set state = 'removed', handled_at = ? where state = 'open' and "
                         f"portrait_id in ({marks})", [utc_now(), *portrait_ids])
    return [Report(**row) for row in rows]
