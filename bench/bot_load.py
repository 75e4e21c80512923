"""The bot under load: acknowledgement latency of 300 interactions from 50 members, the bot's
event-loop lag and the peak memory of the bot and its worker, while the worker trains three
members on the same machine (tiny model, CPU). The scenario of tests/test_bot_soak.py.

Then a launch night: 5,000 members, 2,000 queued requests of which 200 are watched by members
waiting on their progress message (delivery refreshes each every 2 s), while the worker trains; the
200 requests arrive at 20 a second, then members ask /facechain status twice a second for a minute.
It reports the ack p99, the event-loop lag p99, the bot's store thread busy share, and the store
time of one refresh round for 1,000 watched jobs (one `positions` call) on that database.

    python bench/bot_load.py [--quick] [--interactions 300] [--json FILE]
"""

from __future__ import annotations

import json
import random
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

from engine.benchmarks.common import bench_arguments, best_seconds, percentile, write_figures  # noqa: E402
from engine.config import load_settings  # noqa: E402
from engine.jobs.queue import SqliteJobQueue  # noqa: E402
from engine.models.random_models import make_tiny_model  # noqa: E402
from engine.store import Store  # noqa: E402
from engine.store.store import utc_now  # noqa: E402
from tests.bot_harness import SOAK_SETTINGS, running_bot, soak  # noqa: E402

TARGETS = {"ack_p99_ms": 100.0, "loop_lag_p99_ms": 50.0}
BACKLOG_TARGETS = {"ack_p99_ms": 100.0, "loop_lag_p99_ms": 50.0, "refresh_1000_watched_ms": 500.0}


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
    figures["backlog"] = launch_night(quick=args.quick)
    write_figures(args.json, figures)


def launch_night(quick: bool) -> dict:
    """Members, a queue backlog and watched requests at a community's size; what the bot's store does."""
    members, queued, watched = (1000, 400, 50) if quick else (5000, 2000, 200)
    chooser = random.Random(5)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = make_tiny_model(root / "tiny-sd")
        with running_bot(root / "run", {**SOAK_SETTINGS, "BASE_MODEL": model}, more_members=members - 3) as d:
            watchers = d.crowd[:watched]
            seed_backlog(d.data_dir, d.crowd, watchers, queued - 2 * watched, d.guild, d.general)
            soak(d, interactions=0)  # three members enroll: the worker trains while the backlog is measured
            sent = []
            for member in watchers:  # the watched requests arrive at 20 a second
                sent.append(d.fake.command(member, d.general, d.guild, "portrait", {"style": "anime", "count": 1}))
                time.sleep(0.05)
            ends = time.monotonic() + (20 if quick else 60)
            while time.monotonic() < ends:  # members look at where they stand while delivery refreshes every 2 s
                sent.append(d.fake.command(chooser.choice(watchers), d.general, d.guild, "status"))
                time.sleep(0.5)
            for interaction in sent:
                d.fake.wait_acked(interaction, timeout=60)
            waiting = d.rows("select count(*) from jobs where state = 'queued'")[0][0]
            refresh_ms = refresh_round_ms(d.data_dir, 1000)
            acks = [i.ack_seconds * 1000 for i in d.fake.interactions.values()]
            d.bot.stop(signal.SIGTERM)
            entries = [json.loads(line) for line in d.bot.log().splitlines() if line.startswith("{")]
    lag = [entry for entry in entries if entry["message"] == "event loop lag"][-1]
    store = [entry for entry in entries if entry["message"] == "store thread busy"][-1]
    figures = {"members": members, "queued": waiting, "watched": watched, "trainings_while_measured": 3,
               "ack_p50_ms": round(percentile(acks, 0.5), 1), "ack_p99_ms": round(percentile(acks, 0.99), 1),
               "loop_lag_p99_ms": lag["lag_p99_ms"], "store_busy_share": store["busy_share"],
               "refresh_1000_watched_ms": refresh_ms, "targets": BACKLOG_TARGETS}
    print(f"launch night: {members} members, {waiting} queued, {watched} watched while 3 train: ack p99 "
          f"{figures['ack_p99_ms']} ms, event-loop lag p99 {figures['loop_lag_p99_ms']} ms, store thread busy "
          f"{100 * figures['store_busy_share']:.1f}% of the time; one refresh round of 1000 watched jobs "
          f"{refresh_ms} ms of store time")
    for key, target in BACKLOG_TARGETS.items():
        print(f"target {key} < {target:g}: {'met' if figures[key] < target else 'MISSED'} ({figures[key]})")
    return figures


def seed_backlog(data_dir: Path, members: list[str], watchers: list[str], others: int, guild: str,
                 channel: str) -> None:
    """Every member a row; `others` queued portrait requests of other members that no worker may take
    yet (they wait for their turn), and for each watcher a queued training their portrait waits for."""
    store = Store(data_dir)
    moment = utc_now()
    later = "9999-01-01T00:00:00+00:00"  # queued, but not for the worker to take during the measurement
    with store.transaction():
        store.db["users"].insert_all([{"id": member, "subject": "person", "trigger": "a person",
                                       "consent_at": moment, "created_at": moment} for member in members],
                                     ignore=True)
        requesters = members[len(watchers):]
        store.db["jobs"].insert_all([
            {"kind": "generate", "user_id": requesters[n % len(requesters)], "guild_id": guild, "channel_id": channel,
             "params": json.dumps({"style": "anime", "count": 1}), "state": "queued", "attempts": 0, "progress": 0.0,
             "progress_text": "queued", "cancel_requested": 0, "created_at": moment, "run_after": later}
            for n in range(others)] + [
            {"kind": "train", "user_id": member, "guild_id": guild, "channel_id": None, "params": "{}",
             "state": "queued", "attempts": 0, "progress": 0.0, "progress_text": "queued", "cancel_requested": 0,
             "created_at": moment, "run_after": later} for member in watchers])
    store.close()


def refresh_round_ms(data_dir: Path, watched: int) -> float:
    """Store time of one delivery refresh of `watched` queued jobs: one `positions` call, best of three."""
    store = Store(data_dir)
    queue = SqliteJobQueue(store, load_settings(_env_file=None, data_dir=data_dir))
    ids = [job_id for (job_id,) in store.db.execute(
        "select id from jobs where state = 'queued' order by id desc limit ?", [watched])]
    best = best_seconds(lambda: queue.positions(ids), rounds=3)
    store.close()
    return round(best * 1000, 1)


if __name__ == "__main__":
    main()
