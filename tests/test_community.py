"""Per-server settings, gallery rows and the queries the bot delivers from."""

import pytest

from engine.errors import FaceChainError
from engine.queue import QueueLimit, SqliteJobQueue
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
    assert [job.id for job in queue.active_jobs(guild_id="1")] == [from_chat.id]
    assert [job.kind for job in queue.active_jobs(user_id="bob")] == ["train"]
    queue.mark_delivered(from_chat.id)
    assert queue.awaiting_delivery() == []
