"""Run `facechain worker` as a child process, as `facechain-bot` does by default.

The bot's event loop never runs training or generation; the child does, and is restarted if it
dies. Stopping sends SIGTERM, so a training in progress checkpoints and goes back to the queue.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
STEADY_SECONDS = 60.0  # a worker that ran this long was not failing to start
FIRST_BACKOFF_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 300.0


class WorkerProcess:
    def __init__(self, env: dict[str, str] | None = None, worker_id: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.env = {**os.environ, **(env or {})}
        self.command = [sys.executable, "-m", "engine.cli", "worker", "--parent-pid", str(os.getpid())]
        self.command += ["--id", worker_id] if worker_id else []
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.clock = clock
        self._started_at = 0.0
        self._quick_exits = 0  # in a row: a worker that cannot start is not restarted every few seconds
        self._next_start_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL)
        self._started_at = self.clock()
        log.info("worker process started (pid %s)", self.process.pid)

    def ensure_running(self) -> bool:
        """Start the worker, or restart it if it died; True when it had to be (re)started. One that keeps
        exiting soon after its start (it cannot start: the owner is told through the incident it records)
        is restarted less and less often, up to every few minutes."""
        if self.running():
            return False
        now = self.clock()
        if self.process is not None and self._next_start_at == 0.0:  # just found it exited
            quick = now - self._started_at < STEADY_SECONDS
            self._quick_exits = self._quick_exits + 1 if quick else 0
            # A crash is restarted at once; a second quick exit in a row waits 5 s, then 10, 20, ... 300.
            wait = 0.0 if self._quick_exits < 2 else min(FIRST_BACKOFF_SECONDS * 2 ** (self._quick_exits - 2),
                                                         MAX_BACKOFF_SECONDS)
            self._next_start_at = now + wait
            log.warning("worker process %s exited with %s; restarting%s", self.process.pid, self.process.returncode,
                        f" in {wait:.0f} s" if wait else "")
        if now < self._next_start_at:
            return False
        if self.process is not None:
            self.restarts += 1
        self._next_start_at = 0.0
        self.start()
        return True

    def stop(self, timeout: float = 120) -> int | None:
        """SIGTERM, wait for the checkpoint, then SIGKILL if it does not exit in time."""
        if not self.running():
            return self.process.returncode if self.process else None
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("worker process %s did not stop in %s s; killing it", self.process.pid, timeout)
            self.process.kill()
            return self.process.wait()
