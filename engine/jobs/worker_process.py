"""Run `facechain worker` as a child process, as `facechain-bot` does by default.

The bot's event loop never runs training or generation; the child does, and is restarted if it
dies. Stopping sends SIGTERM, so a training in progress checkpoints and goes back to the queue.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)


class WorkerProcess:
    def __init__(self, env: dict[str, str] | None = None, worker_id: str | None = None) -> None:
        self.env = {**os.environ, **(env or {})}
        self.command = [sys.executable, "-m", "engine.cli", "worker", "--parent-pid", str(os.getpid())]
        self.command += ["--id", worker_id] if worker_id else []
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL)
        log.info("worker process started (pid %s)", self.process.pid)

    def ensure_running(self) -> bool:
        """Start the worker, or restart it if it died; True when it had to be (re)started."""
        if self.running():
            return False
        if self.process is not None:
            log.warning("worker process %s exited with %s; restarting", self.process.pid, self.process.returncode)
            self.restarts += 1
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
