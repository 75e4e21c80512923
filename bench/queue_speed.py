"""Job queue speed: jobs/s through enqueue -> claim -> complete with no-op jobs, and how long the bot
waits to enqueue while a real worker process trains on the same database.

    python bench/queue_speed.py [--quick] [--jobs 2000] [--json FILE]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.benchmarks.common import bench_arguments, percentile, write_figures
from engine.config import load_settings
from engine.faces import get_analyzer
from engine.jobs.queue import SqliteJobQueue
from engine.models.random_models import make_tiny_model
from engine.preprocess import UploadedPhoto
from engine.preprocess.enroll import enroll_user
from engine.store import Store

ROOT = Path(__file__).parent.parent


def open_queue(settings) -> SqliteJobQueue:
    """A queue on `settings`' data dir that takes any number of jobs per member."""
    unlimited = settings.model_copy(update={"max_queued_portraits_per_user": 10**6})
    return SqliteJobQueue(Store(settings.data_dir), unlimited)


def throughput(settings, count: int) -> dict:
    queue = open_queue(settings)
    start = time.perf_counter()
    for n in range(count):
        queue.enqueue("generate", f"u{n % 50}", {"n": n})
    enqueued = time.perf_counter()
    while (job := queue.claim("bench")) is not None:
        queue.complete(job.lease, {})
    done = time.perf_counter()
    figures = {"jobs": count, "enqueue_per_s": round(count / (enqueued - start)),
               "claim_complete_per_s": round(count / (done - enqueued)), "jobs_per_s": round(count / (done - start))}
    print(f"throughput: {count} no-op jobs, enqueue {figures['enqueue_per_s']}/s, "
          f"claim+complete {figures['claim_complete_per_s']}/s, end to end {figures['jobs_per_s']} jobs/s")
    return figures


def claim_with_a_long_history(settings, queued: int, history: int, claims: int = 200) -> dict:
    """ms per claim+complete with `queued` jobs waiting from 50 members and `history` finished jobs,
    as after weeks of uptime: the fair order must not scan the history."""
    queue = open_queue(settings)
    for member in range(50):
        queue.store.touch_user(f"u{member}")
    for count in (history, queued):
        with queue.store.transaction():  # bulk-load: the enqueue path is measured elsewhere
            queue.db["jobs"].insert_all({"kind": "generate", "user_id": f"u{n % 50}", "params": "{}", "state": "queued",
                                         "attempts": 0, "progress": 0.0, "cancel_requested": 0,
                                         "created_at": "2026-01-01T00:00:00+00:00"} for n in range(count))
        if count == history:  # served and finished long ago
            queue.db.execute("update jobs set state = 'done', started_at = created_at, heartbeat_at = created_at, "
                             "finished_at = created_at")
    start = time.perf_counter()
    for _ in range(claims):
        job = queue.claim("bench")
        queue.complete(job.lease, {})
    per_claim = (time.perf_counter() - start) / claims * 1000
    print(f"claim+complete with {queued} queued and {history} finished jobs: {per_claim:.1f} ms")
    return {"claim_queued": queued, "claim_history": history, "claim_ms_long_history": round(per_claim, 2)}


def latency_while_training(settings, model: Path, window_seconds: float) -> dict:
    queue = open_queue(settings)
    photos = [UploadedPhoto(p.name, p.read_bytes()) for p in sorted((ROOT / "tests/data/obama").glob("obama[123].jpg"))]
    enroll_user(queue.store, get_analyzer(settings), settings, "trainee", photos, subject="man")
    queue.enqueue("train", "trainee", {"steps": 400})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FACECHAIN_DATA_DIR": str(settings.data_dir),
           "FACECHAIN_BASE_MODEL": str(model), "FACECHAIN_VAE": "", "FACECHAIN_DEVICE": "cpu",
           "FACECHAIN_TRAIN_RESOLUTION": "64"}
    worker = subprocess.Popen([sys.executable, "-m", "engine.cli", "worker", "--id", "bench-worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while queue.jobs(state="running") == []:
            time.sleep(0.1)
        waits = []
        deadline = time.monotonic() + window_seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            job = queue.enqueue("generate", "asker", {"style": "anime"})
            waits.append((time.perf_counter() - start) * 1000)
            queue.cancel(job.id)
            time.sleep(0.01)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    figures = {"enqueues_while_training": len(waits), "enqueue_while_training_p50_ms": round(percentile(waits, 0.5), 2),
               "enqueue_while_training_p99_ms": round(percentile(waits, 0.99), 2),
               "enqueue_while_training_max_ms": round(max(waits), 2)}
    print(f"enqueue while a worker trains: {len(waits)} enqueues, p50 {figures['enqueue_while_training_p50_ms']} ms, "
          f"p99 {figures['enqueue_while_training_p99_ms']} ms, max {figures['enqueue_while_training_max_ms']} ms")
    return figures


def write_lock_per_running_job(settings, writes: int = 300) -> dict:
    """The queue's write-lock time one running job costs: its lease beats (every 20 s at the default lease) alone,
    as progress (at most every 2 s) goes to the progress board, a file of its own; that write is timed too."""
    from engine.jobs.heartbeat import PROGRESS_EVERY_SECONDS

    queue = open_queue(settings)
    queue.enqueue("generate", "ann", {})
    lease = queue.claim("bench").lease
    beat_ms = best_ms(lambda n: queue.heartbeat(lease, n / writes, f"generating {n}"), writes)
    board_ms = best_ms(lambda n: queue.board.write(lease.job_id, lease.token, n / writes, f"generating {n}"), writes)
    beats_a_minute = 60 / (settings.job_lease_seconds / 3)
    figures = {"heartbeat_ms": round(beat_ms, 3), "progress_board_write_ms": round(board_ms, 3),
               "write_lock_ms_per_job_minute": round(beats_a_minute * beat_ms, 2),
               "progress_board_ms_per_job_minute": round(60 / PROGRESS_EVERY_SECONDS * board_ms, 2)}
    print(f"write lock of a running job: a beat {beat_ms:.3f} ms, so {figures['write_lock_ms_per_job_minute']} ms of "
          f"the queue's lock a minute; progress every {PROGRESS_EVERY_SECONDS:g} s on its own board costs "
          f"{board_ms:.3f} ms a write ({figures['progress_board_ms_per_job_minute']} ms a minute, none of it the "
          "queue's lock)")
    return figures


def best_ms(action, count: int) -> float:
    """Mean ms of `action(n)` over `count` calls, the best of three rounds."""
    rounds = []
    for _ in range(3):
        start = time.perf_counter()
        for n in range(count):
            action(n)
        rounds.append((time.perf_counter() - start) / count * 1000)
    return min(rounds)


def main() -> None:
    parser = bench_arguments(__doc__)
    parser.add_argument("--jobs", type=int, help="no-op jobs for the throughput run (default 2000, quick 300)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="facechain-queue-"))
    settings = load_settings(_env_file=None, data_dir=scratch / "a")
    figures = throughput(settings, args.jobs or (300 if args.quick else 2000))
    figures |= claim_with_a_long_history(load_settings(_env_file=None, data_dir=scratch / "c"),
                                         *((500, 5000) if args.quick else (2000, 20000)))
    figures |= write_lock_per_running_job(load_settings(_env_file=None, data_dir=scratch / "d"))
    model = make_tiny_model(scratch / "tiny")
    figures |= latency_while_training(load_settings(_env_file=None, data_dir=scratch / "b"), model,
                                      1 if args.quick else 10)
    write_figures(args.json, figures)


if __name__ == "__main__":
    main()
