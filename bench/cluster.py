"""The cluster on the tiny model (any machine with the cluster extra): portrait jobs per minute with
1, 2 and 3 Ray actors, the dispatch overhead per job against the local worker, and how often a
portrait went to the actor that already held the member's face model (adapter affinity).

    python bench/cluster.py [--quick] [--jobs N] [--json FILE]

A local Ray cluster (`ray.cluster_utils.Cluster`): a head and three nodes declaring one GPU and one
CPU each; the actors draw where torch can (the CPU here). They share this machine's cores, so more
actors than cores cannot scale: the report states the cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from engine.benchmarks.common import bench_arguments, write_figures
from engine.config import Settings, load_settings
from engine.faces import get_analyzer
from engine.jobs.queue import SqliteJobQueue
from engine.jobs.worker import Worker
from engine.models.random_models import make_tiny_model
from engine.preprocess import UploadedPhoto
from engine.preprocess.enroll import enroll_user
from engine.store import Store
from engine.training.train import train_user

ROOT = Path(__file__).parent.parent
PHOTOS = ROOT / "tests" / "data" / "obama"
MEMBERS = ("a", "b", "c", "d")
ACTORS = (1, 2, 3)
SETTINGS = {"one_face_per_member": False,  # the members share one set of photos
            "device": "cpu", "vae": "", "train_resolution": 64, "portrait_size": 64, "portrait_candidates": 2,
            "job_lease_seconds": 30, "job_retry_seconds": 0, "training_previews": False,
            "max_queued_portraits_per_user": 1000}


def queue_portraits(queue: SqliteJobQueue, jobs: int, first_seed: int) -> list[int]:
    """`jobs` one-portrait requests, the members taking turns (as a busy evening interleaves them)."""
    return [queue.enqueue("generate", MEMBERS[n % len(MEMBERS)], {"style": "anime", "count": 1,
                                                                  "seed": first_seed + n}).id for n in range(jobs)]


def wait_done(queue: SqliteJobQueue, ids: list[int], timeout: float = 1800) -> float:
    start = time.perf_counter()
    while any(queue.get(job_id).state != "done" for job_id in ids):
        failed = [queue.get(job_id) for job_id in ids if queue.get(job_id).state in ("failed", "cancelled")]
        if failed:
            raise SystemExit(f"job {failed[0].id} {failed[0].state}: {failed[0].error}")
        if time.perf_counter() - start > timeout:
            raise SystemExit("the jobs did not finish in time")
        time.sleep(0.05)
    return time.perf_counter() - start


def span_per_job(queue: SqliteJobQueue, ids: list[int]) -> float:
    """Seconds a job, from the first job's start to the last one's end: what a steady backlog costs, without the
    first claim's wait (an idle worker looks at the queue once a second)."""
    from datetime import datetime

    jobs = [queue.get(job_id) for job_id in ids]
    first = min(datetime.fromisoformat(job.started_at) for job in jobs)
    last = max(datetime.fromisoformat(job.finished_at) for job in jobs)
    return (last - first).total_seconds() / len(jobs)


def local_seconds_per_job(settings: Settings, jobs: int) -> tuple[float, float]:
    """The same portrait jobs on the local worker process, as the bot starts it (warm: a first job
    loads the model). One torch thread, as Ray gives each of its workers (OMP_NUM_THREADS=1)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FACECHAIN_")}
    env.update({f"FACECHAIN_{name.upper()}": str(value) for name, value in SETTINGS.items()})
    env.update({"FACECHAIN_DATA_DIR": str(settings.data_dir), "FACECHAIN_BASE_MODEL": settings.base_model,
                "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    worker = subprocess.Popen([sys.executable, "-m", "engine.cli", "worker", "--id", "bench-local"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        queue = SqliteJobQueue(Store(settings.data_dir), settings)
        wait_done(queue, queue_portraits(queue, 1, 9000))
        ids = queue_portraits(queue, jobs, 9100)
        return wait_done(queue, ids) / jobs, span_per_job(queue, ids)
    finally:
        worker.terminate()
        worker.wait()


def cluster_run(settings: Settings, actors: int, jobs: int) -> dict:
    import ray

    from engine.jobs.cluster.dispatcher import Dispatcher

    dispatcher = Dispatcher(settings.model_copy(update={"ray_actors": actors}), f"bench-{actors}")
    loop = threading.Thread(target=dispatcher.run, kwargs={"poll_seconds": 0.05}, daemon=True)
    loop.start()
    queue = SqliteJobQueue(Store(settings.data_dir), settings)  # this thread's own connection
    wait_done(queue, queue_portraits(queue, 2 * actors, 1000 * actors))  # every actor loads its model first
    stats = dispatcher.pool.stats
    hits_before, computed_before = (stats.affinity_hits, stats.portraits), stats.compute_seconds
    ids = queue_portraits(queue, jobs, 1000 * actors + 100)
    seconds = wait_done(queue, ids)
    span = span_per_job(queue, ids)
    hits, portraits = stats.affinity_hits - hits_before[0], stats.portraits - hits_before[1]
    computed = (stats.compute_seconds - computed_before) / jobs
    dispatcher.stopping.set()
    loop.join()
    ray.shutdown()  # the actors go with this driver
    return {"actors": actors, "jobs": jobs, "seconds": round(seconds, 2),
            "jobs_per_min": round(60 * jobs / seconds, 1), "seconds_per_job": seconds / jobs, "span_per_job": span,
            "compute_per_job": computed,
            "affinity_hit_rate": round(hits / portraits, 2) if portraits else None}


def main() -> None:
    parser = bench_arguments(__doc__)
    parser.add_argument("--jobs", type=int, help="portrait jobs per run (default 24, quick 8)")
    args = parser.parse_args()
    jobs = args.jobs or (8 if args.quick else 24)
    try:
        from ray.cluster_utils import Cluster
    except ModuleNotFoundError:
        print("skipped: needs the cluster extra (pip install -e '.[cluster]')")
        write_figures(args.json, {"skipped": "Ray is not installed (pip install -e '.[cluster]')"})
        return
    scratch = Path(tempfile.mkdtemp(prefix="facechain-bench-cluster-"))
    model = make_tiny_model(scratch / "tiny")
    settings = load_settings(_env_file=None, data_dir=scratch / "data", base_model=str(model), **SETTINGS)
    store = Store(settings.data_dir)
    photos = [UploadedPhoto(p.name, p.read_bytes()) for p in sorted(PHOTOS.glob("obama[123].jpg"))]
    worker = Worker(settings, "bench-setup")
    for member in MEMBERS:
        enroll_user(store, get_analyzer(settings), settings, member, photos, subject="man")
        train_user(store, worker.base, settings, member, steps=5)
    local, local_span = local_seconds_per_job(settings, jobs)
    cores = os.cpu_count() or 1
    print(f"{cores} cores; local worker: {local * 1000:.0f} ms per portrait job ({60 / local:.1f} jobs/min), "
          f"{local_span * 1000:.0f} ms from the first start to the last end")

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in ACTORS:
        cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    runs = []
    try:
        for actors in ACTORS:
            run = cluster_run(settings.model_copy(update={"ray_address": cluster.address}), actors, jobs)
            runs.append(run)
            print(f"{actors} actor(s): {run['jobs_per_min']} jobs/min ({run['seconds']} s for {jobs} jobs), "
                  f"affinity hits {run['affinity_hit_rate']}")
    finally:
        cluster.shutdown()
    overhead_ms = (runs[0]["seconds_per_job"] - local) * 1000
    steady_ms = (runs[0]["span_per_job"] - local_span) * 1000
    # What a job costs beyond its drawing: claim, inputs, the trip to the actor and back, the time it waits for the
    # actor (its drawing on the actor is timed there). Measured within one run, so a busy core moves both terms.
    dispatch_ms = (runs[0]["span_per_job"] - runs[0]["compute_per_job"]) * 1000
    print(f"dispatch: {dispatch_ms:.0f} ms per job of a steady backlog beyond the actor's drawing (1 actor); "
          f"against the local worker: {overhead_ms:.0f} ms per job from enqueue to done, {steady_ms:.0f} ms per job "
          "of a steady backlog")
    scaling = runs[-1]["jobs_per_min"] / runs[0]["jobs_per_min"]
    print(f"{ACTORS[-1]} actors against 1: {scaling:.2f}x on {cores} cores")
    write_figures(args.json, {
        "cores": cores, "jobs_per_run": jobs, "members": len(MEMBERS), "size_px": SETTINGS["portrait_size"],
        "local_ms_per_job": round(local * 1000, 1), "local_jobs_per_min": round(60 / local, 1),
        "runs": [{key: value for key, value in run.items()
                  if key not in ("seconds_per_job", "span_per_job", "compute_per_job")} for run in runs],
        "dispatch_ms_per_job": round(dispatch_ms, 1),
        "dispatch_overhead_ms": round(overhead_ms, 1), "dispatch_overhead_steady_ms": round(steady_ms, 1),
        "scaling_3_vs_1": round(scaling, 2),
    })


if __name__ == "__main__":
    main()
