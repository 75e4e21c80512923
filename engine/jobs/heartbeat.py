"""A running job's heartbeat: keeps its lease alive and carries its progress, from a thread with its
own database connection. The local worker and the cluster's dispatcher both run one per job."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from engine.config import Settings
from engine.jobs.queue import Lease, LeaseLost, SqliteJobQueue
from engine.store import Store

log = logging.getLogger(__name__)


# How often a running job looks whether its member cancelled it (a read: it takes no lock).
CANCEL_CHECK_SECONDS = 1.0
# How often new progress is written (on the progress board, not the queue: the bot edits a member's message
# every 2 s).
PROGRESS_EVERY_SECONDS = 2.0


@dataclass
class Heartbeat:
    """Keeps a job's lease alive and carries its progress, from a thread with its own connection; writes new
    progress on the progress board at most every PROGRESS_EVERY_SECONDS and sees a cancel within about a second,
    between the lease's beats."""

    settings: Settings
    lease: Lease
    progress: float = 0.0
    text: str = "starting"
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.job_id}", daemon=True)
        self._thread.start()

    @property
    def job_id(self) -> int:
        return self.lease.job_id

    def update(self, progress: float, text: str) -> None:
        self.progress, self.text = progress, text

    def _run(self) -> None:
        queue = SqliteJobQueue(Store(self.settings.data_dir), self.settings)
        interval = max(0.5, self.settings.job_lease_seconds / 3)
        last_beat = last_written = time.monotonic()
        written = None  # what this heartbeat last wrote (nothing yet)
        try:
            while not self._stop.wait(min(CANCEL_CHECK_SECONDS, interval)):
                shown = (self.progress, self.text)
                if time.monotonic() - last_beat >= interval:
                    self._beat(queue)
                    last_beat = time.monotonic()
                elif not self.cancel_requested.is_set():
                    self._look_for_cancel(queue)
                if shown != written and time.monotonic() - last_written >= PROGRESS_EVERY_SECONDS:
                    self._write_progress(queue, *shown)
                    last_written, written = time.monotonic(), shown
        finally:
            self._clear_progress(queue)
            queue.store.close()

    def _beat(self, queue: SqliteJobQueue) -> None:
        try:
            if queue.heartbeat(self.lease, self.progress, self.text):
                self.cancel_requested.set()
        except LeaseLost:
            self.lease_lost.set()
        except Exception:  # a locked database for a moment must not kill the job
            log.warning("heartbeat for job %s failed; will retry", self.job_id, exc_info=True)

    def _write_progress(self, queue: SqliteJobQueue, progress: float, text: str) -> None:
        """On the progress board: none of the queue's write lock (the lease's beats alone take it)."""
        try:
            queue.board.write(self.job_id, self.lease.token, progress, text)
        except Exception:  # noqa: BLE001 - a busy board for a moment: the next write carries it
            log.debug("progress for job %s not written", self.job_id, exc_info=True)

    def _clear_progress(self, queue: SqliteJobQueue) -> None:
        try:
            queue.board.clear(self.job_id)
            queue.board.close()
        except Exception:  # noqa: BLE001 - a row left behind is never shown (its claim has ended)
            log.debug("progress row of job %s left", self.job_id, exc_info=True)

    def _look_for_cancel(self, queue: SqliteJobQueue) -> None:
        try:
            if queue.cancel_was_requested(self.job_id):
                self.cancel_requested.set()
        except Exception:  # noqa: BLE001 - the next beat reads it again
            log.debug("cancel check for job %s failed", self.job_id, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
