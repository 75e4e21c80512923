"""The SQL conditions the queue's reads and writes share, so each rule is written once."""

from __future__ import annotations

# A job back in the queue, or finished, is leased to nobody.
NO_LEASE = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}
BACK_IN_QUEUE = "state = 'queued', lease_owner = null, lease_token = null, lease_expires_at = null"
# A running job whose worker stopped heartbeating (the moment is the one parameter).
LEASE_RAN_OUT = "state = 'running' and lease_expires_at < ?"


def claimable(kinds: tuple[str, ...]) -> str:
    """The condition (on `jobs j`) for a queued job of `kinds` that may run now: its retry time has come, and
    a portrait that chose to wait for its member's training in progress waits. Parameters: the kinds, then now."""
    marks = ", ".join("?" for _ in kinds)
    return f"""j.state = 'queued' and j.kind in ({marks}) and (j.run_after is null or j.run_after <= ?)
        and not (j.kind = 'generate' and json_extract(j.params, '$.wait_for_training') = 1
                 and j.user_id in (select user_id from jobs where kind = 'train' and state in ('queued', 'running')))"""
