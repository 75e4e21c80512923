"""The bot under load: acknowledgement latency of 300 interactions from 50 members, the bot's
event-loop lag and the peak memory of the bot and its worker, while the worker trains three
members on the same machine (tiny model, CPU). The scenario of tests/test_bot_soak.py.

    python bench/bot_load.py [--quick] [--interactions 300] [--json FILE]
"""

from __future__ import annotations

import json
import re
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

from engine.benchmarks.common import bench_arguments, percentile, write_figures  # noqa: E402
from engine.models.random_models import make_tiny_model  # noqa: E402
from tests.bot_harness import SOAK_SETTINGS, running_bot, soak  # noqa: E402

TARGETS = {"ack_p99_ms": 100.0, "loop_lag_p99_ms": 50.0}


def main() -> None:
    parser = bench_arguments(__doc__)
    parser.add_argument("--interactions", type=int, help="default 300, quick 60")
    args = parser.parse_args()
    interactions = args.interactions or (60 if args.quick else 300)
    members = 20 if args.quick else 50
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = make_tiny_model(root / "tiny-sd")
        with running_bot(root / "run", {**SOAK_SETTINGS, "BASE_MODEL": model}, more_members=members - 3) as d:
            soak(d, interactions=interactions)
            acks = [i.ack_seconds * 1000 for i in d.fake.interactions.values()]
            unfinished = "select count(*) from jobs where state in ('queued', 'running') or delivered_at is null"
            d.fake.wait_for(lambda: d.rows(unfinished) == [(0,)], 900, "every job to finish")
            d.bot.stop(signal.SIGTERM)
            log = d.bot.log()
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    lag = [entry for entry in entries if entry["message"] == "event loop lag"][-1]
    bot_peak = [entry for entry in entries if "peak_rss_mb" in entry][-1]["peak_rss_mb"]
    worker_peaks = [float(mb) for mb in re.findall(r"stopped \(peak memory ([0-9.]+) MB\)", log)]
    figures = {
        "interactions": len(acks), "members": members, "training_while_measured": 3,
        "ack_p50_ms": round(percentile(acks, 0.5), 1), "ack_p99_ms": round(percentile(acks, 0.99), 1),
        "ack_max_ms": round(max(acks), 1), "loop_lag_p50_ms": lag["lag_p50_ms"],
        "loop_lag_p99_ms": lag["lag_p99_ms"], "loop_lag_max_ms": lag["lag_max_ms"],
        "bot_peak_rss_mb": bot_peak, "worker_peak_rss_mb": max(worker_peaks) if worker_peaks else None,
        "targets": TARGETS,
    }
    print(f"{figures['interactions']} interactions from {members} members while 3 members train: ack p50 "
          f"{figures['ack_p50_ms']} ms, p99 {figures['ack_p99_ms']} ms, max {figures['ack_max_ms']} ms; "
          f"event-loop lag p50 {figures['loop_lag_p50_ms']} ms, p99 {figures['loop_lag_p99_ms']} ms, "
          f"max {figures['loop_lag_max_ms']} ms")
    print(f"peak memory: bot {figures['bot_peak_rss_mb']} MB, worker {figures['worker_peak_rss_mb']} MB")
    for key, target in TARGETS.items():
        print(f"target {key} < {target:g}: {'met' if figures[key] < target else 'MISSED'} ({figures[key]})")
    write_figures(args.json, figures)


if __name__ == "__main__":
    main()
