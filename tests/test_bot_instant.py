"""Instant portraits as members meet them: the real bot and worker (tiny model, the instant mode's random models in
their real formats) against the fake Discord."""

from __future__ import annotations

import pytest

from tests.bot_harness import agree_to_consent, running_bot
from tests.test_bot import SETTINGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployment(tiny_model, instant_models, tmp_path_factory):
    instant = instant_models
    settings = {**SETTINGS, "BASE_MODEL": tiny_model, "INSTANT": "true", "TRAIN_STEPS_PER_PHOTO": 100,
                "TRAINING_PREVIEW_STYLE": "anime",
                **{name.removeprefix("FACECHAIN_"): value for name, value in instant.items()}}
    with running_bot(tmp_path_factory.mktemp("instant-deployment"), settings) as deployment:
        yield deployment


def test_an_instant_likeness_right_after_enrolling_and_instant_portraits_before_the_face_model(deployment):
    d, fake = deployment, deployment.fake
    command = fake.command(d.alice, d.general, d.guild, "enroll",
                           attachments=d.upload("obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"))
    agree_to_consent(fake, d.alice, fake.response(command))
    preview = fake.wait_for(lambda: [m for m in fake.channel_messages(d.general) + [fake.response(command)]
                                     if "Instant likeness" in m.text() and m.files], 120, "the instant preview")
    assert "face model is still training" in preview[0].text()
    assert d.rows("select state from jobs where kind = 'instant'") == [("done",)]
    assert d.rows("select state from jobs where kind = 'train'") != [("done",)]  # it trains meanwhile

    portrait = fake.command(d.alice, d.general, d.guild, "portrait", {"style": "cyberpunk", "count": 1})
    message = d.result_of(portrait, timeout=180)
    assert "Instant likeness" in message.text() and message.files, message.text()
    [(params,)] = d.rows("select params from jobs where kind = 'generate'")
    assert '"instant": true' in params and '"wait_for_training": false' in params
    fake.wait_for(lambda: d.rows("select state from jobs where kind = 'train'") == [("done",)], 180, "the training")
    asked = d.result_of(fake.command(d.alice, d.general, d.guild, "portrait",
                                     {"style": "anime", "count": 1, "quality": "instant"}), timeout=180)
    assert "Instant likeness, drawn from your photos without your face model" in asked.text()

    early = fake.wait_acked(fake.command(d.bob, d.general, d.guild, "portrait",
                                         {"style": "cyberpunk", "quality": "instant"}))
    answer = fake.response(early).text()  # not enrolled: that comes first, in plain words
    assert "/facechain enroll" in answer and "Traceback" not in answer and "FACECHAIN" not in answer
