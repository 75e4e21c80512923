"""Discord misbehaving: rate limits, outages and dropped gateway connections. The bot must keep
answering and deliver every result, and nothing may be lost or crash."""

from __future__ import annotations

import pytest

from tests.bot_harness import ACK_LIMIT, Deployment, add_finished_request, running_bot
from tests.fake_discord import Fault, Message

# The real bot, worker processes, the cluster, the full-size model or the benchmarks: skipped by the
# edit loop's quick lane (`pytest -m "not slow"`), run by CI.
pytestmark = pytest.mark.slow

RED = (220, 30, 30)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with running_bot(tmp_path_factory.mktemp("faults"), {"BOT_RUNS_WORKER": "false"}) as deployment:
        yield deployment


def posted_result(d: Deployment, job: int, timeout: float = 30) -> Message:
    return d.fake.wait_for(lambda: next((m for m in d.fake.channel_messages(d.general)
                                         if any(c.endswith(f":{job}") for c in m.custom_ids())), None), timeout,
                           f"the result of job {job}")


def delivered_at(d: Deployment, job: int):
    return d.rows("select delivered_at from jobs where id = ?", job)[0][0]


def test_a_rate_limited_channel_post_is_retried_after_the_wait(deployment):
    d, fake = deployment, deployment.fake
    limit = Fault("POST", f"/channels/{d.general}/messages", 429, times=2, retry_after=0.5)
    fake.faults.append(limit)
    job = add_finished_request(d, d.alice, "anime", [RED])
    message = posted_result(d, job)
    assert len(limit.hits) == 2 and limit.hits[1] - limit.hits[0] >= 0.4  # it waited as told
    assert message.files and fake.wait_for(lambda: delivered_at(d, job), 10, "marked delivered")


def test_an_outage_delays_delivery_but_loses_nothing(deployment):
    d, fake = deployment, deployment.fake
    # A 502 discord.py retries itself (after 1 s); then two 503s it gives up on at once (as after its fifth
    # 502, 25 s later): delivery's own retry takes over, 2 s then 4 s later.
    blip = Fault("POST", f"/channels/{d.general}/messages", 502, times=1)
    outage = Fault("POST", f"/channels/{d.general}/messages", 503, times=2)
    fake.faults += [blip, outage]
    job = add_finished_request(d, d.bob, "oil", [RED, RED])
    fake.wait_for(lambda: blip.times == outage.times == 0, 60, "the outage to be hit")
    assert "delivering job" in fake.wait_for(lambda: "retrying in" in d.bot.log() and d.bot.log(), 10, "the retry")
    message = posted_result(d, job, timeout=60)
    assert len(message.files) == 2 and fake.wait_for(lambda: delivered_at(d, job), 10, "marked delivered")
    answer = fake.response(fake.command(d.bob, d.general, d.guild, "help"))  # and it still answers
    assert "FaceChain" in answer.text()


def test_a_dropped_gateway_resumes_and_interactions_keep_working(deployment):
    d, fake = deployment, deployment.fake
    before = fake.gateway_connections
    fake.drop_gateway()
    fake.wait_for(lambda: fake.gateway_connections > before and fake._sockets and fake.resumes, 30, "a resume")
    answer = fake.command(d.carol, d.general, d.guild, "help")
    assert "FaceChain" in fake.response(answer).text() and answer.ack_seconds < ACK_LIMIT


def test_a_rate_limited_answer_still_reaches_the_member(deployment):
    d, fake = deployment, deployment.fake
    fake.faults.append(Fault("PATCH", "/webhooks/", 429, times=1, retry_after=0.3))
    answer = fake.response(fake.command(d.alice, d.general, d.guild, "status"))
    fake.wait_for(lambda: "Photos enrolled" in answer.text(), 15, "the status card")


def test_nothing_crashed(deployment):
    log = deployment.bot.log()
    assert "Traceback" not in log and '"level": "error"' not in log
