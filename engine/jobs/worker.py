"""`facechain worker`: takes jobs from the queue and runs them on the GPU, one at a time.

The base pipeline loads once and stays. A heartbeat thread (its own database connection) keeps
the job's lease and writes progress while the job runs. On SIGTERM a training job checkpoints and
goes back to the queue, and a portrait job finishes first. After `kill -9`, the lease runs out and
the next worker resumes the job from its checkpoint.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from engine.config import Settings
from engine.errors import FaceChainError, ModelUnavailable
from engine.jobs.heartbeat import Heartbeat
from engine.jobs.instant_runner import queue_missing_instant_reads
from engine.jobs.job_types import WaitForTraining
from engine.jobs.queue import Job, LeaseLost, SqliteJobQueue
from engine.jobs.runners import RUNNERS, ComputeLost, JobCancelled, run_locally, training_cancelled
from engine.jobs.scratch import process_alive, sweep_stale_scratch
from engine.memory import peak_rss_mb
from engine.models.loaded import LoadedModels
from engine.store import Store
from engine.store.setup_problems import report_setup_problem, resolve_setup_problems

log = logging.getLogger(__name__)
# After an error in the loop itself (a locked database for longer than its timeout): wait, go on.
LOOP_ERROR_SECONDS = 2.0
# An idle worker looks for a job this often (a plain read while nothing is queued): a new job starts
# within a quarter second.
IDLE_POLL_SECONDS = 0.25
# Below this much free GPU memory a job is not started (another program holds the card).
MIN_FREE_GPU_GIB = 2.0
# The incident key of the models every job needs (the base model and its VAE).
MODELS_PROBLEM = "models"
# The jobs that need those models (enroll and swap need only the face analyzer).
MODEL_KINDS = tuple(kind for kind, runner in RUNNERS.items() if runner.uses_gpu)


class GpuBusy(Exception):
    """Too little GPU memory is free to start a job; it is retried later."""


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None,
                 stopping: threading.Event | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.store = Store(settings.data_dir)  # a connection of its own: one Worker per thread
        self.queue = SqliteJobQueue(self.store, settings)
        self.stopping = stopping or threading.Event()
        self.models = LoadedModels(settings, on_base_loaded=lambda: resolve_setup_problems(self.store, MODELS_PROBLEM))
        self.models.on_download = self._download_progress
        self._beat: Heartbeat | None = None  # the running job's, which downloads report to

    # --- the models, loaded once ---------------------------------------------------------------

    @property
    def base(self):
        return self.models.base

    @property
    def generator(self):
        return self.models.generator

    @property
    def safety(self):
        return self.models.safety

    @property
    def analyzer(self):
        return self.models.analyzer

    def _download_progress(self, what: str, done: int, total: int) -> None:
        if self._beat is not None:
            self._beat.update(0.0, f"getting {what}: {done / 1e9:.1f} of {total / 1e9:.1f} GB")

    def stop_with_parent(self, parent_pid: int, poll_seconds: float = 1.0) -> None:
        """Stop when the process that started this worker is gone (e.g. the bot was killed), so a
        restarted bot never ends up with two workers on one GPU."""
        def watch() -> None:
            while not self.stopping.wait(poll_seconds):
                if os.getppid() != parent_pid:
                    log.warning("worker %s: parent %s is gone; stopping", self.worker_id, parent_pid)
                    self.stopping.set()

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()

    # --- the loop --------------------------------------------------------------------------------

    def run(self, exit_when_idle: float | None = None, poll_seconds: float = IDLE_POLL_SECONDS) -> None:
        """Take jobs until SIGTERM/SIGINT (or, with `exit_when_idle`, until the queue stays empty that long)."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stopping.set())
        log.info("worker %s started", self.worker_id)
        sweep_stale_scratch()
        self.reclaim_dead_leases()
        self.queue_missing_previews()
        queue_missing_instant_reads(self)
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            try:
                self.forget_removed_faces()
                job = self.queue.claim(self.worker_id)
                if job is None:
                    if exit_when_idle is not None and time.monotonic() - idle_since > exit_when_idle:
                        break
                    self.stopping.wait(poll_seconds)
                    continue
                self.run_job(job)
            except Exception:  # noqa: BLE001 - a locked database must not stop the worker; the lease recovers the job
                log.exception("worker %s: an error in its loop; going on", self.worker_id)
                self.stopping.wait(LOOP_ERROR_SECONDS)
            idle_since = time.monotonic()
        log.info("worker %s stopped (peak memory %s MB)", self.worker_id, peak_rss_mb())

    def forget_removed_faces(self) -> list[str]:
        """Forgotten members' face adapters leave this worker's GPU memory (between jobs)."""
        stale = stale_face_adapters(self.store, self.models.loaded_adapters())
        return self.models.unload(stale) if stale else []

    def reclaim_dead_leases(self) -> int:
        """Jobs leased to a worker of this host whose process is gone go back to the queue at once (a
        bot killed mid-portrait and restarted need not wait out the lease)."""
        host = socket.gethostname()
        gone = [owner for owner in self.queue.lease_owners() if owner != self.worker_id
                and (pid := _pid_on_host(owner, host)) is not None and not process_alive(pid)]
        reclaimed = self.queue.reclaim_leases(gone)
        if reclaimed:
            log.info("took back %s job(s) from stopped worker(s) %s", reclaimed, ", ".join(gone))
        return reclaimed

    def queue_missing_previews(self, force: bool = False) -> int:
        """On a GPU machine, queue a lowest-priority preview job per style that has no preview image
        (none already queued). On a CPU a preview takes minutes: `facechain styles previews` there."""
        if not force and (self.settings.device not in ("auto", "cuda") or not _has_cuda()):
            return 0
        from engine.generation.previews import PREVIEW_USER, missing_previews
        from engine.styles import load_catalogue

        queued = {job.params.get("style") for job in self.queue.active_jobs(user_id=PREVIEW_USER)}
        missing = [s for s in missing_previews(self.settings, load_catalogue(self.settings))
                   if s.id not in queued]
        for style in missing:
            self.queue.enqueue("preview", PREVIEW_USER, {"style": style.id})
        if missing:
            log.info("queued %s style previews at the lowest priority", len(missing))
        return len(missing)

    def run_job(self, job: Job) -> None:
        beat = self._beat = Heartbeat(self.settings, job.lease)
        try:
            self.settle(job, beat, lambda: self._run_here(job, beat))
        finally:
            self._beat = None
            beat.stop()
            release_cached_memory()

    def _run_here(self, job: Job, beat: Heartbeat) -> dict:
        self._check_gpu_memory()
        return HANDLERS[job.kind](self, job, beat)

    def settle(self, job: Job, beat: Heartbeat, run: Callable[[], dict]) -> None:
        """Run a job (here, or on a cluster actor) and record how it ended in the queue. A claim that is
        no longer the job's (it ran out while this process was frozen, and the job was claimed again)
        records nothing: the job is its new holder's."""
        try:
            self._settle(job, beat, run)
        except LeaseLost:
            log.warning("job %s: no longer leased to this claim; its result, if any, was dropped", job.id)

    def _settle(self, job: Job, beat: Heartbeat, run: Callable[[], dict]) -> None:
        try:
            self.queue.complete(job.lease, run())
        except ModelUnavailable as problem:  # the owner's to fix: the job waits, the member is not failed
            self._wait_for_setup(job, problem.key, str(problem))
        except WaitForTraining as waiting:
            self.queue.wait_for_training(job.lease, str(waiting))
        except LeaseLost:
            raise  # settle() says so; nothing of this claim is recorded
        except (JobCancelled, training_cancelled()) as stopped:
            if beat.cancel_requested.is_set() or self.queue.cancel_was_requested(job.id):
                self.queue.mark_cancelled(job.lease)
            else:  # shutting down: the next worker resumes it
                self.queue.release(job.lease)
                log.info("job %s released for later: %s", job.id, stopped)
        except ComputeLost as lost:  # a cluster machine went away: retried, the attempt counted
            log.warning("job %s: %s", job.id, lost)
            self.queue.fail(job.lease, str(lost), transient=True)
        except FaceChainError as error:  # bad input or a missing model: retrying would not help
            if detail := getattr(error, "detail", None):  # e.g. a style's LoRA: the owner is told too
                self._report_setup_problem(f"style {job.params.get('style')}", detail)
            self.queue.fail(job.lease, str(error))
        except GpuBusy as busy:
            self.queue.fail(job.lease, str(busy), transient=True)
        except Exception as error:
            self._fail_transient(job, error)

    def _report_setup_problem(self, key: str, message: str) -> None:
        if report_setup_problem(self.store, key, message):
            log.error("setup problem (%s): %s", key, message)
        else:
            log.info("setup problem (%s) still there: %s", key, message)

    def _wait_for_setup(self, job: Job, key: str, message: str) -> None:
        self._report_setup_problem(key, message)
        wait = max(1.0, 6 * self.settings.job_retry_seconds)
        self.queue.wait_for_setup(job.lease, wait, also_kinds=MODEL_KINDS)
        log.info("job %s waits %.0f s for the setup to be fixed", job.id, wait)

    def _fail_transient(self, job: Job, error: Exception) -> None:
        """A passing failure, in plain words for the member: retried while attempts last (the queue says
        so in the progress line), the last one said as it is."""
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
            if job.params.get("low_memory"):  # already retried with every saver on
                self.queue.fail(job.lease, "The GPU ran out of memory even with memory savers on: ask for fewer "
                                "portraits, or free the GPU from other programs.")
            else:
                self.queue.fail(job.lease, "The GPU ran out of memory.", transient=True,
                                params_update={"low_memory": True})
            return
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            log.error("job %s: the disk is full", job.id)
            self.queue.fail(job.lease, "The server's disk is full.", transient=True)
            return
        log.exception("job %s failed", job.id)
        self.queue.fail(job.lease, "Something went wrong on the server while doing this.", transient=True)

    def _check_gpu_memory(self) -> None:
        """FaceChain refuses below 18 GB; we start whenever the job can fit with memory savers."""
        import torch

        if self.settings.device in ("auto", "cuda") and torch.cuda.is_available():
            free = torch.cuda.mem_get_info()[0] / 2**30
            if free < MIN_FREE_GPU_GIB:
                raise GpuBusy(f"The GPU has only {free:.1f} GiB free (another program is using it).")

    def _fit_memory(self, job: Job) -> None:
        self.models.fit_memory(bool(job.params.get("low_memory")))

    def should_stop(self, beat: Heartbeat) -> Callable[[], bool]:
        return lambda: self.stopping.is_set() or beat.cancel_requested.is_set() or beat.lease_lost.is_set()


def stale_face_adapters(store: Store, adapters: list[str]) -> list[str]:
    """The face adapters (by name) whose face model the store no longer has: the member was forgotten."""
    from engine.generation.portrait import face_key_owner

    return [name for name in adapters if (owner := face_key_owner(name)) and not store.face_model_stored(*owner)]


def _pid_on_host(worker_id: str, host: str) -> int | None:
    """The process id in a default worker id (`<host>-<pid>`) of this host; None for others' or named ones."""
    prefix, _, pid = worker_id.rpartition("-")
    return int(pid) if prefix == host and pid.isdigit() else None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def release_cached_memory() -> None:
    """Imported late, like torch: between jobs, torch's cached GPU memory goes back to the card."""
    import sys

    if "torch" in sys.modules:
        from engine.models.base_model import release_cached_memory as release

        release()


# Every job runs through its three-step runner (engine/jobs/runners.py), which a cluster actor runs too.
HANDLERS: dict[str, Callable[[Worker, Job, Heartbeat], dict]] = {kind: run_locally for kind in RUNNERS}
