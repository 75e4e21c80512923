"""Job queue speed: jobs/s through enqueue -> claim -> complete with no-op jobs, and how long the bot
waits to enqueue while a real worker process trains on the same database.

    python bench/queue.py [--jobs 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.config import load_settings
from engine.enroll import enroll_user
from engine.faces import get_analyzer
from engine.preprocess import UploadedPhoto
from engine.queue import SqliteJobQueue
from engine.random_models import make_tiny_model
from engine.store import Store

ROOT = Path(__file__).parent.parent


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def throughput(settings, count: int) -> None:
    queue = SqliteJobQueue(Store(settings.data_dir), settings.model_copy(update={"max_queued_portraits_per_user": count}))
    start = time.perf_counter()
    for n in range(count):
        queue.enqueue("generate", f"u{n % 50}", {"n": n})
    enqueued = time.perf_counter()
    while (job := queue.claim("bench")) is not None:
        queue.complete(job.id, "bench", {})
    done = time.perf_counter()
    print(f"throughput: {count} no-op jobs, enqueue {count / (enqueued - start):.0f}/s, "
          f"claim+complete {count / (done - enqueued):.0f}/s, end to end {count / (done - start):.0f} jobs/s")


def latency_while_training(settings, model: Path) -> None:
    store = Store(settings.data_dir)
    photos = [UploadedPhoto(p.name, p.read_bytes()) for p in sorted((ROOT / "tests/data/obama").glob("obama[123].jpg"))]
    enroll_user(store, get_analyzer(settings), settings, "trainee", photos, subject="man")
    queue = SqliteJobQueue(store, settings.model_copy(update={"max_queued_portraits_per_user": 10_000}))
    queue.enqueue("train", "trainee", {"steps": 400})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FACECHAIN_DATA_DIR": str(settings.data_dir),
           "FACECHAIN_BASE_MODEL": str(model), "FACECHAIN_DEVICE": "cpu", "FACECHAIN_TRAIN_RESOLUTION": "64"}
    worker = subprocess.Popen([sys.executable, "-m", "engine.cli", "worker", "--id", "bench-worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while queue.jobs(state="running") == []:
            time.sleep(0.1)
        waits = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            start = time.perf_counter()
            job = queue.enqueue("generate", "asker", {"style": "anime"})
            waits.append((time.perf_counter() - start) * 1000)
            queue.cancel(job.id)
            time.sleep(0.01)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    print(f"enqueue while a worker trains: {len(waits)} enqueues, p50 {statistics.median(waits):.1f} ms, "
          f"p99 {percentile(waits, 0.99):.1f} ms, max {max(waits):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="facechain-queue-"))
    settings = load_settings(_env_file=None, data_dir=scratch / "a")
    throughput(settings, args.jobs)
    model = make_tiny_model(scratch / "tiny")
    latency_while_training(load_settings(_env_file=None, data_dir=scratch / "b"), model)


if __name__ == "__main__":
    main()
