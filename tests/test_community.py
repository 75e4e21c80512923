"""Per-server settings, gallery rows and the queries the bot delivers from."""

import pytest

from engine.errors import FaceChainError
from engine.jobs.queue import QueueLimit, SqliteJobQueue
from engine.store.community import (
    add_gallery_entry,
    guild_settings,
    portrait_gallery_posts,
    set_gallery_message,
    update_guild_settings,
    user_gallery_posts,
)


def add_portrait(store, user_id: str, job_id: int | None = None) -> int:
    path = store.private_dir(user_id, "portraits") / f"p{job_id}.png"
    path.write_bytes(b"png")
    with store.transaction():
        return store.db["portraits"].insert({"user_id": user_id, "job_id": job_id, "style": "anime", "seed": 1,
                                             "similarity": 0.8, "path": store.relative(path)}).last_pk


def test_guild_settings_default_update_partially_and_stay_per_guild(store):
    assert guild_settings(store, "1").gallery_channel_id is None and guild_settings(store, "1").allows_style("x")
    update_guild_settings(store, "1", gallery_channel_id="55", allowed_styles=["anime"])
    changed = update_guild_settings(store, "1", daily_quota=3)
    assert (changed.gallery_channel_id, changed.daily_quota, changed.allowed_styles) == ("55", 3, ["anime"])
    assert not changed.allows_style("oil") and changed.allows_style("anime")
    assert guild_settings(store, "2").gallery_channel_id is None
    with pytest.raises(FaceChainError, match="NSFW policy"):
        update_guild_settings(store, "1", nsfw_policy="anything")
    with pytest.raises(FaceChainError, match="Unknown server setting"):
        update_guild_settings(store, "1", owner="me")


def test_a_portrait_is_shared_once_per_guild_and_deleting_it_removes_its_entries(store):
    store.touch_user("ann")
    portrait = add_portrait(store, "ann", job_id=7)
    entry = add_gallery_entry(store, "1", portrait, "ann", "55")
    set_gallery_message(store, entry["id"], "999")
    add_gallery_entry(store, "2", portrait, "ann", "66")  # another server may show it too
    with pytest.raises(FaceChainError, match="already"):
        add_gallery_entry(store, "1", portrait, "ann", "55")
    assert [p["message_id"] for p in user_gallery_posts(store, "ann")] == ["999"]  # unposted entries are skipped
    assert [p["message_id"] for p in portrait_gallery_posts(store, [portrait])] == ["999"]
    path = store.absolute(store.portrait(portrait)["path"])
    assert store.job_portraits(7)[0]["id"] == portrait
    assert store.delete_portraits([portrait]) == 1
    assert not path.exists() and store.portrait(portrait) is None
    assert store.db["gallery_entries"].count == 0


def test_a_guild_quota_overrides_the_server_default(store, settings):
    queue = SqliteJobQueue(store, settings.model_copy(update={"guild_daily_quota": 5}))
    update_guild_settings(store, "small", daily_quota=1)
    queue.enqueue("generate", "ann", {}, guild_id="small", channel_id="1")
    with pytest.raises(QueueLimit, match="its 1 jobs for today"):
        queue.enqueue("generate", "bob", {}, guild_id="small", channel_id="1")
    for _ in range(2):
        queue.enqueue("generate", "cy", {}, guild_id="big", channel_id="2")


def test_jobs_awaiting_delivery_are_those_with_a_channel_until_marked(store, settings):
    queue = SqliteJobQueue(store, settings)
    from_chat = queue.enqueue("generate", "ann", {}, guild_id="1", channel_id="10")
    queue.enqueue("train", "bob", {})  # from the command line: nobody to deliver to
    assert [job.id for job in queue.awaiting_delivery()] == [from_chat.id]
    other = queue.enqueue("generate", "cy", {}, guild_id="1", channel_id="10")
    assert [job.id for job in queue.awaiting_delivery(watched=[from_chat.id])] == [from_chat.id]  # what the bot shows
    queue.cancel(other.id)
    assert [job.id for job in queue.awaiting_delivery(watched=[])] == [other.id]  # finished: to deliver
    queue.mark_delivered(other.id)
    assert [job.id for job in queue.active_jobs(guild_id="1")] == [from_chat.id]
    assert [job.kind for job in queue.active_jobs(user_id="bob")] == ["train"]
    queue.mark_delivered(from_chat.id)
    assert queue.awaiting_delivery() == []


def shared(store, user_id: str, guild_id: str, style: str = "anime", message_id: str | None = "1") -> int:
    store.touch_user(user_id)
    portrait = add_portrait(store, user_id)
    with store.transaction():
        store.db["portraits"].update(portrait, {"style": style})
    entry = add_gallery_entry(store, guild_id, portrait, user_id, "55")
    if message_id:
        set_gallery_message(store, entry["id"], message_id)
    return entry["id"]


def test_browsing_filters_sorts_by_likes_and_pages(store):
    from engine.store.community import browse_gallery, gallery_styles, toggle_like

    first = shared(store, "ann", "1", "anime")
    second = shared(store, "bob", "1", "oil")
    third = shared(store, "ann", "1", "oil")
    shared(store, "ann", "2", "anime")  # another guild
    shared(store, "ann", "1", "anime", message_id=None)  # not posted (yet): not shown
    assert toggle_like(store, first, "bob") == (True, 1)
    assert toggle_like(store, first, "cy") == (True, 2)
    assert toggle_like(store, second, "cy") == (True, 1)
    assert toggle_like(store, second, "cy") == (False, 0)  # pressing again takes it back

    newest, total = browse_gallery(store, "1")
    assert total == 3 and [item.entry_id for item in newest] == [third]
    top, _ = browse_gallery(store, "1", sort="top", limit=3)
    assert [item.entry_id for item in top] == [first, third, second] and top[0].likes == 2
    oil, total = browse_gallery(store, "1", style="oil", limit=5)
    assert total == 2 and {item.style for item in oil} == {"oil"}
    anns, total = browse_gallery(store, "1", user_id="ann", offset=1, limit=5)
    assert total == 2 and [item.entry_id for item in anns] == [first]
    assert gallery_styles(store, "1") == ["oil", "anime"]
    with pytest.raises(FaceChainError, match="Sort by"):
        browse_gallery(store, "1", sort="random")


def test_week_winners_are_this_weeks_most_liked(store):
    from datetime import datetime, timedelta, timezone

    from engine.store.community import toggle_like, week_winners

    old = shared(store, "ann", "1")
    with store.transaction():
        store.db["gallery_entries"].update(old, {"created_at": "2020-01-01T00:00:00+00:00"})
    toggle_like(store, old, "bob")
    liked = shared(store, "bob", "1")
    plain = shared(store, "cy", "1")
    toggle_like(store, liked, "ann")
    assert [w.entry_id for w in week_winners(store, "1")] == [liked, plain]
    assert week_winners(store, "1", now=datetime.now(timezone.utc) + timedelta(days=8)) == []
    assert week_winners(store, "2") == []


def test_the_web_token_rotates_and_the_old_one_stops_working(store):
    from engine.store.community import guild_for_web_token, rotate_web_token

    first = rotate_web_token(store, "1")
    assert guild_for_web_token(store, first) == "1" and len(first) >= 32
    second = rotate_web_token(store, "1")
    assert second != first and guild_for_web_token(store, first) is None and guild_for_web_token(store, second) == "1"
    assert guild_for_web_token(store, "") is None


def test_the_collage_is_a_captioned_grid(tmp_path):
    import io

    from PIL import Image

    from engine.store.collage import render_collage

    paths = []
    for index, colour in enumerate(("red", "green", "blue")):
        paths.append(tmp_path / f"{index}.png")
        Image.new("RGB", (64, 64), colour).save(paths[-1])
    sheet = Image.open(io.BytesIO(render_collage([(p, f"#{i}") for i, p in enumerate(paths)], tmp_path, tile=100)))
    assert sheet.size == (200, 2 * 140)
    assert sheet.getpixel((50, 50))[0] > 200 and sheet.getpixel((150, 50))[1] > 100 and sheet.getpixel((50, 190))[2] > 200
