"""Problems only the bot's owner can fix, recorded by the worker and read by the bot and `doctor`.

An incident opens the first time a problem is seen (the worker logs it at error level then),
counts repeats while it stays open, and closes once the thing works again. The bot tells the
bot's owner once per incident.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.store.store import Store, utc_now


@dataclass(frozen=True)
class SetupProblem:
    id: int
    key: str  # what failed, e.g. "base model" or "style anime"
    message: str  # for the owner: what is wrong and how to fix it
    first_seen: str
    last_seen: str
    count: int
    notified_at: str | None


def _problem(row: dict) -> SetupProblem:
    return SetupProblem(row["id"], row["key"], row["message"], row["first_seen"], row["last_seen"], row["count"],
                        row["notified_at"])


def report_setup_problem(store: Store, key: str, message: str) -> bool:
    """Record that `key` failed with `message`; True when this opens a new incident."""
    with store.transaction():
        open_rows = list(store.db["setup_problems"].rows_where("key = ? and resolved_at is null", [key], limit=1))
        if open_rows:
            row = open_rows[0]
            store.db["setup_problems"].update(row["id"], {"message": message, "last_seen": utc_now(),
                                                          "count": row["count"] + 1})
            return False
        store.db["setup_problems"].insert({"key": key, "message": message, "first_seen": utc_now(),
                                           "last_seen": utc_now(), "count": 1})
        return True


def resolve_setup_problems(store: Store, *keys: str) -> int:
    """Close the open incidents of `keys` (they work again); returns how many closed."""
    marks = ", ".join("?" for _ in keys)
    with store.transaction():
        return store.db.execute(f"update setup_problems set resolved_at = ? where resolved_at is null "
                                f"and key in ({marks})", [utc_now(), *keys]).rowcount


def open_setup_problems(store: Store) -> list[SetupProblem]:
    return [_problem(row) for row in store.db["setup_problems"].rows_where("resolved_at is null", order_by="id")]


def mark_setup_problem_notified(store: Store, problem_id: int) -> None:
    with store.transaction():
        store.db["setup_problems"].update(problem_id, {"notified_at": utc_now()})
