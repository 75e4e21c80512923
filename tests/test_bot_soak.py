"""Soak: 50 members, 300 interactions mixed over enroll, portrait, status, styles and gallery, while
the worker trains. Every interaction is answered in time, every job ends, nothing crashes, and
the database is intact. (`bench/bot_load.py` runs the same scenario and prints the figures.)"""

from __future__ import annotations

import json
import signal
import sqlite3

from tests.bot_harness import ACK_LIMIT, SOAK_SETTINGS, percentile, running_bot, soak


def test_fifty_members_and_three_hundred_interactions_while_training(tiny_model, tmp_path):
    with running_bot(tmp_path, {**SOAK_SETTINGS, "BASE_MODEL": tiny_model}, more_members=47) as d:
        fake = d.fake
        soak(d, interactions=300)
        acks = [i.ack_seconds for i in fake.interactions.values()]
        assert None not in acks and len(acks) > 300 and max(acks) < ACK_LIMIT
        print(f"\nsoak: {len(acks)} interactions, ack p50 {percentile(acks, 0.5) * 1000:.0f} ms, "
              f"p99 {percentile(acks, 0.99) * 1000:.0f} ms, max {max(acks) * 1000:.0f} ms")

        unfinished = "select count(*) from jobs where state in ('queued', 'running') or delivered_at is null"
        fake.wait_for(lambda: d.rows(unfinished) == [(0,)], 600, "every job to finish and be delivered")
        states = dict(d.rows("select state, count(*) from jobs group by state"))
        assert set(states) <= {"done", "failed", "cancelled"} and states.get("done", 0) >= 3
        with sqlite3.connect(d.data_dir / "facechain.db") as db:
            assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        assert d.bot.stop(signal.SIGTERM) == 0  # a clean stop reports the event loop's lag
        log = d.bot.log()
        assert "Traceback" not in log and '"level": "error"' not in log
        lag = [json.loads(line) for line in log.splitlines() if '"event loop lag"' in line][-1]
        assert lag["samples"] > 100 and lag["lag_max_ms"] < ACK_LIMIT * 1000
