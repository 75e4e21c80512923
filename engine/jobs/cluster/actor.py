"""The Ray actor that runs jobs' model work on one GPU of the cluster.

It loads the base pipeline once and keeps the generator's adapter cache, like the local worker.
It never sees the database or the data folder: a job's inputs arrive as bytes and plain values,
and `run` streams back what happens (progress, training checkpoints) and then the outputs.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from engine.config import Settings
from engine.errors import FaceChainError
from engine.generation.style_files import StyleFileCache
from engine.jobs.runners import compute_job
from engine.jobs.scratch import scratch_prefix, sweep_stale_scratch
from engine.memory import set_aside_for_life
from engine.models.loaded import LoadedModels

log = logging.getLogger(__name__)
NAMESPACE = "facechain"
ACTOR_PREFIX = "facechain-gpu-"
JOB_GROUP = "job"  # the concurrency group `run` runs in, of one: never two jobs on one GPU
# Progress goes back at most this often (the latest of it); the heartbeat writes it every 2 s.
PROGRESS_SECONDS = 0.5


@dataclass
class ActorContext:
    """A JobContext on a GPU machine: events go back to the dispatcher through the stream."""

    events: queue.Queue
    stop: threading.Event  # the dispatcher asks the job to stop (it is shutting down or lost the lease)
    cancel: threading.Event  # the owner cancelled (ray.cancel on the stream)

    def update(self, progress: float, text: str) -> None:
        self.events.put(("progress", progress, text))

    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.stop.is_set()

    def save_checkpoint(self, data: bytes) -> None:
        self.events.put(("checkpoint", data))


class GpuActor:
    def __init__(self, settings_values: dict, name: str) -> None:
        sweep_stale_scratch()  # what an actor killed on this machine left (face crops, weights)
        scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix("actor")))  # none of the bot's data folder here
        self.settings = Settings(**{**settings_values, "data_dir": scratch})
        self.models = LoadedModels(self.settings, style_cache=StyleFileCache(scratch / "styles"))
        self.models.for_life = True
        self.name = name
        self.job_id: int | None = None
        self._stops: dict[int, threading.Event] = {}
        self._working = threading.Lock()  # held while a job computes
        self._to_unload: set[str] = set()  # adapters to drop once the running job is done
        import_model_libraries()
        set_aside_for_life()  # the libraries now; the base model once loaded

    def info(self) -> dict:
        """Where this actor runs and what it holds (for routing and `facechain cluster status`)."""
        context = ray.get_runtime_context()
        return {"name": self.name, "node_id": context.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(), "job": self.job_id, "model_loaded": self.models.loaded,
                "adapters": [name for name in self.models.loaded_adapters() if name not in self._to_unload]}

    def keep_style(self, digest: str, data: bytes) -> None:
        """Keep a style LoRA the dispatcher sent (a server's or the owner's style), under its content hash."""
        self.models.style_cache.keep(digest, data)

    def stop_job(self, job_id: int) -> None:
        if job_id in self._stops:
            self._stops[job_id].set()

    def forget(self, adapters: list[str]) -> None:
        """Drop these adapters (a forgotten member's face model) from GPU memory: now when no job runs,
        else as soon as the running one is done (never from under it)."""
        self._to_unload.update(adapters)
        if self._working.acquire(blocking=False):
            try:
                self._unload_pending()
            finally:
                self._working.release()

    def _unload_pending(self) -> None:
        pending, self._to_unload = self._to_unload, set()
        if pending:
            log.info("actor %s unloads %s adapter(s)", self.name, len(self.models.unload(sorted(pending))))

    @ray.method(concurrency_group=JOB_GROUP)
    def run(self, job_id: int, kind: str, inputs: Any, low_memory: bool = False):
        """The model work of one job, as a stream of events: ("progress", fraction, text),
        ("checkpoint", bytes), then ("done", outputs, seconds computing) or ("error", exception)."""
        from engine.jobs.worker import release_cached_memory

        events: queue.Queue = queue.Queue()
        stop = self._stops[job_id] = threading.Event()
        context = ActorContext(events, stop, threading.Event())
        self.models.on_download = lambda what, done, total: context.update(
            0.0, f"getting {what}: {done / 1e9:.1f} of {total / 1e9:.1f} GB")

        def work() -> None:
            try:
                with self._working:
                    self._unload_pending()
                    try:
                        started = time.perf_counter()
                        outputs = compute_job(kind, self.models, inputs, context, low_memory)
                        events.put(("done", outputs, time.perf_counter() - started))
                    finally:
                        self._unload_pending()
            except BaseException as error:  # noqa: BLE001 - every ending goes back to the dispatcher
                events.put(("error", portable(error)))

        self.job_id = job_id
        thread = threading.Thread(target=work, name=f"job-{job_id}", daemon=True)
        thread.start()
        runtime = ray.get_runtime_context()
        latest, sent_at = None, 0.0  # progress not sent yet, and when progress was last sent
        try:
            while True:
                if runtime.is_canceled():  # ray.cancel() only sets a flag on a running actor task
                    context.cancel.set()
                try:
                    event = events.get(timeout=0.2)
                except queue.Empty:
                    event = None
                if event is None or event[0] == "progress":  # each one sent costs both ends CPU: the latest only
                    latest = event or latest
                    if latest is not None and time.monotonic() - sent_at >= PROGRESS_SECONDS:
                        yield latest
                        latest, sent_at = None, time.monotonic()
                    continue
                yield event
                if event[0] in ("done", "error"):
                    break
        finally:
            # ray.cancel may also close this generator at a yield: the work stops too (at its next step).
            if thread.is_alive():
                context.cancel.set()
            thread.join()
            self.job_id = None
            self._stops.pop(job_id, None)
            self.models.on_download = None
            release_cached_memory()


def import_model_libraries() -> None:
    """Import what a job's model work needs (seconds of imports) while the actor starts, beside the
    other GPUs' actors, rather than in the first job it is given."""
    import diffusers
    import peft  # noqa: F401 - the face-LoRA trainer's

    diffusers.StableDiffusionPipeline  # noqa: B018 - diffusers imports a pipeline (and transformers) on first use


def portable(error: BaseException) -> BaseException:
    """The error itself when it survives pickling (the dispatcher handles it as the local worker
    would); otherwise a FaceChainError with its message (and its owner detail, if any)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - an exception whose __init__ takes other arguments than its args
        stand_in = FaceChainError(str(error)) if isinstance(error, FaceChainError) else RuntimeError(
            f"{type(error).__name__}: {error}")
        if detail := getattr(error, "detail", None):
            stand_in.detail = detail
        return stand_in
