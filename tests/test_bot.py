"""End to end: the real bot (a subprocess running discord.py) and its real worker on the tiny model,
against the fake Discord in tests/fake_discord.py. The tests share one deployment and run in
order, like a member's day: enroll, portraits and buttons, sharing, expiry and restarts, forget.
Each still passes alone: what it needs (a trained member, a portraits message, a gallery channel)
it makes itself through `trained()`, `portraits_message()` and `gallery_channel_set()`."""

from __future__ import annotations

import io
import signal
import time

import pytest
from PIL import Image

from tests.bot_harness import ACK_LIMIT, TOKEN, Deployment, agree_to_consent, running_bot
from tests.conftest import files_under
from tests.fake_discord import Message

# The real bot, worker processes, the cluster, the full-size model or the benchmarks: skipped by the
# edit loop's quick lane (`pytest -m "not slow"`), run by CI.
pytestmark = pytest.mark.slow

# The deployment's settings besides the model (tests/test_cluster.py runs the story with them too).
SETTINGS = {"DEVICE": "cpu", "TRAIN_RESOLUTION": 64, "TRAIN_STEPS_PER_PHOTO": 50, "PORTRAIT_SIZE": 64,
            "PORTRAIT_CANDIDATES": 4, "ATTACHMENT_HOSTS": "cdn.discordapp.com,http://127.0.0.1", "JOB_LEASE_SECONDS": 6,
            "JOB_RETRY_SECONDS": 0, "MAX_QUEUED_PORTRAITS_PER_USER": 5}


@pytest.fixture(scope="module")
def deployment(tiny_model, tiny_controlnet, tiny_pose_detector, tmp_path_factory):
    from engine.models.random_models import make_random_rrdb

    upscaler = make_random_rrdb(tmp_path_factory.mktemp("upscaler") / "RealESRGAN_x4plus.pth", passthrough=True)
    models = {"BASE_MODEL": tiny_model, "POSE_CONTROLNET": tiny_controlnet, "POSE_DETECTOR": tiny_pose_detector,
              "UPSCALER": upscaler}
    with running_bot(tmp_path_factory.mktemp("deployment"), {**SETTINGS, **models}) as deployment:
        yield deployment


def test_enroll_asks_consent_checks_each_photo_and_trains(deployment):
    d, fake = deployment, deployment.fake
    photos = d.upload("obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg", "group/two_people.jpg",
                      "biden/biden1.jpg")
    command = fake.command(d.alice, d.general, d.guild, "enroll", attachments=photos)
    consent = fake.response(command)
    assert consent.ephemeral and "/facechain forget" in consent.text() and len(consent.custom_ids()) == 3
    assert d.rows("select count(*) from users") == [(0,)]  # nothing stored before consent
    menu, agree, _ = consent.custom_ids()
    [select] = [c for row in consent.components for c in row["components"] if c["custom_id"] == menu]
    assert [o["value"] for o in select["options"]] == ["man", "woman", "boy", "girl", "person"]
    assert not any(o.get("default") for o in select["options"])  # nobody is described by a guess
    [button] = [c for row in consent.components for c in row["components"] if c["custom_id"] == agree]
    assert button["disabled"]  # "I agree" waits for the member's own words

    stranger = fake.wait_acked(fake.click(d.bob, consent, menu, values=["man"]))
    assert "belong to" in fake.response(stranger).text() and fake.response(stranger).ephemeral
    early = fake.wait_acked(fake.click(d.alice, consent, agree))  # a client that ignores "disabled"
    assert "First choose how portraits should describe you" in fake.response(early).text()
    assert d.rows("select count(*) from users") == [(0,)]

    fake.wait_acked(fake.click(d.alice, consent, menu, values=["woman"]))
    [button] = [c for row in consent.components for c in row["components"] if c["custom_id"] == agree]
    assert not button.get("disabled")
    fake.click(d.alice, consent, agree)  # "I agree"
    card = fake.wait_for(lambda: "accepted" in consent.text() and consent, 90, "the enroll card")
    text = consent.text()
    assert "3 accepted" in text and "2 rejected" in text
    assert "two_people.jpg" in text and "crop to just you" in text
    assert "biden1.jpg" in text and "someone else" in text
    assert "enrolled.jpg" in card.files  # a contact sheet of the accepted crops, only in this ephemeral card
    sheet = Image.open(io.BytesIO(card.files["enrolled.jpg"])).convert("L")
    for tile in range(3):  # each crop as it trains: the head on white, as FaceChain prepares them
        assert sheet.getpixel((tile * 128 + 4, 4)) > 240 and sheet.getpixel((tile * 128 + 64, 64)) < 230
    assert d.rows("select consent_at is not null from users where id = ?", d.alice) == [(1,)]
    assert d.rows("select subject, trigger from users where id = ?", d.alice) == [("woman", "a beautiful woman")]

    # Training runs in the worker while the bot keeps answering at once.
    during_training = 0
    while d.rows("select count(*) from jobs where kind = 'train' and state in ('queued', 'running')") != [(0,)]:
        training = d.rows("select count(*) from jobs where kind = 'train' and state = 'running'") == [(1,)]
        status = fake.wait_acked(fake.command(d.alice, d.general, d.guild, "status"))
        assert status.ack_seconds < ACK_LIMIT
        during_training += training
        time.sleep(0.2)
    assert during_training >= 1  # at least one answer came while the worker was training
    fake.wait_for(lambda: "Ready (version 1)" in consent.text(), 30, "the card to show the trained model")
    assert "⏳" not in consent.text() and "queued" not in consent.text()  # the outcome replaced every progress line
    ping = fake.wait_for(lambda: [m for m in fake.channel_messages(d.general) if "face model is ready" in m.content],
                         30, "the ready ping")
    assert f"<@{d.alice}>" in ping[0].content
    selfies = files_under(d.data_dir / "users" / d.alice / "selfies")
    assert len(selfies) == 3 and all(p.stat().st_mode & 0o077 == 0 for p in selfies)


def test_portrait_shows_progress_then_ranked_results_with_buttons(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    choices = fake.wait_acked(fake.command(d.alice, d.general, d.guild, "portrait", {"style": "cyb"}, focused="style"))
    assert [c["value"] for c in choices.choices] == ["cyberpunk"]

    command = fake.command(d.alice, d.general, d.guild, "portrait",
                           {"style": "cyberpunk", "count": 2, "prompt": "holding a  guitar"})
    message = d.result_of(command)
    assert "in **Cyberpunk** “holding a guitar”" in message.content  # the member's own words, shown back
    assert command.ack_seconds < ACK_LIMIT and command.callback_type == 5  # deferred at once
    assert sorted(message.files) == ["portrait-1.png", "portrait-2.png"]
    assert "**#1**" in message.content and "**#2**" in message.content and f"<@{d.alice}>" in message.content
    edits = [c for c in fake.calls if c.method == "PATCH" and command.token in c.path]
    assert any("⏳" in (c.body or {}).get("content", "") for c in edits)  # live progress before the result
    ids = message.custom_ids()
    assert {i.split(":")[1] for i in ids} == {"reroll", "delete", "more", "sharper", "x4", "share", "report"}


def test_buttons_belong_to_their_owner(deployment):
    d, fake = deployment, deployment.fake
    message = portraits_message(d)
    for custom_id in message.custom_ids():
        if custom_id.startswith("fc:report:"):
            continue  # anyone may report a picture (test_moderators_report_remove_bar_and_audit_...)
        values = None if custom_id.split(":")[1] in ("reroll", "delete") else ["1"]
        pressed = fake.wait_acked(fake.click(d.bob, message, custom_id, values))
        answer = fake.response(pressed)
        assert answer.ephemeral and "belong to" in answer.text(), custom_id
    assert message.files and not message.deleted


def test_reroll_and_more_like_queue_new_portraits(deployment):
    d, fake = deployment, deployment.fake
    message = portraits_message(d)
    reroll = fake.click(d.alice, message, _custom_id(message, "reroll"))
    rerolled = d.result_of(reroll)
    assert len(rerolled.files) == 2 and rerolled.id != message.id
    portrait_ids = d.rows("select id from portraits order by id")
    more = fake.click(d.alice, message, _custom_id(message, "more"), [str(portrait_ids[0][0])])
    assert len(d.result_of(more).files) == 2
    variation = d.rows("select params from jobs where kind = 'generate' order by id desc limit 1")[0][0]
    assert '"variation_of"' in variation


def test_a_pose_draws_you_in_it_and_reroll_keeps_it(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    choices = fake.wait_acked(fake.command(d.alice, d.general, d.guild, "portrait",
                                           {"style": "cyberpunk", "pose": "wav"}, focused="pose"))
    assert [c["value"] for c in choices.choices] == ["waving"] and "(upper body)" in choices.choices[0]["name"]
    message = d.result_of(fake.command(d.alice, d.general, d.guild, "portrait",
                                       {"style": "cyberpunk", "count": 1, "pose": "waving"}))
    assert "in **Cyberpunk**, posed **Waving**" in message.content
    assert Image.open(io.BytesIO(message.files["portrait-1.png"])).size == (64, 96)  # 2 wide by 3 high
    rerolled = d.result_of(fake.click(d.alice, message, _custom_id(message, "reroll")))
    assert "posed **Waving**" in rerolled.content and rerolled.id != message.id
    unknown = fake.response(fake.command(d.alice, d.general, d.guild, "portrait",
                                         {"style": "cyberpunk", "pose": "moonwalk"}))
    assert "Unknown pose 'moonwalk'" in unknown.text() and "waving" in unknown.text()

    # The pose of someone in a photo: read by the worker, the photo deleted, the pose kept for re-rolls.
    posed = d.result_of(fake.command(d.alice, d.general, d.guild, "portrait", {"style": "cyberpunk", "count": 1},
                                     attachments={"pose_photo": d.upload("biden/biden1.jpg")["photo1"]}))
    assert "posed **your photo**" in posed.content
    assert not list((d.data_dir / "tmp").glob(f"enroll-{d.alice}-*/photo.upload"))  # only the pose is kept
    again = d.result_of(fake.click(d.alice, posed, _custom_id(posed, "reroll")))
    assert "posed **your photo**" in again.content
    both = fake.response(fake.command(d.alice, d.general, d.guild, "portrait", {"style": "cyberpunk", "pose": "waving"},
                                      attachments={"pose_photo": d.upload("biden/biden1.jpg")["photo1"]}))
    assert "Choose a preset pose or a pose photo, not both" in both.text()


def test_sharper_x2_comes_as_a_new_message_at_twice_the_size(deployment):
    d, fake = deployment, deployment.fake
    message = portraits_message(d)
    job_id = int(_custom_id(message, "delete").split(":")[2])
    first, first_path = d.rows("select id, path from portraits where job_id = ? order by id", job_id)[0]
    sharper = d.result_of(fake.click(d.alice, message, _custom_id(message, "sharper"), [str(first)]), timeout=90)
    assert sharper.id != message.id and list(sharper.files) == ["portrait-1.png"]
    upscaled = d.rows("select path from portraits where job_id = (select max(id) from jobs where kind = 'upscale')")
    width, height = Image.open(d.data_dir / first_path).size  # 64 px wide (96 high when drawn in a pose)
    assert Image.open(d.data_dir / upscaled[0][0]).size == (2 * width, 2 * height)  # twice the size
    assert {c.split(":")[1] for c in sharper.custom_ids()} >= {"delete", "share"}
    assert message.files and not message.deleted  # the original stays


def test_upscale_x4_comes_as_a_new_message_at_four_times_the_size(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    message = d.result_of(fake.command(d.alice, d.general, d.guild, "portrait", {"style": "cyberpunk", "count": 1}))
    job_id = int(_custom_id(message, "delete").split(":")[2])
    first, first_path = d.rows("select id, path from portraits where job_id = ? order by id", job_id)[0]
    larger = d.result_of(fake.click(d.alice, message, _custom_id(message, "x4"), [str(first)]), timeout=90)
    assert larger.id != message.id and list(larger.files) == ["portrait-1.png"]
    upscaled = d.rows("select path from portraits where job_id = (select max(id) from jobs where kind = 'upscale')")
    width, height = Image.open(d.data_dir / first_path).size
    assert Image.open(d.data_dir / upscaled[0][0]).size == (4 * width, 4 * height)
    offered = {c.split(":")[1] for c in larger.custom_ids()}
    assert {"delete", "share"} <= offered and not {"x4", "sharper"} & offered  # not again, nor redrawn at 4x


def test_share_needs_a_gallery_channel_then_posts_once(deployment):
    d, fake = deployment, deployment.fake
    message = portraits_message(d)
    first = d.rows("select id from portraits where user_id = ? order by id desc", d.alice)[0][0]
    share = _custom_id(message, "share")
    answer = fake.response(fake.click(d.alice, message, share, [str(first)]))
    assert "no gallery channel" in answer.text()

    refused = fake.response(fake.command(d.bob, d.general, d.guild, "settings",
                                         {"gallery_channel": {"channel": "gallery"}}, group="facechain-admin"))
    assert "Only this server's admins" in refused.text()
    saved = fake.response(fake.command(d.alice, d.general, d.guild, "settings",
                                       {"gallery_channel": {"channel": "gallery"}}, group="facechain-admin"))
    assert f"<#{d.gallery}>" in saved.text()

    answer = fake.response(fake.click(d.alice, message, share, [str(first)]))
    assert f"Shared to <#{d.gallery}>" in answer.text()
    posts = fake.channel_messages(d.gallery)
    assert len(posts) == 1 and "portrait.png" in posts[0].files and f"<@{d.alice}>" in posts[0].text()
    again = fake.response(fake.click(d.alice, message, share, [str(first)]))
    assert "already" in again.text() and len(fake.channel_messages(d.gallery)) == 1
    assert d.rows("select count(*) from gallery_entries where guild_id = ?", d.guild) == [(1,)]


def test_delete_removes_the_portraits_and_their_files(deployment):
    d, fake = deployment, deployment.fake
    message = portraits_message(d)
    job_id = int(_custom_id(message, "delete").split(":")[2])
    paths = [d.data_dir / p for (p,) in d.rows("select path from portraits where job_id = ?", job_id)]
    assert paths and all(p.exists() for p in paths)
    fake.wait_acked(fake.click(d.alice, message, _custom_id(message, "delete")))
    deleted = f"Deleted {len(paths)} portrait{'s' if len(paths) != 1 else ''}."
    fake.wait_for(lambda: deleted in message.content, 10, "the deleted notice")
    assert not message.files and not message.components
    assert not any(p.exists() for p in paths)
    assert d.rows("select count(*) from portraits where job_id = ?", job_id) == [(0,)]
    assert fake.channel_messages(d.gallery) == []  # the shared one's gallery post went with it
    assert d.rows("select count(*) from gallery_entries") == [(0,)]


def test_expired_token_posts_in_the_channel_and_a_gone_channel_sends_a_dm(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    command = fake.command(d.alice, d.general, d.guild, "portrait", {"style": "anime", "count": 1})
    fake.response(command)
    fake.expired_tokens.add(command.token)
    posted = fake.wait_for(lambda: [m for m in fake.channel_messages(d.general) if m.files and m.interaction_token
                                    is None and "Anime" in m.content], 120, "the result posted in the channel")
    assert f"<@{d.alice}>" in posted[0].content and posted[0].custom_ids()

    command = fake.command(d.alice, d.general, d.guild, "portrait", {"style": "oil", "count": 1})
    fake.expired_tokens.add(command.token)  # even before the "queued" edit: the result still arrives
    fake.gone_channels.add(d.general)
    try:
        dm = fake.wait_for(lambda: [m for m in fake.channel_messages(fake.dm_channel(d.alice)) if m.files], 120,
                           "the result by DM")
        assert "Oil Painting" in dm[0].content
    finally:
        fake.gone_channels.discard(d.general)


def test_restart_mid_job_still_delivers_the_result(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    command = fake.command(d.alice, d.general, d.guild, "portrait", {"style": "slow", "count": 3})
    fake.response(command)  # queued (the bot has written the job)
    job_id = d.rows("select max(id) from jobs")[0][0]
    fake.wait_for(lambda: d.job_state(job_id) == "running", 60, "the job to start")
    d.bot.stop(signal.SIGKILL)  # the bot dies mid-job; its worker notices and stops after it
    d.bot.start(fake)
    posted = fake.wait_for(lambda: [m for m in fake.channel_messages(d.general) if len(m.files) == 3], 180,
                           "the result after the restart")
    assert f"<@{d.alice}>" in posted[0].content and "Slow" in posted[0].content
    assert d.job_state(job_id) == "done"
    fake.wait_for(lambda: d.rows("select delivered_at is not null from jobs where id = ?", job_id) == [(1,)], 10,
                  "the job to be marked delivered")  # right after the post


def test_progress_edits_are_throttled_and_a_queued_job_can_be_cancelled(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    slow = fake.command(d.alice, d.general, d.guild, "portrait", {"style": "slow", "count": 1})
    waiting = fake.command(d.alice, d.general, d.guild, "portrait", {"style": "anime", "count": 1})
    waiting_message = fake.response(waiting)
    fake.wait_for(lambda: "queued #" in waiting_message.content, 30, "the queue position")
    status = fake.response(fake.command(d.alice, d.general, d.guild, "status"))
    fake.wait_for(lambda: status.embeds, 10, "the status card")
    assert "Face model: ready (version 1" in status.text() and "queued #" in status.text()
    cancel = [c for c in status.custom_ids() if c.startswith("fc:cancel:")]
    assert len(cancel) == 2
    answer = fake.response(fake.click(d.bob, status, cancel[-1]))
    assert "belong to" in answer.text()
    answer = fake.response(fake.click(d.alice, status, cancel[-1]))
    assert "Cancelled" in answer.text()
    fake.wait_for(lambda: "Cancelled" in waiting_message.content, 15, "the cancelled notice")

    result = d.result_of(slow, timeout=180)
    progress = [c.at for c in fake.calls if c.method == "PATCH" and slow.token in c.path
                and (c.body or {}).get("content", "").startswith("⏳")]
    assert len(progress) >= 3 and result.files
    assert min(b - a for a, b in zip(progress, progress[1:])) >= 1.9  # at most one edit per 2 s


def test_bad_requests_get_a_plain_answer(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    unknown = fake.response(fake.command(d.alice, d.general, d.guild, "portrait", {"style": "cyberpnk"}))
    assert "Unknown style 'cyberpnk'" in unknown.text() and "cyberpunk" in unknown.text()
    too_many = fake.response(fake.command(d.alice, d.general, d.guild, "portrait", {"style": "anime", "count": 9}))
    assert "Ask for 1 to 4 portraits" in too_many.text()

    fake.response(fake.command(d.alice, d.general, d.guild, "settings", {"allowed_styles": "anime, oil"},
                               group="facechain-admin"))
    choices = fake.wait_acked(fake.command(d.alice, d.general, d.guild, "portrait", {"style": ""}, focused="style"))
    assert sorted(c["value"] for c in choices.choices) == ["anime", "oil"]
    refused = fake.response(fake.command(d.alice, d.general, d.guild, "portrait", {"style": "cyberpunk"}))
    assert "not allowed on this server" in refused.text()
    nude = fake.response(fake.command(d.alice, d.general, d.guild, "portrait", {"style": "anime", "prompt": "nude"}))
    assert "The word 'nude' is not allowed" in nude.text()
    blocked = fake.response(fake.command(d.alice, d.general, d.guild, "settings", {"blocked_words": "Guitar, drum"},
                                         group="facechain-admin"))
    assert "guitar, drum" in blocked.text()
    refused = fake.response(fake.command(d.alice, d.general, d.guild, "portrait",
                                         {"style": "anime", "prompt": "playing a guitar"}))
    assert "The word 'guitar' is not allowed" in refused.text()
    fake.response(fake.command(d.alice, d.general, d.guild, "settings", {"blocked_words": "none"},
                               group="facechain-admin"))
    bad_list = fake.response(fake.command(d.alice, d.general, d.guild, "settings", {"allowed_styles": "anime, nope"},
                                          group="facechain-admin"))
    assert "Unknown style(s): nope" in bad_list.text()
    fake.response(fake.command(d.alice, d.general, d.guild, "settings", {"allowed_styles": "all"},
                               group="facechain-admin"))


def test_enroll_refuses_what_it_cannot_download_and_consent_can_be_declined(deployment):
    d, fake = deployment, deployment.fake
    elsewhere = {"id": fake.new_id(), "filename": "me.jpg", "size": 1000, "url": "https://example.com/me.jpg",
                 "proxy_url": "https://example.com/me.jpg", "content_type": "image/jpeg"}
    huge = {**fake.host_attachment("huge.jpg", b"x" * 100), "size": 200 * 2**20}
    prompt = fake.response(fake.command(d.carol, d.general, d.guild, "enroll", attachments={"photo1": elsewhere}))
    fake.click(d.carol, prompt, prompt.custom_ids()[2])  # "No thanks"
    fake.wait_for(lambda: "nothing was stored" in prompt.content, 10, "the decline notice")
    assert d.rows("select count(*) from users where id = ?", d.carol) == [(0,)]

    page = fake.host_attachment("page.jpg", b"<!DOCTYPE html><html>not a photo</html>")
    prompt = fake.response(fake.command(d.carol, d.general, d.guild, "enroll",
                                        attachments={"photo1": elsewhere, "photo2": huge, "photo3": page}))
    agree_to_consent(fake, d.carol, prompt)
    fake.wait_for(lambda: "None of your photos" in prompt.text(), 15, "the refusal")
    assert "not on Discord's CDN (example.com)" in prompt.text() and "larger than 25 MB" in prompt.text()
    assert "page.jpg: it is not a photo (an HTML page)" in prompt.text()
    assert not list((d.data_dir / "tmp").glob(f"enroll-{d.carol}-*"))

    rejected = fake.response(fake.command(d.carol, d.general, d.guild, "enroll",
                                          attachments=d.upload("group/two_people.jpg")))
    fake.wait_for(lambda: "0 accepted" in rejected.text(), 60, "the card")
    assert "crop to just you" in rejected.text() and "Nothing new to train on" in rejected.text()


def test_admin_queue_lists_and_cancels_this_servers_jobs(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    refused = fake.response(fake.command(d.bob, d.general, d.guild, "queue", group="facechain-admin"))
    assert "Only this server's admins" in refused.text()
    slow = fake.command(d.alice, d.general, d.guild, "portrait", {"style": "slow", "count": 1})
    fake.wait_acked(slow)
    listing = fake.response(fake.command(d.alice, d.general, d.guild, "queue", group="facechain-admin"))
    assert "Slow" in listing.text() or "slow" in listing.text()
    admin_cancel = [c for c in listing.custom_ids() if c.startswith("fc:cancel:a")]
    assert admin_cancel
    elsewhere = fake.response(fake.command(d.bob, d.other_general, d.other_guild, "queue", group="facechain-admin"))
    assert "Nothing queued" in elsewhere.text()  # another server sees none of Club's jobs
    answer = fake.response(fake.click(d.alice, listing, admin_cancel[0]))
    assert "Cancelled" in answer.text() or "Stopping" in answer.text()
    fake.wait_for(lambda: "Cancelled" in fake.response(slow).content, 60, "the cancelled request")


def test_styles_browser_pages(deployment):
    d, fake = deployment, deployment.fake
    drawn = d.data_dir / "cache" / "previews" / "anime.png"  # as `facechain styles previews` leaves it
    drawn.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), "teal").save(drawn)
    browser = fake.response(fake.command(d.bob, d.general, d.guild, "styles"))
    assert "Style 1 of 4" in browser.text() and "Anime" in browser.text()
    assert list(browser.files) == ["preview.png"]
    previous, following = browser.custom_ids()
    fake.wait_acked(fake.click(d.bob, browser, following))
    fake.wait_for(lambda: "Style 2 of 4" in browser.text(), 10, "page 2")
    answer = fake.response(fake.click(d.carol, browser, following))
    assert "belong to" in answer.text() and "Style 2 of 4" in browser.text()


def test_dms_and_other_servers(deployment):
    d, fake = deployment, deployment.fake
    dm = fake.dm_channel(d.bob)
    answer = fake.response(fake.command(d.bob, dm, None, "portrait", {"style": "anime"}))
    assert "no face model yet" in answer.text() and "/facechain enroll" in answer.text()
    assert "FaceChain" in fake.response(fake.command(d.bob, dm, None, "help")).text()
    settings = fake.response(fake.command(d.bob, d.other_general, d.other_guild, "settings", {"daily_quota": 1},
                                          group="facechain-admin"))
    assert "Daily quota: 1" in settings.text() and "Gallery channel: not set" in settings.text()  # not Club's


def test_swap_puts_your_face_on_your_photo_and_asks_which_face_when_several(deployment):
    d, fake = deployment, deployment.fake
    trained(d)  # with a face model the face is redrawn; quality:fast pastes the selfie's on
    group = {"photo": d.upload("group/two_people.jpg")["photo1"]}
    asked = fake.command(d.alice, d.general, d.guild, "swap", {"quality": "fast"}, attachments=group)
    choice = fake.response(asked)
    fake.wait_for(lambda: "faces.jpg" in choice.files, 60, "the numbered faces")
    assert "shows 2 faces" in choice.text() and asked.ack_seconds < ACK_LIMIT
    buttons = choice.custom_ids()
    assert [b.rsplit(":", 1)[1] for b in buttons] == ["1", "2"]
    assert "belong to" in fake.response(fake.click(d.bob, choice, buttons[1])).text()
    swapped = d.result_of(fake.click(d.alice, choice, buttons[1]), timeout=60)
    assert list(swapped.files) == ["swap.png"] and "face 2 of 2" in swapped.content and "likeness" in swapped.content
    assert {c.split(":")[1] for c in swapped.custom_ids()} == {"delete", "share", "report"}
    assert d.rows("select kind from jobs order by id desc limit 1") == [("swap",)]

    # Redrawn by the face model, whose drawings (the tiny model's noise) read less like her than her enrolled face
    # pasted on: she gets that paste, and is told why.
    single = fake.command(d.alice, d.general, d.guild, "swap", attachments={"photo": d.upload("biden/biden2.jpg")[
        "photo1"]})
    redrawn = d.result_of(single, timeout=90)
    assert list(redrawn.files) == ["swap.png"] and "your face on face 1 of 1 · likeness" in redrawn.content
    assert "didn't look enough like you on this photo, so your enrolled selfie's face was put on" in redrawn.content
    assert d.rows("select kind, json_extract(result, '$.method') from jobs order by id desc limit 1") == [
        ("redraw", "pasted")]
    assert {c.split(":")[1] for c in redrawn.custom_ids()} == {"delete", "share", "report"}
    assert not list((d.data_dir / "tmp").glob(f"enroll-{d.alice}-*/photo.upload"))  # the photos are gone
    stranger = fake.response(fake.command(d.carol, d.general, d.guild, "swap", attachments=group))
    assert "Enroll a few selfies first" in stranger.text()


def test_me_shows_the_numbered_photos_and_removes_one_then_retrains(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    panel = fake.response(fake.command(d.alice, d.general, d.guild, "me"))
    fake.wait_for(lambda: panel.embeds, 30, "the panel")
    before = d.rows("select count(*) from selfies where user_id = ? and status = 'accepted'", d.alice)[0][0]
    assert f"{before} enrolled photos" in panel.text() and "Face model: version" in panel.text()
    assert list(panel.files) == ["photos.jpg"] and panel.ephemeral
    words, _together, menu, forget_button = panel.custom_ids()
    assert "belong to" in fake.response(fake.click(d.bob, panel, menu, ["1"])).text()
    fake.wait_acked(fake.click(d.alice, panel, menu, ["2"]))
    fake.wait_for(lambda: "Remove photo 2?" in panel.text(), 10, "the question")
    fake.wait_acked(fake.click(d.alice, panel, panel.custom_ids()[0]))
    fake.wait_for(lambda: "Removed photo 2" in panel.text(), 30, "the removal")
    assert "retraining" in panel.text() and f"{before - 1} enrolled photos" in panel.text()
    assert d.rows("select count(*) from selfies where user_id = ? and status = 'accepted'", d.alice) == [
        (before - 1,)]
    assert d.rows("select count(*) from jobs where user_id = ? and kind = 'train' and state in ('queued', 'running')",
                  d.alice) == [(1,)]
    # Their own words for who they are: a change retrains with the new trigger phrase.
    current = d.rows("select subject from users where id = ?", d.alice)[0][0]
    assert f"Portraits describe you as **a {current}**" in panel.text()
    other = "person" if current != "person" else "man"
    fake.wait_acked(fake.click(d.alice, panel, panel.custom_ids()[0], [other]))
    fake.wait_for(lambda: f"Portraits describe you as a {other}. Your face model is retraining" in panel.text(), 30,
                  "the new words")
    assert d.rows("select subject from users where id = ?", d.alice) == [(other,)]
    assert d.rows("select count(*) from jobs where user_id = ? and kind = 'train' and state in ('queued', 'running')",
                  d.alice) == [(1,)]  # the removal's training (it trains again if it had begun), or a new one
    fake.wait_acked(fake.click(d.alice, panel, panel.custom_ids()[-1]))  # "Forget me…" asks first
    asked = [m for m in fake.messages.values() if "cannot be undone" in m.text()]
    assert asked and asked[-1].ephemeral


def test_forget_erases_every_trace(deployment):
    d, fake = deployment, deployment.fake
    shareable = portraits_message(d)
    gallery_channel_set(d)
    share = _custom_id(shareable, "share")
    portrait = d.rows("select id from portraits where job_id = ?", int(share.split(":")[2]))[0][0]
    fake.response(fake.click(d.alice, shareable, share, [str(portrait)]))
    fake.wait_for(lambda: fake.channel_messages(d.gallery), 10, "the gallery post")
    posts = d.rows("select count(*) from gallery_entries where user_id = ?", d.alice)[0][0]
    assert posts >= 1
    prompt = fake.response(fake.command(d.alice, d.general, d.guild, "forget"))
    assert "cannot be undone" in prompt.text()
    fake.click(d.alice, prompt, prompt.custom_ids()[0])
    fake.wait_for(lambda: "Done." in prompt.content, 60, "the forget report")
    assert f"{posts} gallery posts" in prompt.content
    assert fake.channel_messages(d.gallery) == []
    for table, column in (("users", "id"), ("selfies", "user_id"), ("face_models", "user_id"), ("jobs", "user_id"),
                          ("portraits", "user_id"), ("gallery_entries", "user_id")):
        assert d.rows(f"select count(*) from {table} where {column} = ?", d.alice) == [(0,)], table
    assert not (d.data_dir / "users" / d.alice).exists()
    assert not list((d.data_dir / "tmp").glob(f"*{d.alice}*"))
    # Walk everything: no row of any table and no file or folder name mentions her any more.
    with d.db() as db:
        tables = [name for (name,) in db.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            for row in db.execute(f"select * from {table}"):
                assert d.alice not in " ".join(map(str, row)), (table, row)
    assert [p for p in d.data_dir.rglob("*") if d.alice in p.name] == []


def test_every_interaction_was_acknowledged_in_time_and_nothing_crashed(deployment):
    d, fake = deployment, deployment.fake
    slow = [(i.kind, i.ack_seconds) for i in fake.interactions.values()
            if i.ack_seconds is None or i.ack_seconds > ACK_LIMIT]
    fake.wait_acked(fake.command(d.bob, d.general, d.guild, "help"))  # at least one, when run alone
    assert slow == [] and fake.interactions
    log = d.bot.log()
    assert "Traceback" not in log and '"level": "error"' not in log
    assert TOKEN not in log


def trained(d: Deployment) -> None:
    """Alice enrolled with a ready face model (the first test makes it; alone, a test makes it here)."""
    if d.rows("select count(*) from face_models where user_id = ? and status = 'ready'", d.alice) != [(0,)]:
        return
    fake = d.fake
    prompt = fake.response(fake.command(d.alice, d.general, d.guild, "enroll",
                                        attachments=d.upload("obama/obama1.jpg", "obama/obama2.jpg",
                                                             "obama/obama3.jpg")))
    if prompt.custom_ids():  # consent, asked once
        agree_to_consent(fake, d.alice, prompt)
    fake.wait_for(lambda: d.rows("select count(*) from face_models where user_id = ? and status = 'ready'",
                                 d.alice) != [(0,)], 180, "alice's face model")


def portraits_message(d: Deployment) -> Message:
    """The newest message with alice's portraits and their buttons, asking for one if there is none."""
    def shown() -> list[Message]:
        return [m for m in d.fake.messages.values() if m.files and any("reroll" in c for c in m.custom_ids())
                and not m.deleted and m.interaction_token]
    if not shown():
        trained(d)
        d.result_of(d.fake.command(d.alice, d.general, d.guild, "portrait", {"style": "cyberpunk", "count": 2}))
    return shown()[-1]


def gallery_channel_set(d: Deployment) -> None:
    d.fake.response(d.fake.command(d.alice, d.general, d.guild, "settings",
                                   {"gallery_channel": {"channel": "gallery"}}, group="facechain-admin"))


def _custom_id(message: Message, kind: str) -> str:
    return next(c for c in message.custom_ids() if c.split(":")[1] == kind)


# --- /facechain together ---------------------------------------------------------------------------

GROUP = "group/two_people.jpg"


def bob_enrolled(d: Deployment) -> None:
    """Bob enrolled (Rose's photos): on a photo, a picture together needs only enrolled selfies."""
    if d.rows("select count(*) from selfies where user_id = ? and status = 'accepted'", d.bob) != [(0,)]:
        return
    fake = d.fake
    prompt = fake.response(fake.command(d.bob, d.general, d.guild, "enroll", attachments=d.upload(
        "rose_leslie/rose1.jpg", "rose_leslie/rose2.jpg")))
    agree_to_consent(fake, d.bob, prompt, subject="woman")
    fake.wait_for(lambda: d.rows("select count(*) from selfies where user_id = ? and status = 'accepted'", d.bob)
                  != [(0,)], 90, "bob's selfies")


def set_choice(d: Deployment, member: str, choice: str) -> None:
    fake = d.fake
    panel = fake.response(fake.command(member, d.general, d.guild, "me"))
    fake.wait_for(lambda: panel.embeds, 30, "the panel")
    together_menu = panel.custom_ids()[1]
    fake.wait_acked(fake.click(member, panel, together_menu, [choice]))
    fake.wait_for(lambda: d.rows("select coalesce(together, 'ask') from users where id = ?", member) == [(choice,)],
                  10, "the choice")


def ask(d: Deployment, **options) -> Message:
    fake = d.fake
    return fake.response(fake.command(d.alice, d.general, d.guild, "together", {"member": {"user": d.bob}, **options},
                                      attachments={"photo": d.upload(GROUP)["photo1"]}))


def questions(d: Deployment) -> list[Message]:
    """Bob's open Allow / Decline questions: by DM, where nobody else sees them or the photo."""
    return [m for m in d.fake.channel_messages(d.fake.dm_channel(d.bob))
            if any(c.startswith("fc:together:allow") for c in m.custom_ids())]


def question(d: Deployment) -> Message:
    """The newest Allow / Decline question to Bob."""
    return d.fake.wait_for(lambda: (questions(d) or [None])[-1], 30, "the question")


def test_a_member_asked_decides_and_the_asker_hears_only_not_allowed_or_no_answer(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    bob_enrolled(d)
    uploads = d.data_dir / "tmp"

    # never: Bob is not asked, and Alice sees what a question shows; later, the words of a decline.
    set_choice(d, d.bob, "never")
    refused = ask(d)
    fake.wait_for(lambda: "Asked" in refused.text(), 30, "the same waiting line as a question")
    assert not questions(d) and "expires" in refused.text()
    assert "You already asked" in ask(d).text()  # one open question per pair, whatever the answer will be
    d.rows("update together_requests set expires_at = '2000-01-01T00:00:00+00:00' where silent = 1")  # a wait on
    fake.wait_for(lambda: "not allowed" in refused.text(), 30, "the refusal")
    assert f"<@{d.bob}>" in refused.text() and "never" not in refused.text()
    assert d.rows("select state from together_requests") == [("declined",)]
    assert not list(uploads.glob(f"enroll-{d.alice}-*/photo.upload"))  # nothing kept

    # ask, then decline: only Bob can answer.
    set_choice(d, d.bob, "ask")
    waiting = ask(d)
    fake.wait_for(lambda: "Asked" in waiting.text(), 30, "the waiting line")
    asked = question(d)
    assert f"<@{d.bob}>" in asked.text() and "expires" in asked.text()
    assert "photo.jpg" in asked.files  # the photo Bob is asked about, shown to him alone
    assert Image.open(io.BytesIO(asked.files["photo.jpg"])).width <= 320
    allow, decline, refuse = asked.custom_ids()
    assert "Only" in fake.response(fake.click(d.alice, asked, allow)).text()
    fake.wait_acked(fake.click(d.bob, asked, decline))
    fake.wait_for(lambda: "not allowed" in waiting.text(), 30, "the answer to alice")
    assert "declined" not in waiting.text().lower() and "nothing will be drawn" in asked.text()
    assert d.rows("select state from together_requests order by id desc limit 1") == [("declined",)]

    # ask, then no answer for a day.
    waiting = ask(d)
    asked = question(d)
    d.rows("update together_requests set expires_at = '2000-01-01T00:00:00+00:00' where state = 'asked'")  # a day on
    fake.wait_for(lambda: "no answer" in waiting.text(), 30, "the expiry")
    fake.wait_for(lambda: "expired" in asked.text() and not asked.custom_ids(), 30, "the question closed")
    assert d.rows("select count(*) from jobs where kind = 'together'") == [(0,)]  # nothing was drawn
    assert not list(uploads.glob(f"enroll-{d.alice}-*/photo.upload"))

    # ask, then allow: both get the picture; Share needs both; either may delete.
    waiting = ask(d)
    asked = question(d)
    fake.wait_acked(fake.click(d.bob, asked, asked.custom_ids()[0]))
    fake.wait_for(lambda: "allowed" in asked.text(), 30, "bob's answer shown")
    picture = fake.wait_for(lambda: waiting.files and waiting, 120, "the picture")
    assert sorted(picture.files)[0] == "together-1.png" and "together on faces 1 and 2" in picture.text()
    assert f"<@{d.bob}>" in picture.text() and "reroll" not in " ".join(picture.custom_ids())
    fake.wait_for(lambda: any(f"<@{d.bob}> you're in" in m.text() for m in fake.channel_messages(d.general)), 30,
                  "bob's mention")
    assert d.rows("select count(*) from portraits where partner_id = ?", d.bob) != [(0,)]

    gallery_channel_set(d)
    share = next(c for c in picture.custom_ids() if c.startswith("fc:share"))
    first = next(iter(picture.components[-1]["components"][0]["options"]))["value"]
    assert "once" in fake.response(fake.click(d.alice, picture, share, [first])).text()
    assert not fake.channel_messages(d.gallery) or all(first not in str(m.files) for m in fake.channel_messages(d.gallery))
    before = len(fake.channel_messages(d.gallery))
    fake.wait_acked(fake.click(d.bob, picture, share, [first]))
    post = fake.wait_for(lambda: len(fake.channel_messages(d.gallery)) > before and fake.channel_messages(d.gallery)[-1],
                         30, "the gallery post")
    assert f"<@{d.alice}> and <@{d.bob}>" in post.text()

    # always: no question. Private: Bob's copy comes by DM; Delete by either clears both copies.
    set_choice(d, d.bob, "always")
    hidden = ask(d, private=True)
    fake.wait_for(lambda: hidden.files, 120, "the private picture")
    copy = fake.wait_for(lambda: next((m for m in fake.channel_messages(fake.dm_channel(d.bob))
                                       if any(name.startswith("together-") for name in m.files)), None), 30,
                         "bob's copy by DM")
    fake.wait_acked(fake.click(d.alice, hidden, _custom_id(hidden, "delete")))
    fake.wait_for(lambda: not copy.files and "deleted these pictures" in copy.text() and not copy.custom_ids(), 30,
                  "bob's copy cleared")

    # Then Bob forgets, and the pictures he is in go with him.
    direct = ask(d)
    fake.wait_for(lambda: direct.files, 120, "the picture drawn at once")
    assert d.rows("select count(*) from together_requests where state = 'asked'") == [(0,)]
    forget = fake.response(fake.command(d.bob, d.general, d.guild, "forget"))
    fake.wait_acked(fake.click(d.bob, forget, forget.custom_ids()[0]))
    fake.wait_for(lambda: "Done" in forget.text(), 60, "the forgetting")
    assert d.rows("select count(*) from portraits where partner_id = ?", d.bob) == [(0,)]
    assert d.rows("select count(*) from together_requests") == [(0,)]
    fake.wait_for(lambda: post.deleted, 10, "the gallery post taken down")


def test_moderators_report_remove_bar_and_audit_and_a_face_is_its_owners(deployment):
    d, fake = deployment, deployment.fake
    trained(d)
    gallery_channel_set(d)
    message = portraits_message(d)
    share = _custom_id(message, "share")
    options = [o["value"] for row in message.components for c in row["components"]
               if c.get("custom_id") == share for o in c["options"]]

    def shared(value: str) -> Message:
        before = {m.id for m in fake.channel_messages(d.gallery)}
        fake.response(fake.click(d.alice, message, share, [value]))
        return fake.wait_for(lambda: next((m for m in fake.channel_messages(d.gallery) if m.id not in before), None),
                             30, "the gallery post")

    # Report on a gallery post: anyone may press it; without a report channel it goes to the owner's DMs.
    post = shared(options[-1])
    thanks = fake.response(fake.click(d.carol, post, _custom_id(post, "report")))
    assert thanks.ephemeral and "Reported to this server's moderators" in thanks.text()
    owner_dms = fake.dm_channel(d.alice)  # alice owns Club
    report = fake.wait_for(lambda: next((m for m in fake.channel_messages(owner_dms)
                                         if any(c.startswith("fc:mod:") for c in m.custom_ids())), None), 30, "report")
    assert f"<@{d.carol}>" in report.text() and "reported.png" in report.files
    assert f"<@{d.carol}>" not in post.text()  # the reporter is named to the admins only
    remove, dismiss = report.custom_ids()
    d.bot.stop()  # reports and their buttons outlast a restart
    d.bot.start(fake)
    assert "Only that server's admins" in fake.response(fake.click(d.bob, report, remove)).text()
    fake.wait_acked(fake.click(d.alice, report, remove))
    fake.wait_for(lambda: post.deleted and "Removed by" in report.text() and not report.custom_ids(), 30, "removed")

    # With a report channel: a reported result goes there, and can be dismissed.
    fake.response(fake.command(d.alice, d.general, d.guild, "settings", {"report_channel": {"channel": "general"}},
                               group="facechain-admin"))
    fake.response(fake.click(d.carol, message, _custom_id(message, "report")))
    flagged = fake.wait_for(lambda: next((m for m in fake.channel_messages(d.general)
                                          if any(c.startswith("fc:mod:") for c in m.custom_ids())), None), 30, "report")
    fake.wait_acked(fake.click(d.alice, flagged, flagged.custom_ids()[1]))
    fake.wait_for(lambda: "Dismissed by" in flagged.text(), 30, "dismissed")
    assert message.files  # a dismissed report leaves the pictures as they were

    # /facechain-admin remove, by the post's link.
    post = shared(options[0])
    link = f"https://discord.com/channels/{d.guild}/{post.channel_id}/{post.id}"
    assert "Give a gallery post's message link" in fake.response(
        fake.command(d.alice, d.general, d.guild, "remove", {"message": "that one"}, group="facechain-admin")).text()
    assert "Only this server's admins" in fake.response(
        fake.command(d.bob, d.general, d.guild, "remove", {"message": link}, group="facechain-admin")).text()
    fake.response(fake.command(d.alice, d.general, d.guild, "remove", {"message": link}, group="facechain-admin"))
    fake.wait_for(lambda: post.deleted, 30, "the post taken down")
    assert "not a post in this server's gallery" in fake.response(
        fake.command(d.alice, d.general, d.guild, "remove", {"message": link}, group="facechain-admin")).text()

    # A bar holds on this server only, and is lifted.
    try:
        barred = fake.response(fake.command(d.alice, d.general, d.guild, "bar", {"member": {"user": d.carol},
                                                                                 "reason": "spam"},
                                            group="facechain-admin"))
        assert f"Barred <@{d.carol}>" in barred.text()
        for command, options_, files in (("portrait", {"style": "cyberpunk"}, None),
                                         ("enroll", {}, d.upload("obama/obama1.jpg"))):
            answer = fake.response(fake.command(d.carol, d.general, d.guild, command, options_, attachments=files))
            barred_line = "⚠️ A moderator of this server has barred you from FaceChain here."
            assert answer.text() == barred_line, answer.text()
    finally:
        fake.response(fake.command(d.alice, d.general, d.guild, "unbar", {"member": {"user": d.carol}},
                                   group="facechain-admin"))

    # Carol enrolls photos of Alice's face: refused in one line that names nobody, and audited.
    prompt = fake.response(fake.command(d.carol, d.general, d.guild, "enroll", attachments=d.upload(
        "obama/obama3.jpg", "obama/obama4_small.jpg", "obama/obama2.jpg")))
    if prompt.custom_ids():  # consent, asked once
        agree_to_consent(fake, d.carol, prompt)
    fake.wait_for(lambda: "rejected" in prompt.text(), 90, "the enroll card")
    assert "look like another member of this bot" in prompt.text() and f"<@{d.alice}>" not in prompt.text()
    assert d.rows("select count(*) from selfies where user_id = ? and status = 'accepted'", d.carol) == [(0,)]
    assert d.rows("select count(*) from jobs where user_id = ? and kind = 'train'", d.carol) == [(0,)]

    log = fake.response(fake.command(d.alice, d.general, d.guild, "audit", group="facechain-admin"))
    text = log.text()
    for words in ("barred", "unbarred", "a picture was reported", "removed a reported picture", "dismissed a report",
                  "removed a gallery post", "changed settings", "enrollment refused"):
        assert words in text, words
    assert "Only this server's admins" in fake.response(
        fake.command(d.bob, d.general, d.guild, "audit", group="facechain-admin")).text()


def test_admins_add_a_style_from_a_lora_file_for_their_server_only(deployment, tiny_model, tmp_path):
    from diffusers import UNet2DConditionModel

    from engine.models.random_models import make_random_lora

    d, fake = deployment, deployment.fake
    lora = make_random_lora(UNet2DConditionModel.from_pretrained(tiny_model / "unet"), tmp_path / "neon.safetensors",
                            kohya=True).read_bytes()
    options = {"style_id": "neon-look", "prompt": "neon portrait, rain, city lights", "weight": 0.5}

    def add(member: str, name: str, data: bytes, guild: str = d.guild, channel: str = d.general) -> Message:
        upload = {"lora": fake.host_attachment(name, data, "application/octet-stream")}
        return fake.response(fake.command(member, channel, guild, "style-add", options, attachments=upload,
                                          group="facechain-admin"))

    def offered(guild: str, channel: str) -> list[str]:
        answer = fake.wait_acked(fake.command(d.alice, channel, guild, "portrait", {"style": "neon"}, focused="style"))
        return [choice["value"] for choice in answer.choices]

    assert "Only this server's admins" in add(d.bob, "neon.safetensors", lora).text()
    assert ".safetensors file" in add(d.alice, "neon.ckpt", lora).text()
    assert "not a .safetensors file" in add(d.alice, "evil.safetensors", b"\x80\x04\x95" + b"\x00" * 64).text()
    assert not list((d.data_dir / "styles").rglob("*.toml"))  # nothing of a refused file is kept
    assert not list((d.data_dir / "tmp").rglob("*.safetensors"))

    added = add(d.alice, "neon.safetensors", lora)
    assert "Added **Neon Look** (`neon-look`)" in added.text()
    assert "neon-look" in offered(d.guild, d.general)  # in autocomplete at once
    assert "neon-look" not in offered(d.other_guild, d.other_general)  # that server's alone
    assert "taken by this server's styles" in add(d.alice, "neon.safetensors", lora).text()

    choices = fake.wait_acked(fake.command(d.alice, d.general, d.guild, "style-remove", {"style_id": ""},
                                           focused="style_id", group="facechain-admin"))
    assert [choice["value"] for choice in choices.choices] == ["neon-look"]
    removed = fake.response(fake.command(d.alice, d.general, d.guild, "style-remove", {"style_id": "neon-look"},
                                         group="facechain-admin"))
    assert "Removed **Neon Look**" in removed.text() and "neon-look" not in offered(d.guild, d.general)
    assert not list((d.data_dir / "styles").rglob("*.safetensors"))
