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
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import Settings
from engine.errors import FaceChainError, ModelUnavailable
from engine.memory import peak_rss_mb
from engine.queue import Job, LeaseLost, QueueLimit, SqliteJobQueue
from engine.store import Store
from engine.store.setup_problems import report_setup_problem, resolve_setup_problems

log = logging.getLogger(__name__)
# Below this much free GPU memory a job is not started (another program holds the card).
MIN_FREE_GPU_GIB = 2.0
# The incident key of the models every job needs (the base model and its VAE).
MODELS_PROBLEM = "models"


class JobCancelled(Exception):
    """The job's owner cancelled it while it ran."""


class GpuBusy(Exception):
    """Too little GPU memory is free to start a job; it is retried later."""


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


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.store = Store(settings.data_dir)
        self.queue = SqliteJobQueue(self.store, settings)
        self.stopping = threading.Event()
        self._base = None
        self._generator = None
        self._safety = None
        self._beat: Heartbeat | None = None  # the running job's, which downloads report to

    # --- the models, loaded once ---------------------------------------------------------------

    @property
    def base(self):
        if self._base is None:
            from engine.base_model import load_base_pipeline

            self._base = load_base_pipeline(self.settings, on_progress=self._download_progress)
            resolve_setup_problems(self.store, MODELS_PROBLEM)
        return self._base

    def _download_progress(self, what: str, done: int, total: int) -> None:
        if self._beat is not None:
            self._beat.update(0.0, f"getting {what}: {done / 1e9:.1f} of {total / 1e9:.1f} GB")

    @property
    def generator(self):
        if self._generator is None:
            from engine.generate import PortraitGenerator

            self._generator = PortraitGenerator(self.base, fast_lora=self.settings.fast_lora)
        return self._generator

    @property
    def safety(self):
        """The optional safety checker (None when FACECHAIN_SAFETY_CHECKER is empty), beside the base model."""
        if self._safety is None and self.settings.safety_checker:
            from engine.safety import load_safety_checker

            self._safety = load_safety_checker(self.settings, self.base)
        return self._safety

    @property
    def analyzer(self):
        from engine.faces import get_analyzer

        return get_analyzer(self.settings)

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

    def run(self, exit_when_idle: float | None = None, poll_seconds: float = 1.0) -> None:
        """Take jobs until SIGTERM/SIGINT (or, with `exit_when_idle`, until the queue stays empty that long)."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stopping.set())
        log.info("worker %s started", self.worker_id)
        self.reclaim_dead_leases()
        self.queue_missing_previews()
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            job = self.queue.claim(self.worker_id)
            if job is None:
                if exit_when_idle is not None and time.monotonic() - idle_since > exit_when_idle:
                    break
                self.stopping.wait(poll_seconds)
                continue
            self.run_job(job)
            idle_since = time.monotonic()
        log.info("worker %s stopped (peak memory %s MB)", self.worker_id, peak_rss_mb())

    def reclaim_dead_leases(self) -> int:
        """Jobs leased to a worker of this host whose process is gone go back to the queue at once (a
        bot killed mid-portrait and restarted need not wait out the lease)."""
        host = socket.gethostname()
        gone = [owner for owner in self.queue.lease_owners() if owner != self.worker_id
                and (pid := _pid_on_host(owner, host)) is not None and not _process_alive(pid)]
        reclaimed = self.queue.reclaim_leases(gone)
        if reclaimed:
            log.info("took back %s job(s) from stopped worker(s) %s", reclaimed, ", ".join(gone))
        return reclaimed

    def queue_missing_previews(self, force: bool = False) -> int:
        """On a GPU machine, queue a lowest-priority preview job per style that has no preview image
        (none already queued). On a CPU a preview takes minutes: `facechain styles previews` there."""
        if not force and (self.settings.device not in ("auto", "cuda") or not _has_cuda()):
            return 0
        from engine.style_previews import PREVIEW_USER, missing_previews
        from engine.styles import load_styles

        queued = {job.params.get("style") for job in self.queue.active_jobs(user_id=PREVIEW_USER)}
        missing = [s for s in missing_previews(self.settings, load_styles(self.settings.styles_dir))
                   if s.id not in queued]
        for style in missing:
            self.queue.enqueue("preview", PREVIEW_USER, {"style": style.id})
        if missing:
            log.info("queued %s style previews at the lowest priority", len(missing))
        return len(missing)

    def run_job(self, job: Job) -> None:
        beat = self._beat = Heartbeat(self.settings, job.id, self.worker_id)
        handler = HANDLERS[job.kind]
        try:
            self._check_gpu_memory()
            result = handler(self, job, beat)
            self.queue.complete(job.id, self.worker_id, result)
        except ModelUnavailable as problem:  # the owner's to fix: the job waits, the member is not failed
            self._wait_for_setup(job, problem.key, str(problem))
        except LeaseLost:
            log.warning("job %s: lease lost to another worker; result dropped", job.id)
        except (JobCancelled, _training_cancelled()) as stopped:
            if beat.cancel_requested.is_set():
                self.queue.mark_cancelled(job.id, self.worker_id)
            else:  # shutting down: the next worker resumes it
                self.queue.release(job.id, self.worker_id)
                log.info("job %s released for later: %s", job.id, stopped)
        except FaceChainError as error:  # bad input or a missing model: retrying would not help
            if detail := getattr(error, "detail", None):  # e.g. a style's LoRA: the owner is told too
                self._report_setup_problem(f"style {job.params.get('style')}", detail)
            self.queue.fail(job.id, self.worker_id, str(error))
        except GpuBusy as busy:
            self.queue.fail(job.id, self.worker_id, str(busy), transient=True)
        except Exception as error:
            self._fail_transient(job, error)
        finally:
            self._beat = None
            beat.stop()
            release_cached_memory()

    def _report_setup_problem(self, key: str, message: str) -> None:
        if report_setup_problem(self.store, key, message):
            log.error("setup problem (%s): %s", key, message)
        else:
            log.info("setup problem (%s) still there: %s", key, message)

    def _wait_for_setup(self, job: Job, key: str, message: str) -> None:
        self._report_setup_problem(key, message)
        wait = max(1.0, 6 * self.settings.job_retry_seconds)
        self.queue.wait_for_setup(job.id, self.worker_id, wait)
        log.info("job %s waits %.0f s for the setup to be fixed", job.id, wait)

    def _fail_transient(self, job: Job, error: Exception) -> None:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
            if job.params.get("low_memory"):  # already retried with every saver on
                self.queue.fail(job.id, self.worker_id, "The GPU ran out of memory even with memory savers on: "
                                "ask for fewer portraits, or free the GPU from other programs.")
            else:
                self.queue.fail(job.id, self.worker_id, "The GPU ran out of memory; retrying with lower memory "
                                "settings.", transient=True, params_update={"low_memory": True})
            return
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            log.error("job %s: the disk is full", job.id)
            self.queue.fail(job.id, self.worker_id, "The server's disk is full; the job will be retried once the "
                            "owner frees some space.", transient=True)
            return
        log.exception("job %s failed", job.id)
        self.queue.fail(job.id, self.worker_id, f"Internal error ({type(error).__name__}); it will be retried.",
                        transient=True)

    def _check_gpu_memory(self) -> None:
        """FaceChain refuses below 18 GB; we start whenever the job can fit with memory savers."""
        import torch

        if self.settings.device in ("auto", "cuda") and torch.cuda.is_available():
            free = torch.cuda.mem_get_info()[0] / 2**30
            if free < MIN_FREE_GPU_GIB:
                raise GpuBusy(f"The GPU has only {free:.1f} GiB free (another program is using it); "
                              "the job will be retried.")

    def _fit_memory(self, job: Job) -> None:
        """Memory savers for this job: what the memory this process may use asks for, and all of them
        for a retry after running out of memory. The next job plans afresh."""
        from engine.base_model import MemoryPlan, apply_memory_savers, current_plan

        plan = current_plan(self.base.device)
        if job.params.get("low_memory"):
            plan = MemoryPlan(plan.dtype_name, True, True, self.base.device == "cuda", "retry after running out of memory")
        apply_memory_savers(self.base, plan)

    def should_stop(self, beat: Heartbeat) -> Callable[[], bool]:
        return lambda: self.stopping.is_set() or beat.cancel_requested.is_set() or beat.lease_lost.is_set()


def _pid_on_host(worker_id: str, host: str) -> int | None:
    """The process id in a default worker id (`<host>-<pid>`) of this host; None for others' or named ones."""
    prefix, _, pid = worker_id.rpartition("-")
    return int(pid) if prefix == host and pid.isdigit() else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def server_policy(worker: Worker, job: Job) -> str:
    """The NSFW policy of the server a job came from; DMs and the CLI count as block."""
    from engine.store.community import guild_settings

    return guild_settings(worker.store, job.guild_id).nsfw_policy if job.guild_id else "block"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def release_cached_memory() -> None:
    """Imported late, like torch: between jobs, torch's cached GPU memory goes back to the card."""
    import sys

    if "torch" in sys.modules:
        from engine.base_model import release_cached_memory as release

        release()


def _training_cancelled():
    """Imported late: engine.lora_training pulls in torch, which the queue side of this module avoids."""
    from engine.lora_training import TrainingCancelled

    return TrainingCancelled


# --- job handlers: (worker, job, heartbeat) -> result dict -------------------------------------------

def run_enroll(worker: Worker, job: Job, beat: Heartbeat) -> dict:
    """Preprocess uploaded photos (saved under <data>/tmp/ by the bot) and enroll the good ones."""
    from engine.enroll import enroll_user
    from engine.preprocess import UploadedPhoto

    uploads_root = (worker.settings.data_dir / "tmp").resolve()
    photos, paths = [], []
    for upload in job.params.get("uploads", []):
        path = Path(upload["path"]).resolve()
        if not path.is_relative_to(uploads_root) or not path.is_file():
            raise FaceChainError(f"Upload {upload.get('name', '?')} is missing; send the photos again.")
        photos.append(UploadedPhoto(upload.get("name") or path.name, path.read_bytes()))
        paths.append(path)
    beat.update(0.1, "checking photos")
    try:
        report = enroll_user(worker.store, worker.analyzer, worker.settings, job.user_id, photos,
                             job.params.get("subject"))
    except FaceChainError:  # final: the photos will not be needed again
        _delete(paths)
        raise
    _delete(paths)  # after any other error they stay for the retry (maintenance clears old ones)
    result = report.to_json()
    if job.params.get("train_after") and report.result.accepted:
        first_model = worker.store.ready_face_model(job.user_id) is None
        if first_model and worker.settings.training_previews:  # queued first: it runs before the training
            try:
                result["teaser_job_id"] = _queue_teaser(worker, job)
            except QueueLimit:
                pass
        try:
            result["train_job_id"] = _queue_training(worker, job)
        except QueueLimit as limit:  # the photos are enrolled; training can be asked for later
            result["train_error"] = str(limit)
    return result


def _delete(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _queue_training(worker: Worker, job: Job) -> int:
    """Queue a training on the new photos. A queued one reads the photos when it starts, so it is
    reused; a running one (only with several workers) finishes on the photos it has."""
    active = [j for j in worker.queue.active_jobs(user_id=job.user_id) if j.kind == "train"]
    if active:
        return active[0].id
    return worker.queue.enqueue("train", job.user_id, {}, guild_id=job.guild_id, channel_id=job.channel_id).id


def _queue_teaser(worker: Worker, job: Job) -> int | None:
    """Two preview portraits while the first face model trains (behind trained members' portraits)."""
    from engine.styles import load_styles

    style = worker.settings.training_preview_style
    if load_styles(worker.settings.styles_dir).get(style) is None:
        log.warning("FACECHAIN_TRAINING_PREVIEW_STYLE=%s is not a style: no preview portraits", style)
        return None
    return worker.queue.enqueue("teaser", job.user_id, {"style": style, "count": 2}, guild_id=job.guild_id,
                                channel_id=job.channel_id).id


def run_teaser(worker: Worker, job: Job, beat: Heartbeat) -> dict:
    """The preview portraits: skipped when the face model finished first (the real ones are better)."""
    from engine.portrait import make_portraits
    from engine.styles import load_styles

    if worker.store.ready_face_model(job.user_id) is not None:
        return {"skipped": "the face model is ready", "portraits": []}
    worker._fit_memory(job)
    from engine.nsfw_policy import may_show_flagged

    result = make_portraits(worker.store, worker.generator, worker.analyzer, worker.settings,
                            load_styles(worker.settings.styles_dir), job.user_id, job.params["style"],
                            count=int(job.params.get("count", 2)), job_id=job.id, safety=worker.safety, teaser=True,
                            show_flagged=may_show_flagged(server_policy(worker, job), False),
                            on_step=lambda step, total: beat.update(0.9 * step / total, "drawing your preview"))
    return {"portraits": [p.to_json() for p in result.portraits], "notice": result.notice,
            "held_back": result.held_back}


def run_train(worker: Worker, job: Job, beat: Heartbeat) -> dict:
    from engine.train import train_user

    beat.update(0.0, "loading the model")
    worker._fit_memory(job)
    model = train_user(
        worker.store, worker.base, worker.settings, job.user_id, steps=job.params.get("steps"),
        on_progress=lambda p: beat.update(p.step / p.total, f"training {p.step}/{p.total}, about {p.eta_seconds:.0f} s left"),
        should_cancel=worker.should_stop(beat),
    )
    worker.generator.forget_adapter(model.path)  # a retrained user gets the new weights
    return {"version": model.version, "path": str(model.path), "steps": model.meta["steps"],
            "final_loss": model.meta["final_loss"], "resumed_from_step": model.meta["resumed_from_step"]}


def run_generate(worker: Worker, job: Job, beat: Heartbeat) -> dict:
    from engine.portrait import make_portraits
    from engine.portrait_request import check_request
    from engine.nsfw_policy import may_show_flagged
    from engine.store.community import guild_settings
    from engine.styles import load_styles

    params = job.params
    catalogue = load_styles(worker.settings.styles_dir)
    count = int(params.get("count", 4))
    check_request(worker.store, worker.settings, catalogue, job.user_id, params.get("style", ""), count)
    worker._fit_memory(job)
    # Requests from DMs and the CLI have no server: flagged portraits are blocked there.
    server = guild_settings(worker.store, job.guild_id) if job.guild_id else None
    policy = server.nsfw_policy if server else "block"

    def on_step(step: int, total: int) -> None:
        if beat.cancel_requested.is_set():
            raise JobCancelled(f"cancelled at step {step}")
        beat.update(0.9 * step / total, "ranking by likeness" if step == total else f"generating {100 * step // total}%")

    result = make_portraits(worker.store, worker.generator, worker.analyzer, worker.settings, catalogue, job.user_id,
                            params["style"], count=count, seed=params.get("seed"), on_step=on_step, job_id=job.id,
                            variation_of=params.get("variation_of"), safety=worker.safety, fast=params.get("fast"),
                            words=params.get("prompt") or "", blocked_words=server.blocked_words if server else (),
                            show_flagged=may_show_flagged(policy, bool(params.get("age_restricted"))))
    if params.get("fast"):
        from engine.generate import FAST_PROBLEM

        resolve_setup_problems(worker.store, FAST_PROBLEM)  # it loaded: an open incident is over
    return {"portraits": [p.to_json() for p in result.portraits], "notice": result.notice,
            "held_back": result.held_back}


def run_swap(worker: Worker, job: Job, beat: Heartbeat) -> dict:
    """The member's face on the photo they sent (saved by the bot under <data>/tmp/). With several faces
    and none chosen, a numbered preview to choose from (the photo is kept for the choice)."""
    from PIL import Image

    from engine.portrait import save_portraits, screen
    from engine.postprocess import RankedPortrait
    from engine.preprocess import UploadedPhoto
    from engine.nsfw_policy import may_show_flagged
    from engine.swap import SeveralFaces, swap_face

    upload = Path(job.params.get("upload", "")).resolve()
    if not upload.is_relative_to((worker.settings.data_dir / "tmp").resolve()) or not upload.is_file():
        raise FaceChainError("That photo is no longer here: send it again with `/facechain swap`.")
    beat.update(0.2, "putting your face on the photo")
    try:
        result = swap_face(worker.store, worker.analyzer, worker.settings, job.user_id,
                           UploadedPhoto(job.params.get("name") or upload.name, upload.read_bytes()),
                           job.params.get("face"))
    except SeveralFaces as several:
        preview = worker.store.private_dir(job.user_id, "portraits") / f"swap-choose-job{job.id}.jpg"
        worker.store.write_private_file(preview, several.preview)
        return {"choose": several.count, "preview": worker.store.relative(preview)}
    except FaceChainError:
        upload.unlink(missing_ok=True)
        raise
    policy = server_policy(worker, job)
    ranked, held_back = screen(worker.safety, [RankedPortrait(Image.fromarray(result.image), 0, result.similarity)],
                               may_show_flagged(policy, bool(job.params.get("age_restricted"))))
    saved = save_portraits(worker.store, job.user_id, "swap", ranked, None, job.id)
    upload.unlink(missing_ok=True)
    return {"portraits": [p.to_json() for p in saved], "face": result.face, "faces_found": result.faces_found,
            "held_back": held_back,
            "notice": "This server's safety filter held the result back." if held_back else None}


def run_upscale(worker: Worker, job: Job, beat: Heartbeat) -> dict:
    """Sharper x2 of one of the member's portraits: a new portrait at twice the size."""
    from PIL import Image

    from engine.portrait import ALL_HELD_BACK
    from engine.nsfw_policy import may_show_flagged
    from engine.styles import load_styles
    from engine.upscale import upscale

    worker._fit_memory(job)
    saved = upscale(worker.store, worker.generator, worker.analyzer, worker.settings,
                    load_styles(worker.settings.styles_dir), job.user_id, int(job.params["portrait_id"]),
                    job_id=job.id, on_step=lambda step, total: beat.update(0.9 * step / total, "sharpening"))
    if worker.safety is not None and worker.safety.flags([Image.open(saved.path)])[0]:
        worker.store.db.execute("update portraits set nsfw = 1 where job_id = ?", [job.id])
        if not may_show_flagged(server_policy(worker, job), bool(job.params.get("age_restricted"))):
            worker.store.delete_portraits([row["id"] for row in worker.store.job_portraits(job.id)])
            return {"portraits": [], "notice": ALL_HELD_BACK, "held_back": 1}
    return {"portraits": [saved.to_json()], "notice": None, "held_back": 0}


def run_preview(worker: Worker, job: Job, beat: Heartbeat) -> dict:
    """Draw one style's preview image (the base model, no face)."""
    from engine.style_previews import draw_preview
    from engine.styles import load_styles

    style = load_styles(worker.settings.styles_dir).get(job.params.get("style", ""))
    if style is None:
        raise FaceChainError(f"No style {job.params.get('style')!r} to draw a preview of (removed meanwhile).")
    beat.update(0.0, f"drawing the {style.name} preview")
    worker._fit_memory(job)
    return {"path": str(draw_preview(worker.generator, worker.settings, style))}


HANDLERS: dict[str, Callable[[Worker, Job, Heartbeat], dict]] = {
    "enroll": run_enroll, "train": run_train, "generate": run_generate, "swap": run_swap, "upscale": run_upscale,
    "teaser": run_teaser,
    "preview": run_preview,
}
