"""What every job runner is made of and talks to: the Runner, the JobContext a computation reports to,
and the outcomes a step can end in. Runner modules import this, never each other."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import FaceChainError
from engine.jobs.queue import Job
from engine.models.loaded import LoadedModels

if TYPE_CHECKING:  # types only: the worker runs the runners, they never run it
    from engine.jobs.heartbeat import Heartbeat
    from engine.jobs.worker import Worker


class JobCancelled(Exception):
    """The job's owner cancelled it while it ran."""


class WaitForTraining(Exception):
    """The member's face model is being (re)built first: the job goes back to the queue and waits for it."""


class JobContext(Protocol):
    """What a running job's model work talks to: progress out, stop requests and checkpoints."""

    def update(self, progress: float, text: str) -> None: ...

    def cancelled(self) -> bool: ...  # the owner cancelled the job

    def should_stop(self) -> bool: ...  # cancelled, shutting down, or the lease was lost

    def save_checkpoint(self, data: bytes) -> None: ...


@dataclass
class HeartbeatContext:
    """A JobContext on the machine with the store: progress and stop requests through the lease's heartbeat."""

    beat: Heartbeat
    stopping: threading.Event
    keep_checkpoint: Callable[[bytes], None] = lambda data: None

    def update(self, progress: float, text: str) -> None:
        self.beat.update(progress, text)

    def cancelled(self) -> bool:
        return self.beat.cancel_requested.is_set()

    def should_stop(self) -> bool:
        return self.stopping.is_set() or self.beat.cancel_requested.is_set() or self.beat.lease_lost.is_set()

    def save_checkpoint(self, data: bytes) -> None:
        self.keep_checkpoint(data)


@dataclass
class Finished:
    """`gather` found nothing to compute: this is the job's result."""

    result: dict


@dataclass(frozen=True)
class Runner:
    gather: Callable[[Worker, Job], Any]
    compute: Callable[[LoadedModels, Any, JobContext], Any]
    record: Callable[[Worker, Job, Any, Any], dict]
    uses_gpu: bool = True
    # Writes a checkpoint the computation sent (training), and cleans up after a computation that failed
    # for good (a passing failure is retried and resumes: a training from its last checkpoint).
    keep_checkpoint: Callable[[Worker, Any, bytes], None] | None = None
    abandon: Callable[[Worker, Job, Any, Exception], None] | None = None
    # The pictures a computation drew (RankedPortraits): marked as made by AI before the job is recorded, outside
    # the queue's write lock.
    pictures: Callable[[Any], list] | None = None


def drawn_pictures(outputs: Any) -> list:
    """The pictures of a job that draws: its DrawnPortraits (a portrait's, Sharper x2's) or the one it carries as
    `drawn` (a swap's, a redraw's, a picture together's, Upscale x4's; none while the member chooses a face)."""
    drawn = getattr(outputs, "drawn", outputs)
    return drawn.portraits if drawn is not None else []


# Jobs that draw with the member's face adapter (a `together` job: with the adapters of both members, see
# `job_members`): the cluster sends them to an actor that has them loaded.
FACE_ADAPTER_KINDS = ("generate", "redraw", "together")


def job_members(job: Job) -> list[str]:
    """Whose face models a job draws with: its member's, and for a picture together the other member's."""
    return [job.user_id] + ([job.params["with"]] if job.kind == "together" and job.params.get("with") else [])


def show_flagged(worker: Worker, job: Job) -> bool:
    """Whether portraits the safety check flags may be shown for this job (its server's NSFW policy)."""
    from engine.nsfw_policy import may_show_flagged
    from engine.store.community import server_nsfw_policy

    return may_show_flagged(server_nsfw_policy(worker.store, job.guild_id), bool(job.params.get("age_restricted")))


def uploaded_file(worker: Worker, path: str, gone: str) -> Path:
    """A file the bot saved for a job: only under <data>/tmp/, and still there (else FaceChainError `gone`)."""
    upload = Path(path or "").resolve()
    if not upload.is_relative_to((worker.settings.data_dir / "tmp").resolve()) or not upload.is_file():
        raise FaceChainError(gone)
    return upload
