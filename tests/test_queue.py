"""The persistent job queue on a real SQLite file."""

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from engine.errors import FaceChainError
from engine.jobs.queue import LeaseLost, QueueLimit, SqliteJobQueue, sqlite_queue
from engine.store import Store


@pytest.fixture
def queue(store, settings) -> SqliteJobQueue:
    return SqliteJobQueue(store, settings.model_copy(update={"max_queued_portraits_per_user": 10}))


class Clock:
    """The queue's clock, moved by hand: leases and backoffs expire without a test sleeping for them."""

    def __init__(self) -> None:
        self.moment = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(sqlite_queue, "now", clock)
    return clock


def drain(queue, worker="w"):
    order = []
    while (job := queue.claim(worker)) is not None:
        order.append((job.user_id, job.params.get("n")))
        queue.complete(job.lease, {})
    return order


def test_jobs_run_round_robin_across_users_and_in_order_within_one(queue):
    for n in range(5):
        queue.enqueue("generate", "ann", {"n": n})
    for n in range(2):
        queue.enqueue("generate", "bob", {"n": n})
    queue.enqueue("generate", "cy", {"n": 0})
    assert drain(queue) == [("ann", 0), ("bob", 0), ("cy", 0), ("ann", 1), ("bob", 1), ("ann", 2), ("ann", 3), ("ann", 4)]


def test_a_user_served_recently_waits_behind_a_newcomer(queue):
    queue.enqueue("generate", "ann", {"n": 0})
    drain(queue)
    queue.enqueue("generate", "ann", {"n": 1})
    queue.enqueue("generate", "bob", {"n": 0})
    assert drain(queue) == [("bob", 0), ("ann", 1)]


def test_fair_order_with_many_users(queue):
    users = [f"u{i}" for i in range(12)]
    for n in range(3):
        for user in users:
            queue.enqueue("generate", user, {"n": n})
    order = drain(queue)
    # Every user's first job before anyone's second, every second before any third.
    assert [n for _, n in order] == [0] * 12 + [1] * 12 + [2] * 12


def test_per_user_limits_and_the_guild_quota(store, settings):
    queue = SqliteJobQueue(store, settings.model_copy(update={"max_queued_portraits_per_user": 2, "guild_daily_quota": 4}))
    queue.enqueue("train", "ann")
    with pytest.raises(QueueLimit, match="already training"):
        queue.enqueue("train", "ann")
    queue.enqueue("generate", "ann", guild_id="g1")
    queue.enqueue("swap", "ann", guild_id="g1")
    for kind in ("generate", "swap", "upscale"):  # every request that makes pictures counts
        with pytest.raises(QueueLimit, match="2 portrait requests waiting"):
            queue.enqueue(kind, "ann", guild_id="g1")
    queue.enqueue("generate", "bob", guild_id="g1")
    queue.enqueue("generate", "cy", guild_id="g1")
    with pytest.raises(QueueLimit, match="used its 4 jobs for today"):
        queue.enqueue("generate", "dee", guild_id="g1")
    queue.enqueue("generate", "dee", guild_id="g2")  # quotas are per server
    with pytest.raises(FaceChainError, match="Unknown job kind"):
        queue.enqueue("mine-bitcoin", "ann")


def test_two_workers_never_claim_the_same_job(settings):
    writer = SqliteJobQueue(Store(settings.data_dir), settings.model_copy(update={"max_queued_portraits_per_user": 100}))
    for n in range(60):
        writer.enqueue("generate", f"u{n % 7}", {"n": n})
    claimed: dict[str, list[int]] = {}

    def work(name):
        queue = SqliteJobQueue(Store(settings.data_dir), settings)  # its own connection, like a process
        claimed[name] = []
        while (job := queue.claim(name)) is not None:
            claimed[name].append(job.id)
            queue.complete(job.lease, {})

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job for jobs in claimed.values() for job in jobs]
    assert sorted(every) == sorted(set(every)) and len(every) == 60


def test_an_expired_lease_returns_the_job_and_the_old_worker_loses_it(queue, settings, clock):
    queue.settings = settings.model_copy(update={"job_lease_seconds": 2})
    job = queue.enqueue("train", "ann")
    dead = queue.claim("dead")
    assert dead.id == job.id
    assert queue.claim("alive") is None
    clock.advance(2.1)
    again = queue.claim("alive")
    assert again.id == job.id and again.attempts == 2 and again.started_at == queue.get(job.id).started_at
    with pytest.raises(LeaseLost):
        queue.complete(dead.lease, {})
    assert queue.complete(again.lease, {"ok": True}).state == "done"


def test_heartbeats_keep_the_lease_and_carry_progress(queue, settings, clock):
    queue.settings = settings.model_copy(update={"job_lease_seconds": 2})
    job = queue.enqueue("train", "ann")
    lease = queue.claim("w").lease
    for step in range(3):
        clock.advance(1.5)
        assert queue.heartbeat(lease, progress=step / 3, text=f"training {step}") is False
    assert queue.reap_expired() == 0
    assert queue.get(job.id).progress_text == "training 2"


def test_transient_failures_retry_with_backoff_then_fail(queue, settings, clock):
    queue.settings = settings.model_copy(update={"job_max_attempts": 2, "job_retry_seconds": 0.5})
    job = queue.enqueue("generate", "ann")
    first = queue.claim("w")
    assert first.id == job.id
    retried = queue.fail(first.lease, "The GPU ran out of memory.", transient=True, params_update={"low_memory": True})
    assert retried.state == "queued" and retried.params["low_memory"] is True
    assert retried.progress_text == "retrying in 0 s"
    assert queue.claim("w") is None  # waiting out the backoff
    clock.advance(0.6)
    second = queue.claim("w")
    assert second.attempts == 2
    final = queue.fail(second.lease, "The GPU ran out of memory.", transient=True)
    assert final.state == "failed"
    assert final.error == "The GPU ran out of memory. It failed 2 times, so it was stopped: please ask again later."


def test_a_stale_claim_can_do_nothing_even_under_the_same_worker_id(queue, settings, clock):
    """A dispatcher frozen past its lease claims the job again under its one worker id: the frozen
    thread's claim can no longer heartbeat, record, finish, fail or release it."""
    queue.settings = settings.model_copy(update={"job_lease_seconds": 2})
    job = queue.enqueue("train", "ann")
    stale = queue.claim("dispatcher")
    clock.advance(3)  # frozen past the lease
    current = queue.claim("dispatcher")
    assert current.id == stale.id == job.id and current.lease.token != stale.lease.token
    for act in (lambda: queue.heartbeat(stale.lease), lambda: queue.check_lease(stale.lease),
                lambda: queue.keep_result(stale.lease, {}), lambda: queue.complete(stale.lease, {}),
                lambda: queue.fail(stale.lease, "x", transient=True), lambda: queue.release(stale.lease),
                lambda: queue.mark_cancelled(stale.lease), lambda: queue.wait_for_setup(stale.lease, 1.0)):
        with pytest.raises(LeaseLost):
            act()
    assert queue.get(job.id).state == "running"  # still the current claim's, untouched
    assert queue.complete(current.lease, {"version": 1}).state == "done"


def test_bad_input_is_never_retried(queue):
    job = queue.enqueue("train", "ann")
    claimed = queue.claim("w")
    assert claimed.id == job.id
    assert queue.fail(claimed.lease, "User ann has no enrolled selfies").state == "failed"


def test_cancel_waiting_and_running_jobs(queue):
    waiting = queue.enqueue("generate", "ann")
    assert queue.cancel(waiting.id, user_id="ann").state == "cancelled"
    running = queue.enqueue("train", "ann")
    lease = queue.claim("w").lease
    with pytest.raises(FaceChainError, match="No job .* of yours"):
        queue.cancel(running.id, user_id="bob")
    assert queue.cancel(running.id, user_id="ann").cancel_requested
    assert queue.cancel_was_requested(running.id)  # the worker's heartbeat thread looks every second
    assert queue.heartbeat(lease) is True
    assert queue.mark_cancelled(lease).state == "cancelled"
    with pytest.raises(FaceChainError, match="already finished"):
        queue.cancel(running.id)


def test_a_portrait_can_wait_for_the_training_in_progress(queue):
    train = queue.enqueue("train", "ann")
    waits = queue.enqueue("generate", "ann", {"wait_for_training": True})
    now = queue.enqueue("generate", "ann", {"wait_for_training": False})
    training = queue.claim("w")
    assert training.id == train.id
    assert queue.claim("w").id == now.id  # uses the latest finished model at once
    assert queue.claim("w") is None
    queue.complete(training.lease, {})
    assert queue.claim("w").id == waits.id


def test_a_portrait_waiting_for_the_training_waits_for_the_enrolment_that_queues_it(queue):
    """On a cluster, another GPU is free while a member's enrolment runs: their portrait must not start before
    the training it waits for is queued (it would fail: no face model yet)."""
    enroll = queue.enqueue("enroll", "ann", {"train_after": True})
    waits = queue.enqueue("generate", "ann", {"wait_for_training": True})
    enrolling = queue.claim("gpu-1")
    assert enrolling.id == enroll.id
    assert queue.claim("gpu-2") is None
    queue.complete(enrolling.lease, {})  # no training came of it (too few photos passed): the portrait says so
    assert queue.claim("gpu-2").id == waits.id


def test_position_and_eta(queue):
    jobs = [queue.enqueue("generate", user) for user in ("ann", "bob", "cy")]
    assert [queue.position(j.id).position for j in jobs] == [1, 2, 3]
    assert queue.position(jobs[2].id).eta_seconds == pytest.approx(90)  # 3 x the typical 30 s
    lease = queue.claim("w").lease
    assert queue.position(jobs[0].id).position == 0
    assert queue.position(jobs[1].id).position == 1
    queue.complete(lease, {})
    assert queue.position(jobs[0].id) is None


def test_release_on_shutdown_does_not_count_as_an_attempt(queue):
    job = queue.enqueue("train", "ann")
    released = queue.release(queue.claim("w").lease)
    assert released.id == job.id and released.state == "queued" and released.attempts == 0


def test_undelivered_results_are_listed_until_marked(queue):
    job = queue.enqueue("generate", "ann")
    queue.complete(queue.claim("w").lease, {"portraits": []})
    assert [j.id for j in queue.undelivered()] == [job.id]
    queue.mark_delivered(job.id)
    assert queue.undelivered() == []


def test_jobs_cli_lists_and_cancels(capsys, settings, monkeypatch):
    import json

    from engine.cli import main

    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(settings.data_dir))
    queue = SqliteJobQueue(Store(settings.data_dir), settings)
    first, second = queue.enqueue("train", "ann"), queue.enqueue("generate", "bob", {"style": "anime"})
    assert main(["jobs", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(j["id"], j["state"], j["position"]) for j in listed] == [(second.id, "queued", 2), (first.id, "queued", 1)]
    assert listed[0]["params"] == {"style": "anime"} and listed[0]["eta_seconds"] > 0
    assert main(["jobs", "cancel", str(first.id)]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["jobs", "cancel", "999"]) == 2
    assert capsys.readouterr().err == "error: No job 999.\n"
    assert main(["jobs", "list", "--state", "cancelled", "--json"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [first.id]


def test_a_long_reader_never_blocks_the_queue_and_a_long_writer_only_delays_it(store, settings):
    import sqlite3

    queue = SqliteJobQueue(store, settings)
    reader = sqlite3.connect(store.db_path, isolation_level=None)
    reader.execute("begin")
    reader.execute("select count(*) from jobs").fetchone()  # holds a read snapshot, e.g. a backup or a report
    started = time.monotonic()
    job = queue.enqueue("generate", "ann", {})
    claimed = queue.claim("w")
    queue.complete(claimed.lease, {})
    assert queue.get(job.id).state == "done" and time.monotonic() - started < 1.0
    reader.execute("commit")

    writer = sqlite3.connect(store.db_path, isolation_level=None, check_same_thread=False)
    writer.execute("begin immediate")  # someone holds the write lock for a while
    threading.Timer(1.0, lambda: writer.execute("commit")).start()
    started = time.monotonic()
    queue.enqueue("generate", "bob", {})  # waits for the lock (up to 30 s), then goes through
    assert 0.8 < time.monotonic() - started < 10


def test_an_idle_claim_takes_no_write_lock(store, settings):
    """Idle workers look at the queue several times a second: with nothing to claim or take back, a look
    is a plain read, so it never waits for (or blocks) a writer."""
    import sqlite3

    queue = SqliteJobQueue(store, settings)
    writer = sqlite3.connect(store.db_path, isolation_level=None)
    writer.execute("begin immediate")  # e.g. the bot recording an enrollment
    started = time.monotonic()
    assert queue.claim("w") is None
    assert time.monotonic() - started < 1.0  # not the 30 s wait for the write lock
    writer.execute("commit")

    # Jobs that can't run yet are no work in sight either: a retry's wait, a portrait waiting for a training.
    later = queue.enqueue("generate", "bob", {})
    store.db.execute("update jobs set run_after = ? where id = ?",
                     [(datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(timespec="microseconds"), later.id])
    queue.enqueue("train", "cy", {})
    waiting = queue.enqueue("generate", "cy", {"wait_for_training": True})
    writer.execute("begin immediate")
    started = time.monotonic()
    assert queue.claim("w", kinds=("generate",)) is None
    assert time.monotonic() - started < 1.0
    writer.execute("commit")
    assert queue.get(waiting.id).state == "queued"

    job = queue.enqueue("generate", "ann", {})
    assert queue.claim("w", kinds=("generate",)).id == job.id  # with work in sight it claims as before


def test_jobs_waiting_for_the_setup_are_tried_again_together_in_the_queues_order(queue, clock):
    """A member's preview (queued first) hits a missing model: their training, which needs the same
    model, waits with it, so once the model is there the preview still goes first."""
    first, second = queue.enqueue("teaser", "u", {"style": "anime"}), queue.enqueue("train", "u")
    enroll = queue.enqueue("enroll", "u", {})  # needs no model: it does not wait
    clock.advance(0.05)  # just past a 2 s boundary: the retry is 4 s away
    claimed = queue.claim("w")
    assert claimed.id == first.id
    queue.wait_for_setup(claimed.lease, 2.0, also_kinds=("teaser", "train"))
    waiting = [queue.get(job.id) for job in (first, second)]
    assert [job.progress_text for job in waiting] == ["waiting for the bot's setup"] * 2
    assert waiting[0].attempts == 0  # waiting uses no attempt
    run_after = [row["run_after"] for row in queue.db["jobs"].rows_where("id in (?, ?)", [first.id, second.id])]
    assert run_after[0] == run_after[1]  # one moment for both
    assert queue.claim("w").id == enroll.id and queue.claim("w") is None
    clock.advance(4.0)
    assert queue.claim("w").id == first.id


def test_positions_of_many_jobs_from_one_pass_match_each_jobs_own(queue, clock):
    for n in range(4):
        for user in ("ann", "bob", "cy"):
            queue.enqueue("generate", user, {"n": n})
    queue.enqueue("teaser", "dee", {"style": "anime"})
    queue.enqueue("preview", "system", {"style": "anime"})
    queue.enqueue("train", "eve")
    running = queue.claim("w")
    queue.heartbeat(running.lease, progress=0.5)
    every = [job.id for job in queue.jobs(limit=100)]
    together = queue.positions(every)
    assert together == {job_id: queue.position(job_id) for job_id in every}
    assert together[running.id].position == 0 and together[running.id].eta_seconds == pytest.approx(15)
    # members' jobs never wait behind the teaser and preview; the teaser waits behind members' jobs only
    teaser = next(j for j in queue.jobs(limit=100) if j.kind == "teaser")
    assert together[teaser.id].position == 13
    assert queue.positions([]) == {} and queue.positions([999]) == {}


def test_typical_run_times_are_measured_again_once_a_job_of_that_kind_finishes(queue, settings, clock):
    assert queue.typical_seconds("generate") == 30.0  # before any: the typical figure
    elsewhere = SqliteJobQueue(Store(settings.data_dir), settings)  # the worker, in its own process
    elsewhere.enqueue("generate", "ann")
    claimed = elsewhere.claim("w")
    clock.advance(12)
    elsewhere.complete(claimed.lease, {})
    assert queue.typical_seconds("generate") == pytest.approx(12)  # the bot's queue sees it at once
    assert queue.typical_seconds("train") == 180.0


def test_progress_reaches_the_member_within_seconds_without_taking_the_queues_write_lock(store, settings):
    """A member's progress line moves every couple of seconds, not with the lease's beats (every 20 s by default),
    and those writes go to the progress board: the queue's database (whose write lock every enqueue, claim and
    beat waits for) is not written between beats. A row an ended claim left is never shown."""
    import sqlite3

    from engine.jobs.heartbeat import PROGRESS_EVERY_SECONDS, Heartbeat

    queue = SqliteJobQueue(store, settings)
    job = queue.enqueue("generate", "ann", {})
    claimed = queue.claim("w")
    watcher = sqlite3.connect(store.db_path)  # data_version moves when another connection commits to the file

    def commits_seen() -> int:
        return watcher.execute("pragma data_version").fetchone()[0]

    before = commits_seen()
    beat = Heartbeat(settings, claimed.lease)
    try:
        beat.update(0.4, "generating 40%")
        deadline = time.monotonic() + PROGRESS_EVERY_SECONDS + 2
        while time.monotonic() < deadline and queue.get(job.id).progress_text != "generating 40%":
            time.sleep(0.1)
        shown = queue.get(job.id)
        assert shown.progress_text == "generating 40%" and shown.progress == pytest.approx(0.4)
        assert [j.progress_text for j in queue.active_jobs("ann")] == ["generating 40%"]
        assert commits_seen() == before  # no beat yet (20 s), and progress took none of the queue's lock
        queue.cancel(job.id)
        beat.update(0.5, "generating 50%")
        deadline = time.monotonic() + PROGRESS_EVERY_SECONDS + 2
        while time.monotonic() < deadline and not beat.cancel_requested.is_set():
            time.sleep(0.1)
        assert beat.cancel_requested.is_set()
    finally:
        beat.stop()
    queue.board.write(job.id, "a claim that ended", 0.9, "generating 90%")
    assert queue.get(job.id).progress_text != "generating 90%"
