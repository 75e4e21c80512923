"""A missing model is the owner's problem, not the member's: through the real bot and worker, with
the base model missing at first. The member is told in plain words and their training waits; the
owner gets one DM per incident, an error line in the log, the problem in doctor and in the admin
settings; once the model is there, the training starts by itself."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.cli import main
from engine.errors import ModelUnavailable
from tests.bot_harness import agree_to_consent, running_bot

# The real bot, worker processes, the cluster, the full-size model or the benchmarks: skipped by the
# edit loop's quick lane (`pytest -m "not slow"`), run by CI.
pytestmark = pytest.mark.slow

SETTINGS = {"DEVICE": "cpu", "TRAIN_RESOLUTION": 64, "TRAIN_STEPS_PER_PHOTO": 10, "PORTRAIT_SIZE": 64,
            "PORTRAIT_CANDIDATES": 2, "ATTACHMENT_HOSTS": "http://127.0.0.1", "JOB_RETRY_SECONDS": 0,
            "JOB_LEASE_SECONDS": 6, "TRAINING_PREVIEW_STYLE": "anime"}


def test_a_missing_base_model_makes_jobs_wait_and_tells_the_owner_once(tiny_model, tmp_path, capsys, monkeypatch):
    base = tmp_path / "models" / "base"  # not there yet: the owner has not copied it over
    with running_bot(tmp_path / "run", {**SETTINGS, "BASE_MODEL": base}) as d:
        fake, owner, member = d.fake, d.alice, d.bob  # the fake's application owner is alice
        prompt = fake.response(fake.command(member, d.general, d.guild, "enroll",
                                            attachments=d.upload("obama/obama1.jpg", "obama/obama2.jpg",
                                                                 "obama/obama3.jpg")))
        agree_to_consent(fake, member, prompt)
        fake.wait_for(lambda: "waiting:" in prompt.text(), 90, "the card to say the training waits")
        card = prompt.text()
        assert "3 accepted" in card and ModelUnavailable.MEMBER_TEXT in card
        for word in ("FACECHAIN", "Error", "Hugging Face", str(base)):  # plain words for members
            assert word not in card
        train = d.rows("select id, state, attempts from jobs where kind = 'train'")[0]
        assert train[1] in ("queued", "running")

        dms = fake.wait_for(lambda: fake.channel_messages(fake.dm_channel(owner)), 30, "the owner's DM")
        assert "FACECHAIN_BASE_MODEL" in dms[0].content and str(base) in dms[0].content
        # The worker tries again meanwhile (every second here): the same incident, still one DM.
        fake.wait_for(lambda: d.rows("select max(count) from setup_problems where resolved_at is null")[0][0] > 2,
                      30, "the worker's retries")
        assert len(fake.channel_messages(fake.dm_channel(owner))) == 1
        assert d.rows("select count(*) from setup_problems where resolved_at is null") == [(1,)]
        assert d.rows("select state from jobs where id = ?", train[0])[0][0] in ("queued", "running")
        assert '"level": "error"' in d.bot.log() and "FACECHAIN_BASE_MODEL" in d.bot.log()

        settings_card = fake.response(fake.command(owner, d.general, d.guild, "settings", group="facechain-admin"))
        fake.wait_for(lambda: settings_card.embeds, 10, "the settings card")
        assert "Setup problem" in settings_card.text() and "FACECHAIN_BASE_MODEL" in settings_card.text()

        monkeypatch.setenv("FACECHAIN_DATA_DIR", str(d.data_dir))
        monkeypatch.setenv("FACECHAIN_BASE_MODEL", str(base))
        assert main(["doctor", "--json"]) == 1
        worker = {c["name"]: c for c in json.loads(capsys.readouterr().out)}["worker"]
        assert worker["status"] == "fail" and "FACECHAIN_BASE_MODEL" in worker["detail"]

        shutil.copytree(tiny_model, base)  # the owner fixes it: nothing else to do
        fake.wait_for(lambda: "Ready (version 1)" in prompt.text(), 120, "the training to start by itself and end")
        assert d.rows("select state, attempts from jobs where id = ?", train[0]) == [("done", 1)]
        assert d.rows("select count(*) from setup_problems where resolved_at is null") == [(0,)]
        ping = [m for m in fake.channel_messages(d.general) if "face model is ready" in m.content]
        assert ping and f"<@{member}>" in ping[0].content
        # The two preview portraits came first (queued before the training), marked as previews.
        previews = [m for m in fake.channel_messages(d.general) if "Preview: your face model is still training"
                    in m.content]
        assert len(previews) == 1 and len(previews[0].files) == 2 and f"<@{member}>" in previews[0].content
        assert int(previews[0].id) < int(ping[0].id)
        assert {c.split(":")[1] for c in previews[0].custom_ids()} <= {"delete", "share", "report"}

        # Fast mode with the fast-mode LoRA out of reach: a new incident (one more DM), the request waits.
        asked = fake.command(member, d.general, d.guild, "portrait", {"style": "anime", "count": 1, "fast": True})
        message = fake.response(asked)
        fake.wait_for(lambda: "waiting:" in message.text(), 60, "the fast request to wait")
        assert d.rows("select json_extract(params, '$.fast') from jobs where kind = 'generate'") == [(1,)]
        dms = fake.wait_for(lambda: fake.channel_messages(fake.dm_channel(owner))[1:], 30, "a DM for the new incident")
        assert "FACECHAIN_FAST_LORA" in dms[0].content and len(fake.channel_messages(fake.dm_channel(owner))) == 2
