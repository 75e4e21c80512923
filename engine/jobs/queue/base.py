"""The job queue's interface. bot/ and the worker use only this, so another backend (several GPU
machines, say) can replace the SQLite one without touching them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from engine.errors import FaceChainError

JobKind = Literal["enroll", "train", "generate"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED = ("done", "failed", "cancelled")
# The progress text of a job waiting for the owner to fix the setup (a model that cannot be had).
WAITING_FOR_SETUP = "waiting for the bot's setup"


class QueueLimit(FaceChainError):
    """A per-user limit or a server quota says no; the message says which and what to do."""


class LeaseLost(FaceChainError):
    """This worker's claim on the job expired and the job went back to the queue or to another worker."""


@dataclass(frozen=True)
class Lease:
    """One claim of one job. Every claim gets a token of its own, and the queue accepts a heartbeat,
    result, failure or release only with the job's current token (fencing): a holder whose lease ran
    out while it was frozen, suspended or cut off can do nothing once the job was claimed again, even
    under the same worker id."""

    job_id: int
    worker_id: str
    token: str


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    user_id: str
    guild_id: str | None
    channel_id: str | None
    params: dict
    state: str
    attempts: int
    progress: float
    progress_text: str
    error: str | None
    result: dict | None
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None
    delivered_at: str | None
    ran_on: str | None = None  # the worker that last ran it (host-pid, or a name)
    lease: Lease | None = None  # set on the Job a claim returns: what the holder shows the queue

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass(frozen=True)
class QueuePosition:
    position: int  # 1 = next to run; 0 = running now
    eta_seconds: float  # until this job is done


class JobQueue(Protocol):
    def enqueue(self, kind: str, user_id: str, params: dict | None = None, guild_id: str | None = None,
                channel_id: str | None = None, follows: int | None = None) -> Job: ...

    def claim(self, worker_id: str, kinds: tuple[str, ...] | None = None) -> Job | None: ...

    def heartbeat(self, lease: Lease, progress: float | None = None, text: str | None = None) -> bool: ...

    def complete(self, lease: Lease, result: dict) -> Job: ...

    def fail(self, lease: Lease, error: str, transient: bool = False, params_update: dict | None = None) -> Job: ...

    def release(self, lease: Lease) -> Job: ...

    def cancel(self, job_id: int, user_id: str | None = None) -> Job: ...

    def get(self, job_id: int) -> Job | None: ...

    def jobs(self, state: str | None = None, user_id: str | None = None, limit: int = 100) -> list[Job]: ...

    def position(self, job_id: int) -> QueuePosition | None: ...

    def positions(self, job_ids) -> dict[int, QueuePosition]: ...

    def reap_expired(self) -> int: ...
