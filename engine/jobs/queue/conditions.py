"""The SQL conditions the queue's reads and writes share, so each rule is written once."""

from __future__ import annotations

# A job back in the queue, or finished, is leased to nobody.
NO_LEASE = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}
BACK_IN_QUEUE = "state = 'queued', lease_owner = null, lease_token = null, lease_expires_at = null"
# A running job whose worker stopped heartbeating (the moment is the one parameter).
LEASE_RAN_OUT = "state = 'running' and lease_expires_at < ?"


def flag(params: str, name: str) -> str:
    """A job's boolean parameter as SQL: true only when set to true (a job queued before it existed has none)."""
    return f"coalesce(json_extract({params}, '$.{name}'), 0) = 1"


def claimable(kinds: tuple[str, ...]) -> str:
    """The condition (on `jobs j`) for a queued job of `kinds` that may run now: its retry time has come, and
    a portrait that chose to wait for its member's training in progress waits, also while the enrolment that
    queues that training runs (on a cluster another GPU is free meanwhile). Parameters: the kinds, then now."""
    marks = ", ".join("?" for _ in kinds)
    return f"""j.state = 'queued' and j.kind in ({marks}) and (j.run_after is null or j.run_after <= ?)
        and not (j.kind = 'generate' and {flag('j.params', 'wait_for_training')}
                 and j.user_id in (select user_id from jobs where state in ('queued', 'running') and (kind = 'train'
                     or kind = 'enroll' and {flag('params', 'train_after')})))"""


# A member's own jobs run in the order they asked, except that instant portraits (and the reading of their face
# those are drawn from) go before their other jobs: an instant likeness never waits for their own training.
MEMBER_ORDER = f"(j.kind = 'instant' or {flag('j.params', 'instant')}) desc, j.id"
