"""A running job's heartbeat: keeps its lease alive and carries its progress, from a thread with its
own database connection. The local worker and the cluster's dispatcher both run one per job."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from engine.config import Settings
from engine.jobs.queue import LeaseLost, SqliteJobQueue
from engine.store import Store

log = logging.getLogger(__name__)


@dataclass
class Heartbeat:
    """Keeps a job's lease alive and carries its progress, from a thread with its own connection."""

    settings: Settings
    job_id: int
    worker_id: str
    progress: float = 0.0
    text: str = "starting"
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.job_id}", daemon=True)
        self._thread.start()

    def update(self, progress: float, text: str) -> None:
        self.progress, self.text = progress, text

    def _run(self) -> None:
        queue = SqliteJobQueue(Store(self.settings.data_dir), self.settings)
        interval = max(0.5, self.settings.job_lease_seconds / 3)
        try:
            while not self._stop.wait(interval):
                self._beat(queue)
        finally:
            queue.store.close()

    def _beat(self, queue: SqliteJobQueue) -> None:
        try:
            if queue.heartbeat(self.job_id, self.worker_id, self.progress, self.text):
                self.cancel_requested.set()
        except LeaseLost:
            self.lease_lost.set()
        except Exception:  # a locked database for a moment must not kill the job
            log.warning("heartbeat for job %s failed; will retry", self.job_id, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
