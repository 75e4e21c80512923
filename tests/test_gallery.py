"""End to end: server galleries with the real bot against the fake Discord. Portraits are put in
the store as a finished request, so the bot delivers them like any result; no worker is needed."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from engine.provenance import check
from engine.store import Store
from tests.bot_harness import Deployment, add_finished_request, running_bot
from tests.fake_discord import Message

# The real bot, worker processes, the cluster, the full-size model or the benchmarks: skipped by the
# edit loop's quick lane (`pytest -m "not slow"`), run by CI.
pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with running_bot(tmp_path_factory.mktemp("galleries"), {"BOT_RUNS_WORKER": "false"}) as deployment:
        yield deployment


def delivered(d: Deployment, user: str, style: str, colours: list[str], guild: str | None = None,
              channel: str | None = None, flagged: tuple[int, ...] = ()) -> Message:
    """Plain-coloured portraits as a finished request, once the bot has posted them."""
    channel = channel or d.general
    job = add_finished_request(d, user, style, [COLOURS[c] for c in colours], guild, channel, flagged)
    return d.fake.wait_for(lambda: next((m for m in d.fake.channel_messages(channel)
                                         if any(c.endswith(f":{job}") for c in m.custom_ids())), None), 20,
                           "the delivered portraits")


def portrait_ids(d: Deployment, message: Message) -> list[int]:
    job = int(next(c for c in message.custom_ids() if c.startswith("fc:share:")).split(":")[2])
    return [row[0] for row in d.rows("select id from portraits where job_id = ? order by id", job)]


def share(d: Deployment, user: str, message: Message, index: int) -> Message:
    custom_id = next(c for c in message.custom_ids() if c.startswith("fc:share:"))
    return d.fake.response(d.fake.click(user, message, custom_id, [str(portrait_ids(d, message)[index])]))


def gallery_posts(d: Deployment, channel: str | None = None) -> list[Message]:
    """What the bot posted in a gallery channel (not the answers to button presses there)."""
    return [m for m in d.fake.channel_messages(channel or d.gallery) if m.interaction_token is None]


def colour_of(png: bytes) -> tuple[int, int, int]:
    return snapped(Image.open(io.BytesIO(png)).convert("RGB").getpixel((8, 8)))


def snapped(pixel: tuple[int, int, int]) -> tuple[int, int, int]:
    """The test colour a pixel shows: every picture carries an invisible watermark, which moves each pixel's
    brightness by a few levels (engine/provenance/watermark.py, at most MAX_STRENGTH), never more."""
    from engine.provenance.watermark import MAX_STRENGTH

    return next((colour for colour in COLOURS.values()
                 if all(abs(a - b) <= MAX_STRENGTH + 1 for a, b in zip(pixel, colour))), pixel)


def set_gallery(d: Deployment, channel: str, guild: str | None = None, admin: str | None = None) -> Message:
    return d.fake.response(d.fake.command(admin or d.alice, d.general if guild is None else d.other_general,
                                          guild or d.guild, "settings", {"gallery_channel": {"channel": channel}},
                                          group="facechain-admin"))


def test_share_posts_once_with_likes_and_only_the_owner_can_unshare(deployment):
    d, fake = deployment, deployment.fake
    set_gallery(d, "gallery")
    result = delivered(d, d.alice, "anime", ["red", "green"])
    assert "Shared to" in share(d, d.alice, result, 0).text()
    assert "belong to" in share(d, d.bob, result, 1).text()  # only the owner shares their portraits
    [post] = gallery_posts(d)
    assert colour_of(post.files["portrait.png"]) == COLOURS["red"] and f"<@{d.alice}>" in post.text()
    like, unshare, report = post.custom_ids()
    assert report.startswith("fc:report:e")  # anyone may report a post to the server's moderators

    fake.wait_acked(fake.click(d.bob, post, like))
    fake.wait_acked(fake.click(d.carol, post, like))
    fake.wait_for(lambda: post.components[0]["components"][0]["label"] == "2", 10, "two likes")
    fake.wait_acked(fake.click(d.carol, post, like))  # carol takes hers back
    fake.wait_for(lambda: post.components[0]["components"][0]["label"] == "1", 10, "one like")

    refused = fake.response(fake.click(d.bob, post, unshare))
    assert "Only the member who shared" in refused.text() and not post.deleted
    assert "Removed" in fake.response(fake.click(d.alice, post, unshare)).text()
    fake.wait_for(lambda: post.deleted, 10, "the post to go")
    assert d.rows("select count(*) from gallery_entries") == [(0,)]
    assert d.rows("select count(*) from gallery_likes") == [(0,)]
    assert "Shared to" in share(d, d.alice, result, 0).text()  # and it can be shared again


def test_browse_pages_filters_and_sorts_by_likes(deployment):
    d, fake = deployment, deployment.fake
    oil = delivered(d, d.bob, "oil", ["blue", "yellow"])
    share(d, d.bob, oil, 0)
    share(d, d.bob, oil, 1)
    posts = gallery_posts(d)
    assert len(posts) == 3
    yellow = next(p for p in posts if colour_of(p.files["portrait.png"]) == COLOURS["yellow"])
    for user in (d.alice, d.carol):
        fake.wait_acked(fake.click(user, yellow, yellow.custom_ids()[0]))

    browser = fake.response(fake.command(d.carol, d.general, d.guild, "gallery", {"sort": "top"}))
    assert browser.ephemeral and "1 of 3 · sorted by top" in browser.text()
    assert colour_of(browser.files["portrait.png"]) == COLOURS["yellow"]
    first, previous, following, last, jump, style_menu = browser.custom_ids()
    fake.wait_acked(fake.click(d.carol, browser, last))
    fake.wait_for(lambda: "3 of 3" in browser.text(), 10, "the last page")
    answer = fake.response(fake.click(d.bob, browser, first))
    assert "belong to" in answer.text() and "3 of 3" in browser.text()
    opened = fake.wait_acked(fake.click(d.carol, browser, jump))
    fake.wait_acked(fake.submit_modal(d.carol, opened, {"page": "2"}))
    fake.wait_for(lambda: "2 of 3" in browser.text(), 10, "page 2")
    wrong = fake.response(fake.submit_modal(d.carol, fake.wait_acked(fake.click(d.carol, browser, jump)),
                                            {"page": "9"}))
    assert "Pick a page from 1 to 3" in wrong.text() and "2 of 3" in browser.text()

    fake.wait_acked(fake.click(d.carol, browser, style_menu, ["anime"]))
    fake.wait_for(lambda: "1 of 1" in browser.text(), 10, "the anime page")
    assert colour_of(browser.files["portrait.png"]) == COLOURS["red"]

    bobs = fake.response(fake.command(d.carol, d.general, d.guild, "gallery", {"member": {"user": d.bob},
                                                                               "public": True}))
    assert not bobs.ephemeral and "1 of 2 · sorted by new" in bobs.text()
    filtered = fake.response(fake.command(d.carol, d.general, d.guild, "gallery", {"style": "cyberpunk"}))
    assert "No shared portraits" in filtered.text()


def test_other_servers_see_nothing_of_this_gallery(deployment):
    d, fake = deployment, deployment.fake
    elsewhere = fake.response(fake.command(d.bob, d.other_general, d.other_guild, "gallery"))
    assert "No shared portraits" in elsewhere.text()
    set_gallery(d, "gallery", guild=d.other_guild, admin=d.bob)
    quiet = fake.response(fake.command(d.bob, d.other_general, d.other_guild, "highlight", group="facechain-admin"))
    assert "nothing to highlight" in quiet.text()
    result = delivered(d, d.bob, "anime", ["green"], guild=d.other_guild, channel=d.other_general)
    share(d, d.bob, result, 0)
    assert len(gallery_posts(d, d.other_channels["gallery"])) == 1
    browser = fake.response(fake.command(d.carol, d.general, d.guild, "gallery"))
    assert "of 3" in browser.text()  # Club still shows only its own three


def test_a_forum_gallery_gets_one_post_per_portrait(deployment):
    d, fake = deployment, deployment.fake
    saved = set_gallery(d, "showcase")
    assert f"<#{d.channels['showcase']}>" in saved.text()
    result = delivered(d, d.carol, "cyberpunk", ["blue"])
    assert "Shared to" in share(d, d.carol, result, 0).text()
    threads = fake.guilds[d.guild]["threads"]
    [(thread_id, thread)] = threads.items()
    assert thread["parent_id"] == d.channels["showcase"] and thread["name"].startswith("Cyberpunk by")
    [post] = fake.channel_messages(thread_id)
    fake.response(fake.click(d.carol, post, post.custom_ids()[1]))  # un-share deletes the whole forum post
    fake.wait_for(lambda: not threads, 10, "the thread to go")
    set_gallery(d, "gallery")


def test_weekly_highlight_posts_the_most_liked_as_a_collage(deployment):
    d, fake = deployment, deployment.fake
    settings = fake.response(fake.command(d.alice, d.general, d.guild, "settings",
                                          {"highlight_day": 4, "highlight_hour": 20}, group="facechain-admin"))
    assert "Weekly highlight: Fridays at 20:00 UTC" in settings.text()
    fake.wait_for(lambda: "highlight for guild" in d.bot.log() and "next run" in d.bot.log(), 10, "the schedule")

    # Bob's shared pictures become pictures of him with Carol: a highlight credits both members.
    d.rows("update portraits set partner_id = ? where user_id = ? and id in (select portrait_id from gallery_entries "
           "where guild_id = ?)", d.carol, d.bob, d.guild)
    before = len(gallery_posts(d))
    answer = fake.response(fake.command(d.alice, d.general, d.guild, "highlight", group="facechain-admin"))
    fake.wait_for(lambda: "Posted" in answer.text(), 20, "the highlight")
    highlight = gallery_posts(d)[-1]
    assert len(gallery_posts(d)) == before + 1 and "Highlights of the week" in highlight.text()
    credits = highlight.text().splitlines()
    assert credits[1].startswith(f"**#1** <@{d.bob}> and <@{d.carol}> · Oil Painting · ❤️ 2")  # the yellow one
    collage = Image.open(io.BytesIO(highlight.files["highlights.png"])).convert("RGB")
    assert snapped(collage.getpixel((100, 100))) == COLOURS["yellow"]
    marks = check(highlight.files["highlights.png"])  # the collage says it was made by AI too
    assert marks.xmp and marks.c2pa_ai and marks.watermark_found
    assert d.rows("select count(*) from highlight_posts where message_id = ?", highlight.id) == [(1,)]

    # Bob forgets himself: the highlight showing his pictures comes down with them.
    forget = fake.response(fake.command(d.bob, d.general, d.guild, "forget"))
    fake.wait_acked(fake.click(d.bob, forget, forget.custom_ids()[0]))
    fake.wait_for(lambda: highlight.deleted, 30, "the highlight taken down")
    assert d.rows("select count(*) from highlight_posts") == [(0,)]

    off = fake.response(fake.command(d.alice, d.general, d.guild, "settings", {"highlight_day": -1},
                                     group="facechain-admin"))
    assert "Weekly highlight: off" in off.text()


def test_the_nsfw_policy_guards_what_the_safety_check_flagged(deployment):
    d, fake = deployment, deployment.fake
    after_dark = d.channels["after-dark"]  # an age-restricted channel
    saved = fake.response(fake.command(d.alice, d.general, d.guild, "settings", {"nsfw_policy": "age_restricted_only"},
                                       group="facechain-admin"))
    fake.wait_for(lambda: saved.embeds, 10, "the settings card")
    assert "age_restricted_only: flagged portraits only in age-restricted channels" in saved.text()
    assert "safety check off" in saved.text()  # this deployment sets no FACECHAIN_SAFETY_CHECKER
    set_gallery(d, "gallery")
    result = delivered(d, d.carol, "oil", ["red", "green"], channel=after_dark, flagged=(0,))
    assert len(result.files) == 2  # asked in an age-restricted channel: both are shown
    refused = share(d, d.carol, result, 0)
    assert "safety filter flagged this portrait" in refused.text() and refused.ephemeral
    assert "Shared to" in share(d, d.carol, result, 1).text()
    set_gallery(d, "after-dark")
    assert "Shared to" in share(d, d.carol, result, 0).text()  # an age-restricted gallery may show it

    def browse(channel: str) -> Message:
        return fake.response(fake.command(d.carol, channel, d.guild, "gallery", {"member": {"user": d.carol},
                                                                                "style": "oil"}))
    outside = browse(d.general)
    assert "1 of 1" in outside.text() and colour_of(outside.files["portrait.png"]) == COLOURS["green"]
    assert "1 of 2" in browse(after_dark).text()

    held = add_finished_request(d, d.carol, "oil", [], result={
        "portraits": [], "held_back": 8, "notice": "Every candidate was held back by this server's safety filter."})
    told = fake.wait_for(lambda: next((m for m in fake.channel_messages(d.general)
                                       if "held back" in m.text()), None), 20, "the held-back notice")
    assert f"<@{d.carol}>" in told.text() and not told.files
    # Marked delivered once the post is made: a moment after the notice shows.
    fake.wait_for(lambda: d.rows("select delivered_at is not null from jobs where id = ?", held) == [(1,)], 10,
                  "the held-back job marked delivered")

    store = Store(d.data_dir)
    try:
        store.get_user(d.bob) or store.ensure_user(d.bob, "man", "a man")  # run alone, Bob is new here
        store.finish_face_model(store.start_face_model(d.bob, "tiny").id, {})
    finally:
        store.close()
    for channel in (after_dark, d.general):
        fake.wait_acked(fake.command(d.bob, channel, d.guild, "portrait", {"style": "anime"}))
    queued = "select channel_id, params from jobs where user_id = ? and state = 'queued' order by id"
    fake.wait_for(lambda: len(d.rows(queued, d.bob)) == 2, 10, "both requests queued")
    assert [(channel, json.loads(params)["age_restricted"]) for channel, params in d.rows(queued, d.bob)] == [
        (after_dark, True), (d.general, False)]


def test_no_errors_were_logged(deployment):
    log = deployment.bot.log()
    assert "Traceback" not in log and '"level": "error"' not in log
