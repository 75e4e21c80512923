"""A server's moderation in the store: bars that hold on one server only, reports handled once, and an
audit log that pages and keeps 90 days. (Through Discord: tests/test_bot.py.)"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from engine.errors import FaceChainError
from engine.jobs.queue import SqliteJobQueue
from engine.store.moderation import (
    BARRED,
    audit,
    audit_page,
    bar,
    delete_old_audit,
    handle_report,
    is_barred,
    report,
    unbar,
)


def test_a_bar_holds_on_its_server_only_and_every_request_there_is_refused(store, settings):
    queue = SqliteJobQueue(store, settings)
    assert bar(store, "club", "mallory", "admin", "spam") and not bar(store, "club", "mallory", "admin")
    assert is_barred(store, "club", "mallory") and not is_barred(store, "elsewhere", "mallory")
    for kind in ("enroll", "generate", "swap", "together"):
        with pytest.raises(FaceChainError, match=f"^{BARRED}$"):
            queue.enqueue(kind, "mallory", {}, guild_id="club")
    assert queue.enqueue("generate", "mallory", {}, guild_id="elsewhere").state == "queued"
    assert queue.enqueue("generate", "mallory", {}).state == "queued"  # a DM belongs to no server
    assert unbar(store, "club", "mallory", "admin") and not unbar(store, "club", "mallory", "admin")
    assert queue.enqueue("generate", "mallory", {}, guild_id="club").state == "queued"
    store.delete_user("mallory")
    bar(store, "club", "mallory", "admin")
    store.delete_user("mallory")  # forgetting themselves does not lift a bar: it is the server's decision
    assert is_barred(store, "club", "mallory")
    actions = [entry.action for entry in audit_page(store, "club")[0]]
    assert actions == ["bar", "unbar", "bar"]  # newest first


def test_a_report_is_kept_once_per_reporter_and_decided_once(store):
    store.touch_user("ann")
    with store.transaction():
        picture = store.db["portraits"].insert({"user_id": "ann", "style": "studio", "seed": 1, "path": "p.png",
                                                "nsfw": 0}).last_pk
    made = report(store, "club", picture, "bob")
    with pytest.raises(FaceChainError, match="You already reported this picture"):
        report(store, "club", picture, "bob")
    assert report(store, "club", picture, "carol").id != made.id
    assert handle_report(store, made.id, "admin", "removed").state == "removed"
    with pytest.raises(FaceChainError, match=r"This report was already handled \(removed\)"):
        handle_report(store, made.id, "admin2", "dismissed")
    with pytest.raises(FaceChainError, match="This picture no longer exists"):
        report(store, "club", 9999, "bob")
    store.delete_user("bob")  # the reports a member made go with them
    assert store.db.execute("select count(*) from reports where reporter_id = 'bob'").fetchone()[0] == 0


def test_the_audit_log_pages_newest_first_and_keeps_ninety_days(store):
    for n in range(23):
        audit(store, "club", "settings", "admin", None, f"change {n}")
    audit(store, "elsewhere", "bar", "admin", "x")
    audit(store, None, "bar", "admin", "x")  # a DM has no server's log
    first, pages = audit_page(store, "club", 0)
    assert pages == 3 and first[0].detail == "change 22" and len(first) == 10
    assert audit_page(store, "club", 2)[0][-1].detail == "change 0"
    old = (datetime.now(timezone.utc) - timedelta(days=91)).isoformat(timespec="seconds")
    with store.transaction():
        store.db.execute("update audit_log set created_at = ? where detail = 'change 0'", [old])
    assert delete_old_audit(store) == 1 and audit_page(store, "club", 0)[1] == 3


def test_a_barred_member_is_never_asked_on_that_server(settings):
    import numpy as np

    from bot.backend import Backend, TogetherOrder
    from engine.store.together import answer, expire_due

    backend = Backend(settings)
    try:
        store = backend.store
        for member in ("ann", "ben"):
            store.ensure_user(member, "person", "a person")
            store.add_selfie(member, member * 8, "me.jpg", b"jpeg", 0.9, np.zeros(128, np.float32), "dlib")
        order = TogetherOrder("ben", upload="photo.upload")  # on a photo: enrolled selfies are enough
        asked, _ = backend.ask_together("ann", 1, 2, order)
        assert asked.outcome == "asked" and not asked.request.silent  # ben is asked
        answer(store, asked.request.id, "ben", allow=False)
        bar(store, "1", "ben", "admin")
        asked, _ = backend.ask_together("ann", 1, 2, order)
        assert asked.outcome == "asked" and asked.request.silent  # looks the same to ann; ben is not asked
        expire_due(store, datetime.now(timezone.utc) + timedelta(hours=1))
        asked, _ = backend.ask_together("ann", 3, 4, order)
        assert not asked.request.silent  # on another server ben is asked as before
    finally:
        backend.close()
