"""Soak: 50 members, 300 interactions mixed over enroll, portrait, status, styles and gallery, while
the worker trains. Every interaction is answered in time, every job ends, nothing crashes, and
the database is intact."""

from __future__ import annotations

import itertools
import random
import sqlite3
import time

from tests.bot_harness import ACK_LIMIT, running_bot

INTERACTIONS = 300
PACE_SECONDS = 0.1


def test_fifty_members_and_three_hundred_interactions_while_training(tiny_model, tmp_path):
    settings = {"BASE_MODEL": tiny_model, "DEVICE": "cpu", "TRAIN_RESOLUTION": 64, "TRAIN_STEPS_PER_PHOTO": 30,
                "PORTRAIT_SIZE": 64, "PORTRAIT_CANDIDATES": 2, "ATTACHMENT_HOSTS": "http://127.0.0.1",
                "JOB_RETRY_SECONDS": 0}
    with running_bot(tmp_path, settings, more_members=47) as d:
        fake, members = d.fake, [d.alice, d.bob, d.carol, *d.crowd]
        random.seed(7)
        enrollers = members[:3]
        for member in enrollers:  # consent first, then photos: their trainings run during the soak
            prompt = fake.response(fake.command(member, d.general, d.guild, "enroll",
                                                attachments=d.upload("obama/obama1.jpg", "obama/obama2.jpg",
                                                                     "obama/obama3.jpg")))
            fake.click(member, prompt, prompt.custom_ids()[0])
        kinds = itertools.cycle(["status", "help", "styles", "gallery", "portrait", "status", "portrait"])
        sent = []
        for _ in range(INTERACTIONS):
            member, kind = random.choice(members), next(kinds)
            options = {"style": random.choice(["anime", "oil", "cyberpunk"]), "count": 1} if kind == "portrait" else {}
            sent.append(fake.command(member, d.general, d.guild, kind, options))
            time.sleep(PACE_SECONDS)
        for interaction in sent:
            fake.wait_acked(interaction, timeout=30)
        acks = sorted(i.ack_seconds for i in fake.interactions.values() if i.ack_seconds is not None)
        assert len(acks) == len(fake.interactions) and acks[-1] < ACK_LIMIT
        p50, p99 = acks[len(acks) // 2], acks[int(len(acks) * 0.99)]
        print(f"\nsoak: {len(acks)} interactions, ack p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
              f"max {acks[-1] * 1000:.0f} ms")

        unfinished = "select count(*) from jobs where state in ('queued', 'running') or delivered_at is null"
        fake.wait_for(lambda: d.rows(unfinished) == [(0,)], 600, "every job to finish and be delivered")
        states = dict(d.rows("select state, count(*) from jobs group by state"))
        assert set(states) <= {"done", "failed", "cancelled"} and states.get("done", 0) >= 3
        with sqlite3.connect(d.data_dir / "facechain.db") as db:
            assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        log = d.bot.log()
        assert "Traceback" not in log and '"level": "error"' not in log
