"""Soak: 50 members, 130 interactions mixed over enroll, portrait, status, styles and gallery, while
the worker trains and is killed, and the bot itself is killed and restarted. Every interaction is
answered in time, every job ends, nothing crashes, and the database is intact. (`bench/bot_load.py`
runs the soak with 300 interactions and prints the figures.)"""

from __future__ import annotations

import json
import os
import signal
import sqlite3

import psutil
import pytest

from engine.benchmarks.common import percentile
from tests.bot_harness import ACK_LIMIT, SOAK_SETTINGS, running_bot, soak

# The real bot, worker processes, the cluster, the full-size model or the benchmarks: skipped by the
# edit loop's quick lane (`pytest -m "not slow"`), run by CI.
pytestmark = pytest.mark.slow


def worker_pids(d) -> list[int]:
    """The bot's worker processes (its children running `facechain worker`)."""
    pids = []
    for child in psutil.Process(d.bot.process.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:  # exited meanwhile
            pass
    return pids


def test_a_killed_worker_and_a_bot_restart_under_load_lose_nothing(tiny_model, tmp_path):
    """Fifty members and 130 interactions while the worker trains, with kill -9 of the worker
    mid-training and a bot SIGKILL + restart mid-load: every interaction is answered in time, every
    job still ends (done, or failed with its reason), every result reaches its member, the database is
    intact, and a clean stop reports the event loop's lag."""
    settings = {**SOAK_SETTINGS, "BASE_MODEL": tiny_model, "JOB_LEASE_SECONDS": 4}
    with running_bot(tmp_path, settings, more_members=47) as d:
        fake = d.fake
        soak(d, interactions=50)
        fake.wait_for(lambda: d.rows("select count(*) from jobs where kind = 'train' and state = 'running'")
                      == [(1,)], 120, "a training to run")
        [first] = fake.wait_for(lambda: worker_pids(d), 30, "the worker process")
        os.kill(first, signal.SIGKILL)
        fake.wait_for(lambda: worker_pids(d) and worker_pids(d) != [first], 30, "the bot to restart its worker")
        soak(d, interactions=40, enrollers=0)

        d.bot.stop(signal.SIGKILL)  # the bot dies while jobs are queued and running; its worker follows it
        d.bot.start(fake)
        soak(d, interactions=40, enrollers=0)

        unfinished = "select count(*) from jobs where state in ('queued', 'running') or delivered_at is null"
        fake.wait_for(lambda: d.rows(unfinished) == [(0,)], 600, "every job to finish and be delivered")
        states = dict(d.rows("select state, count(*) from jobs group by state"))
        assert set(states) <= {"done", "failed", "cancelled"}
        assert d.rows("select count(*) from jobs where kind = 'train' and state = 'done'") == [(3,)]
        assert d.rows("select count(*) from jobs where state = 'failed' and coalesce(error, '') = ''") == [(0,)]
        assert d.rows("select count(*) from face_models where status = 'ready'") == [(3,)]
        assert d.rows("select max(attempts) from jobs where kind = 'train'")[0][0] >= 2  # the killed one ran again
        with sqlite3.connect(d.data_dir / "facechain.db") as db:
            assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        acks = [i.ack_seconds for i in fake.interactions.values()]
        assert None not in acks and len(acks) > 130 and max(acks) < ACK_LIMIT
        print(f"\nsoak: {len(acks)} interactions, ack p50 {percentile(acks, 0.5) * 1000:.0f} ms, "
              f"p99 {percentile(acks, 0.99) * 1000:.0f} ms, max {max(acks) * 1000:.0f} ms")
        assert d.bot.stop(signal.SIGTERM) == 0  # a clean stop reports the event loop's lag
        log = d.bot.log()
        assert "Traceback" not in log and '"level": "error"' not in log
        assert "exited with -9; restarting" in log
        lag = [json.loads(line) for line in log.splitlines() if '"event loop lag"' in line][-1]
        assert lag["samples"] > 50 and lag["lag_max_ms"] < ACK_LIMIT * 1000
