"""Consent that cannot be worked around, in the store and the worker: un-sharing, refusals that outlast a
forget, limits on questions, answers that never reveal why, consent read again as the picture is recorded,
and photos kept exactly as long as a question or job needs them."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from PIL import Image

from engine.errors import FaceChainError
from engine.jobs.queue import SqliteJobQueue
from engine.store.community import add_gallery_entry, remove_gallery_entry
from engine.store.maintenance import delete_temp_files
from engine.store.together import (
    NOT_ALLOWED,
    SILENT_WAIT,
    answer,
    approve_share,
    ask,
    expire_due,
    set_together,
)


@pytest.fixture
def members(store):
    for user in ("ann", "ben", "cat"):
        store.ensure_user(user, "person", "a person")
    return store


def picture_of_two(store, owner: str = "ann", partner: str = "ben") -> int:
    with store.transaction():
        return store.db["portraits"].insert({"user_id": owner, "partner_id": partner, "style": "together", "seed": 1,
                                             "path": "x.png", "nsfw": 0}).last_pk


def test_un_sharing_a_picture_of_two_needs_both_to_share_it_again(members):
    store = members
    picture = picture_of_two(store)
    approve_share(store, picture, "ann")
    assert approve_share(store, picture, "ben") == {"ann", "ben"}
    entry = add_gallery_entry(store, "g", picture, "ben", "c")
    remove_gallery_entry(store, entry["id"])  # either of them un-shares it
    assert approve_share(store, picture, "ann") == {"ann"}  # ann alone can't post it again


def test_a_refusal_for_good_outlasts_the_askers_forget_and_goes_with_the_refuser(members):
    store = members
    request = ask(store, "ann", "ben", {}).request
    answer(store, request.id, "ben", allow=False, refuse_for_good=True)
    store.delete_user("ann")  # ann forgets herself, enrolls again, and asks again
    store.ensure_user("ann", "person", "a person")
    again = ask(store, "ann", "ben", {})
    assert again.outcome == "asked" and again.request.silent  # ben is not asked
    assert store.db["together_refusals"].count == 1
    store.delete_user("ben")  # the refusal is ben's data: it goes when he forgets
    assert store.db["together_refusals"].count == 0


def test_one_open_question_per_pair_and_a_daily_limit_each_refused_in_one_line(members):
    store = members
    ask(store, "ann", "ben", {})
    with pytest.raises(FaceChainError, match=r"^You already asked <@ben>: wait for their answer \(the question ends "
                                             r"<t:\d+:R>\)\.$"):
        ask(store, "ann", "ben", {})
    ask(store, "ann", "cat", {}, asks_per_day=2)  # another member is another pair
    store.ensure_user("dan", "person", "a person")
    with pytest.raises(FaceChainError, match=r"^You can ask for 2 pictures together a day: try again tomorrow\.$"):
        ask(store, "ann", "dan", {}, asks_per_day=2)
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1, seconds=5)
    expire_due(store, tomorrow + timedelta(hours=1))
    assert ask(store, "ann", "dan", {}, asks_per_day=2, now=tomorrow).outcome == "asked"


@pytest.mark.parametrize("why", ["not enrolled", "never", "refused for good"])
def test_not_enrolled_never_and_a_refusal_look_the_same_to_the_asker(members, why):
    store = members
    if why == "never":
        set_together(store, "ben", "never")
    elif why == "refused for good":
        answer(store, ask(store, "ann", "ben", {}).request.id, "ben", allow=False, refuse_for_good=True)
    moment = datetime.now(timezone.utc)
    asked = ask(store, "ann", "ben", {}, ready=why != "not enrolled", now=moment)
    request = asked.request
    # The same outcome as a real question, declined after a person's kind of wait, never at once.
    assert asked.outcome == "asked" and request.silent and request.state == "asked"
    wait = (datetime.fromisoformat(request.expires_at) - moment).total_seconds()
    assert SILENT_WAIT[0] - 1 <= wait <= SILENT_WAIT[1] + 1
    with pytest.raises(FaceChainError, match="This request is not for you"):  # nobody can answer it
        answer(store, request.id, "ben", allow=True)
    assert expire_due(store, moment + timedelta(seconds=SILENT_WAIT[0] - 2)) == []
    [declined] = expire_due(store, moment + timedelta(seconds=SILENT_WAIT[1] + 2))
    assert declined.state == "declined" and declined.id == request.id  # told NOT_ALLOWED, as a decline is
    assert NOT_ALLOWED == "not allowed"


def record_together(store, settings, partner_choice: str, cancel: bool = False):
    """The together job's record step, with the partner's choice as it is when the pictures are done."""
    from engine.generation.portrait import DrawnPortraits
    from engine.jobs.together_runner import TOGETHER_RUNNERS, TogetherInputs, TogetherOutputs
    from engine.postprocess import RankedPortrait

    queue = SqliteJobQueue(store, settings)
    set_together(store, "ben", "always")
    job = queue.enqueue("together", "ann", {"with": "ben"})
    set_together(store, "ben", partner_choice)  # changed while the picture was drawn
    job = queue.claim("worker")  # running, as it is when its pictures are done
    if cancel:
        queue.cancel(job.id)
    worker = SimpleNamespace(store=store, queue=queue, settings=settings)
    outputs = TogetherOutputs(DrawnPortraits([RankedPortrait(Image.new("RGB", (64, 64)), 1, 0.5)], None, 0))
    inputs = TogetherInputs([], None, None, None, None, 1, False)
    with store.transaction():  # as run_job_with records: in one transaction
        return TOGETHER_RUNNERS["together"].record(worker, job, inputs, outputs)


def test_consent_and_cancellation_are_read_again_in_the_transaction_that_records_the_picture(members, settings):
    from engine.jobs.job_types import JobCancelled

    store = members
    with pytest.raises(FaceChainError, match="This picture can't be drawn: not allowed"):
        record_together(store, settings, "never")
    assert store.db["portraits"].count == 0
    with pytest.raises(JobCancelled):
        record_together(store, settings, "always", cancel=True)
    assert store.db["portraits"].count == 0
    result = record_together(store, settings, "always")
    assert len(result["portraits"]) == 1 and store.db["portraits"].count == 1
    store.delete_user("ben")  # a forget after the last step still wins: the picture goes with him
    assert store.db["portraits"].count == 0


def test_a_brought_photo_stays_while_its_question_or_job_needs_it(members, settings):
    store = members
    folder = settings.data_dir / "tmp" / "enroll-ann-1"
    folder.mkdir(parents=True)
    photo = folder / "photo.upload"
    photo.write_bytes(b"jpeg")
    stale = folder / "other.upload"
    stale.write_bytes(b"jpeg")
    two_days_ago = time.time() - 2 * 86400
    for path in (photo, stale):
        os.utime(path, (two_days_ago, two_days_ago))
    request = ask(store, "ann", "ben", {"upload": str(photo)}).request
    assert delete_temp_files(store, settings) == 1 and photo.exists() and not stale.exists()
    answer(store, request.id, "ben", allow=False)  # the question ended: the photo is no longer needed
    assert delete_temp_files(store, settings) == 1 and not photo.exists()

    queued = SqliteJobQueue(store, settings).enqueue("swap", "ann", {"upload": str(photo)})
    photo.write_bytes(b"jpeg")
    os.utime(photo, (two_days_ago, two_days_ago))
    assert delete_temp_files(store, settings) == 0 and photo.exists()  # its job has not run yet
    assert queued.state == "queued"
