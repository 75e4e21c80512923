"""The dispatcher: the worker loop of a cluster. It runs where the data folder is.

It claims jobs from the SQLite queue in the queue's fair order (only while an actor is free, so
fairness holds across the cluster), keeps their leases with the same heartbeat as the local
worker, gathers each job's inputs, runs the model work on a Ray actor and records the outputs.
Routing prefers the actor that already holds the member's face model, then the one idle longest.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayError, TaskCancelledError

from engine.config import Settings
from engine.errors import FaceChainError, SettingsError
from engine.generation.generate import lora_file
from engine.generation.portrait import face_key_owner
from engine.generation.style_files import StyleFileMissing
from engine.jobs.cluster.actor import ACTOR_PREFIX, JOB_GROUP, NAMESPACE, GpuActor
from engine.jobs.cluster.address import check_address, check_node_addresses, check_reachable
from engine.jobs.heartbeat import Heartbeat
from engine.jobs.instant_runner import queue_missing_instant_reads
from engine.jobs.job_types import job_members
from engine.jobs.queue import Job
from engine.jobs.runners import FACE_ADAPTER_KINDS, ComputeLost, JobCancelled, JobContext, run_job_with
from engine.jobs.worker import Worker, stale_face_adapters
from engine.memory import peak_rss_mb
from engine.models.loaded import MAX_ADAPTERS
from engine.store.setup_problems import report_setup_problem, resolve_setup_problems

log = logging.getLogger(__name__)
NO_GPU_PROBLEM, UNREACHABLE_PROBLEM = "cluster", "cluster address"
RECONNECT_SECONDS = 10.0
MAX_RECONNECT_SECONDS = 300.0
PING_SECONDS = 2.0
EMPTY_QUEUE_SECONDS = 1.0  # as often as the local worker looks at an empty queue
NO_ACTOR_SECONDS = 60.0  # no actor ready this long: the owner is told
LOOP_ERROR_SECONDS = 2.0  # after an error in the loop (a locked database, a Ray hiccup): wait, go on
LOST_TEXT = "The GPU machine running this went away."
STYLE_GONE_TEXT = "That style was removed while your request waited: choose another one."
HUNG_TEXT = "The GPU machine running this stopped answering."


class ComputeHung(ComputeLost):
    """The job ran past its time limit on an actor (a hung driver, a CUDA deadlock); the actor is restarted."""


@dataclass
class ActorSlot:
    """One actor of the pool, as the dispatcher sees it."""

    name: str
    handle: Any
    ready: bool = False  # answered its last ping (a restarting actor does not)
    busy_with: int | None = None  # the job it runs
    where: str = ""  # "<name>@<ip> node <id>", written to the job's ran_on
    idle_since: float = field(default_factory=time.monotonic)
    faces: OrderedDict = field(default_factory=OrderedDict)  # users whose face model it holds, LRU order
    ping: Any = None
    pinged_at: float = 0.0
    ip: str = ""
    adapters: list[str] = field(default_factory=list)  # face and style adapters it holds, as it last said


@dataclass
class PoolStats:
    portraits: int = 0  # portrait jobs of members with a face model
    affinity_hits: int = 0  # ... sent to an actor that already held that face model
    compute_seconds: float = 0.0  # the actors' time computing jobs (the rest of a job's time is the dispatch's)


class ActorPool:
    """One actor per GPU of the cluster (or FACECHAIN_RAY_ACTORS), created as GPUs appear."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slots: list[ActorSlot] = []
        self.lock = threading.Lock()
        self.stats = PoolStats()
        self._checked_size_at = 0.0

    def wanted(self) -> int:
        return self.settings.ray_actors or int(ray.cluster_resources().get("GPU", 0))

    def refresh(self) -> bool:
        """Ping the actors; now and then, start actors for GPUs that joined. True when it sized the pool."""
        now = time.monotonic()
        sized = now - self._checked_size_at > 5 * PING_SECONDS
        if sized:
            self._checked_size_at = now
            while len(self.slots) < self.wanted():
                self._add()
        for slot in self.slots:
            self._check(slot, now)
        return sized

    def _add(self) -> None:
        # The dispatcher's pid in the name: a restarted dispatcher's actors never meet the old ones' names.
        name = f"{ACTOR_PREFIX}{len(self.slots)}-{os.getpid()}"
        values = self.settings.model_dump(exclude={"discord_token", "data_dir"})
        # One job at a time on the GPU ("job" group of one); pings, stops and forgets beside it.
        actor = ray.remote(concurrency_groups={JOB_GROUP: 1})(GpuActor).options(
            name=name, namespace=NAMESPACE, num_gpus=1, num_cpus=0, max_restarts=-1, max_concurrency=4,
        ).remote(values, name)
        self.slots.append(ActorSlot(name, actor))
        log.info("cluster: started actor %s", name)

    def _check(self, slot: ActorSlot, now: float) -> None:
        if slot.ping is None:
            if now - slot.pinged_at >= (PING_SECONDS if slot.ready else 0.5):
                slot.ping, slot.pinged_at = slot.handle.info.remote(), now
            return
        done, _ = ray.wait([slot.ping], timeout=0)
        if not done:
            if now - slot.pinged_at > 3 * PING_SECONDS and slot.busy_with is None:
                slot.ready = False  # restarting, or its node is gone
            return
        try:
            info = ray.get(slot.ping)
            slot.where = f"{slot.name}@{info['ip']} node {info['node_id'][:8]}"
            slot.ip, slot.adapters = info["ip"], info.get("adapters", [])
            if not slot.ready:
                log.info("cluster: actor ready: %s", slot.where)
            slot.ready = True
        except RayError as error:
            if slot.ready:
                log.warning("cluster: actor %s does not answer: %s", slot.name, str(error).splitlines()[0][:300])
            slot.ready = False
        slot.ping = None

    def take(self, members: list[str], portrait: bool) -> ActorSlot | None:
        """A free actor for a job drawing `members`' faces: the one holding most of their face models,
        else the one idle longest."""
        with self.lock:
            free = [slot for slot in self.slots if slot.ready and slot.busy_with is None]
            if not free:
                return None
            held = {id(slot): sum(member in slot.faces for member in members) for slot in free}
            holding = sorted((slot for slot in free if held[id(slot)]), key=lambda s: -held[id(s)])
            slot = (holding or sorted(free, key=lambda s: s.idle_since))[0]
            if portrait:
                self.stats.portraits += 1
                self.stats.affinity_hits += bool(holding)
            slot.busy_with = -1  # taken; the job id follows once claimed
            return slot

    def give_back(self, slot: ActorSlot, lost: bool = False) -> None:
        with self.lock:
            slot.busy_with, slot.idle_since = None, time.monotonic()
            if lost:
                slot.ready, slot.faces = False, OrderedDict()  # a restarted actor holds nothing

    def remember_face(self, slot: ActorSlot, user_id: str) -> None:
        slot.faces[user_id] = True
        slot.faces.move_to_end(user_id)
        while len(slot.faces) > MAX_ADAPTERS:
            slot.faces.popitem(last=False)

    def free(self) -> bool:
        return any(slot.ready and slot.busy_with is None for slot in self.slots)

    def any_ready(self) -> bool:
        return any(slot.ready for slot in self.slots)

    def restart(self, slot: ActorSlot) -> None:
        """Kill a hung actor; Ray starts it again (max_restarts) with nothing loaded."""
        log.warning("cluster: restarting actor %s", slot.name)
        try:
            ray.kill(slot.handle, no_restart=False)
        except RayError as error:
            log.warning("cluster: could not restart actor %s: %s", slot.name, error)
        slot.ready, slot.ping = False, None


class Dispatcher:
    def __init__(self, settings: Settings, worker_id: str | None = None) -> None:
        check_address(settings.ray_address, settings.ray_allow_public)
        self.settings = settings
        self.worker = Worker(settings, worker_id)  # the store, the queue, and how a job's ending is recorded
        self.worker_id = self.worker.worker_id
        self.stopping = self.worker.stopping
        self.pool: ActorPool | None = None
        self._threads: dict[int, threading.Thread] = {}
        self._next_claim_at = 0.0
        self._no_actor_since = time.monotonic()
        self._unserved: str | None = None  # the open "cluster" incident's message, while no actor serves
        self._refused: str | None = None  # why the cluster may not be used now (a node at a public address)
        self._next_hold_at = 0.0
        self._wake = threading.Event()

    def connect(self) -> bool:
        """Join the cluster; while it does not answer (or cannot be used), the owner is told once and jobs
        wait, tried again less and less often. False when stopped before it worked."""
        wait = RECONNECT_SECONDS
        while not ray.is_initialized():
            try:
                check_reachable(self.settings.ray_address)
                ray.init(address=self.settings.ray_address, namespace=NAMESPACE, logging_level=logging.WARNING)
                self._check_nodes()
            except Exception as error:  # noqa: BLE001 - whatever stops the cluster is the owner's to fix
                if ray.is_initialized():
                    ray.shutdown()
                message = str(error) if isinstance(error, (SettingsError, ConnectionError)) else (
                    f"Joining the Ray cluster at {self.settings.ray_address} failed ({type(error).__name__}: "
                    f"{str(error)[:300]}): check that the cluster runs the same Ray version (see the README).")
                if report_setup_problem(self.worker.store, UNREACHABLE_PROBLEM, message):
                    log.error("cluster: %s", message)
                self.worker.queue.hold_for_setup()
                if self.stopping.wait(wait):
                    return False
                wait = min(2 * wait, MAX_RECONNECT_SECONDS)
        resolve_setup_problems(self.worker.store, UNREACHABLE_PROBLEM)
        self.pool = ActorPool(self.settings)
        return True

    def _check_nodes(self) -> None:
        """SettingsError when a node of the cluster is at a public address (unless allowed)."""
        check_node_addresses([node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")],
                             self.settings.ray_allow_public)

    def run(self, exit_when_idle: float | None = None, poll_seconds: float = 0.2) -> None:
        self._stop_on_signals()
        if not self.connect():
            return
        self._stop_on_signals()  # again: ray.init installs a SIGTERM handler that exits at once
        log.info("dispatcher %s started on the Ray cluster at %s", self.worker_id, self.settings.ray_address)
        self.worker.reclaim_dead_leases()
        if self.settings.device in ("auto", "cuda") and self.pool.wanted():  # the cluster's GPUs draw them
            self.worker.queue_missing_previews(force=True)
        queue_missing_instant_reads(self.worker)
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            try:
                if self._tick():
                    idle_since = time.monotonic()
                elif exit_when_idle is not None and time.monotonic() - idle_since > exit_when_idle:
                    break
            except Exception:  # noqa: BLE001 - a locked database or a Ray hiccup must not end every job
                log.exception("dispatcher %s: an error in its loop; going on", self.worker_id)
                self.stopping.wait(LOOP_ERROR_SECONDS)
                continue
            self._wake.wait(poll_seconds)  # a job's end wakes it at once: its actor takes the next job now
            self._wake.clear()
        for thread in list(self._threads.values()):  # trainings checkpoint and go back; portraits finish
            thread.join(timeout=self.settings.job_lease_seconds)
        log.info("dispatcher %s stopped (peak memory %s MB)", self.worker_id, peak_rss_mb())

    def _tick(self) -> bool:
        """One look at the actors and the queue; True while jobs run or one was started."""
        if self.pool.refresh():
            self._check_cluster()
            self._forget_removed_faces()
        self._check_serving()
        running = {job_id: t for job_id, t in self._threads.items() if t.is_alive()}
        if len(running) < len(self._threads):
            self._next_claim_at = 0.0  # an actor came free: look at the queue now
        self._threads = running
        return self._refused is None and self._claim_next() or bool(self._threads)

    def _stop_on_signals(self) -> None:
        """SIGTERM and SIGINT stop the loop: trainings checkpoint and go back, portraits finish."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stopping.set())

    def _check_cluster(self) -> None:
        """Every few seconds: a node that joined at a public address stops all claiming until it leaves."""
        try:
            self._check_nodes()
        except SettingsError as refused:
            if self._refused is None:
                log.error("cluster: %s", refused)
            self._refused = str(refused)
            report_setup_problem(self.worker.store, UNREACHABLE_PROBLEM, str(refused))
            return
        if self._refused is not None:
            self._refused = None
            resolve_setup_problems(self.worker.store, UNREACHABLE_PROBLEM)

    def _check_serving(self) -> None:
        """No actor ready for a minute (or no GPU at all): the owner is told once, members' jobs wait."""
        now = time.monotonic()
        if self.pool.any_ready():
            self._no_actor_since = now
            if self._unserved is not None:
                self._unserved = None
                resolve_setup_problems(self.worker.store, NO_GPU_PROBLEM)
                self.worker.queue.hold_for_setup(False)
                log.info("cluster: actors serve again")
            return
        if self.pool.slots and now - self._no_actor_since < NO_ACTOR_SECONDS:
            return
        message = (f"The Ray cluster at {self.settings.ray_address} has no GPU: on each GPU machine run "
                   "`ray start --address <head>:6379 --num-gpus 1` (see the README).") if not self.pool.slots else (
            f"None of the cluster's {len(self.pool.slots)} GPU actors has answered for {NO_ACTOR_SECONDS:.0f} s: "
            "its GPU machines are gone, FACECHAIN_RAY_ACTORS asks for more actors than it has GPUs, or the "
            "project is not installed on a GPU machine (`pip install -e '.[cluster]'` there). Jobs wait meanwhile.")
        if message != self._unserved:
            if report_setup_problem(self.worker.store, NO_GPU_PROBLEM, message):
                log.error("cluster: %s", message)
            self._unserved = message
        if now >= self._next_hold_at:  # jobs queued meanwhile show it too
            self.worker.queue.hold_for_setup()
            self._next_hold_at = now + RECONNECT_SECONDS

    def _forget_removed_faces(self) -> None:
        """Face adapters of forgotten members (or failed-over face models) leave the actors' GPU memory."""
        for slot in self.pool.slots:
            stale = stale_face_adapters(self.worker.store, slot.adapters)
            if not stale:
                continue
            slot.handle.forget.remote(stale)
            slot.adapters = [name for name in slot.adapters if name not in stale]
            with self.pool.lock:
                for name in stale:
                    slot.faces.pop(face_key_owner(name)[0], None)
            log.info("cluster: %s unloads %s face adapter(s) no longer stored", slot.name, len(stale))

    def _claim_next(self) -> bool:
        """Claim the next job in the queue's order while an actor is free; True when one was started.
        An empty queue is looked at again after a second."""
        if not self.pool.free() or time.monotonic() < self._next_claim_at:
            return False
        job = self.worker.queue.claim(self.worker_id)
        if job is None:
            self._next_claim_at = time.monotonic() + EMPTY_QUEUE_SECONDS
            return False
        slot = self.pool.take(job_members(job), portrait=job.kind in FACE_ADAPTER_KINDS)
        if slot is None:  # every actor went away meanwhile: back to the queue, untouched
            self.worker.queue.release(job.lease)
            return False
        slot.busy_with = job.id
        thread = threading.Thread(target=self._run_on_actor, args=(job, slot), name=f"job-{job.id}", daemon=True)
        self._threads[job.id] = thread
        thread.start()
        return True

    def _run_on_actor(self, job: Job, slot: ActorSlot) -> None:
        # This thread's own view of the store (SQLite connections are not shared between threads).
        worker = Worker(self.settings, self.worker_id, stopping=self.stopping)
        beat = Heartbeat(self.settings, job.lease)
        freed = False

        def free_actor(lost: bool = False) -> None:
            """The actor takes its next job now (while this one's outputs are recorded here)."""
            nonlocal freed
            if not freed:
                freed = True
                self.pool.give_back(slot, lost=lost)
                self._next_claim_at = 0.0
                self._wake.set()

        try:
            worker.queue.record_ran_on(job.id, slot.where or slot.name)

            def compute(inputs: Any, context: JobContext) -> Any:
                deadline = time.monotonic() + self.settings.time_limit_seconds(job.kind)

                def on_actor() -> Any:
                    stream = slot.handle.run.remote(job.id, job.kind, inputs, bool(job.params.get("low_memory")))
                    outputs, seconds = follow(stream, context, lambda: slot.handle.stop_job.remote(job.id), slot.where,
                                              deadline)
                    with self.pool.lock:
                        self.pool.stats.compute_seconds += seconds
                    if job.kind in FACE_ADAPTER_KINDS:
                        for member in job_members(job):
                            self.pool.remember_face(slot, member)
                    free_actor()
                    return outputs
                try:
                    return on_actor()
                except StyleFileMissing as missing:  # said before it drew anything: send the file, run it again
                    send_style_file(slot, missing)
                return on_actor()

            def run() -> dict:
                try:
                    result = run_job_with(worker, job, beat, compute)
                except ComputeHung:
                    self.pool.restart(slot)
                    free_actor(lost=True)
                    raise
                except ComputeLost:
                    free_actor(lost=True)
                    raise
                resolve_setup_problems(worker.store, "models")  # the actor had the models it needed
                return result

            worker.settle(job, beat, run)
        finally:
            free_actor()
            beat.stop()
            worker.store.close()


def send_style_file(slot: ActorSlot, missing: StyleFileMissing) -> None:
    """Send an actor the style LoRA it lacks (a server's or the owner's style, on this machine's disk)."""
    try:
        data = lora_file(missing.reference, missing.weight_name, "the style's LoRA").read_bytes()
    except (FaceChainError, OSError):
        raise FaceChainError(STYLE_GONE_TEXT) from None
    if hashlib.sha256(data).hexdigest() != missing.digest:  # replaced since the job was read: read it again
        raise ComputeLost("The style's file changed while it was being sent.")
    ray.get(slot.handle.keep_style.remote(missing.digest, data))
    log.info("cluster: sent the style file %s (%.1f MB) to %s", missing.digest[:12], len(data) / 1e6,
             slot.where or slot.name)


def follow(stream, context: JobContext, ask_to_stop, where: str, deadline: float = math.inf) -> tuple[Any, float]:
    """Read an actor's event stream: progress to the heartbeat, checkpoints to the store; the outputs
    and the seconds the actor computed at the end. The owner's cancel becomes ray.cancel; a stop request,
    the actor's stop_job. Past `deadline` the actor is taken to be hung (ComputeHung). However the reading
    ends before the actor said "done" or "error" (a checkpoint that could not be written, a forgotten member,
    a hang), the actor's work is stopped too, so it never runs on beside the next job."""
    cancel_sent = stop_sent = ended = False
    try:
        while True:
            if context.cancelled() and not cancel_sent:
                ray.cancel(stream)
                cancel_sent = True
            elif context.should_stop() and not stop_sent:
                ask_to_stop()
                stop_sent = True
            if time.monotonic() > deadline:
                log.error("cluster: %s ran past its time limit; taking it as hung", where)
                raise ComputeHung(HUNG_TEXT)
            ready, _ = ray.wait([stream], timeout=0.5)
            if not ready:
                continue
            try:
                event = ray.get(next(stream))
            except TaskCancelledError:
                ended = True
                raise JobCancelled("cancelled") from None
            except (StopIteration, RayError) as error:
                ended = True  # the actor (or its machine) is gone, and its work with it
                log.warning("cluster: %s lost its job (%s)", where, type(error).__name__)
                raise ComputeLost(LOST_TEXT) from None
            match event:
                case ("progress", fraction, text):
                    context.update(fraction, text)
                case ("checkpoint", data):
                    context.save_checkpoint(data)
                case ("done", outputs, seconds):
                    ended = True
                    return outputs, seconds
                case ("error", error):
                    ended = True
                    raise error
    finally:
        if not ended:
            _stop_quietly(stream, ask_to_stop)


def _stop_quietly(stream, ask_to_stop) -> None:
    try:
        ray.cancel(stream)
        ask_to_stop()
    except RayError as error:  # the actor is gone: nothing left running
        log.info("cluster: stopping an abandoned job: %s", type(error).__name__)
