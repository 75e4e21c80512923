"""The cluster's settings and the owner's messages, without starting a Ray cluster."""

from __future__ import annotations

import json
import sys

import pytest

from engine.cli import main
from engine.config import load_settings
from engine.errors import SettingsError
from engine.jobs.cluster import address
from engine.jobs.cluster.address import check_address, check_node_addresses


@pytest.fixture(autouse=True)
def no_local_ray_cluster(monkeypatch, tmp_path):
    """`auto` as on a machine that joined no cluster, whatever this one did before."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(address, "CURRENT_CLUSTER_FILE", tmp_path / "ray_current_cluster")


@pytest.mark.parametrize("value", ["127.0.0.1:6379", "localhost:6379", "10.1.2.3:6379", "172.16.0.2:6379",
                                   "100.101.102.103:6379", "[::1]:6379", "auto"])
def test_loopback_private_and_vpn_addresses_are_accepted(value):
    check_address(value, allow_public=False)


def test_a_public_address_is_refused_unless_allowed():
    with pytest.raises(SettingsError, match="not a private address.*RAY_AUTH_MODE=token.*FACECHAIN_RAY_ALLOW_PUBLIC"):
        check_address("8.8.8.8:6379", allow_public=False)
    check_address("8.8.8.8:6379", allow_public=True)


@pytest.mark.parametrize("value", ["ray://192.168.0.7:10001", "ray://1.1.1.1:10001"])
def test_a_ray_client_address_is_refused_saying_why(value):
    for allow_public in (False, True):
        with pytest.raises(SettingsError, match=r"Ray Client address \(ray://\), which cannot stream.*host:port"):
            check_address(value, allow_public=allow_public)


def test_auto_is_checked_as_the_address_ray_will_use(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_ADDRESS", "8.8.8.8:6379")
    with pytest.raises(SettingsError, match=r"auto \(which is 8.8.8.8:6379\) reaches 8.8.8.8"):
        check_address("auto", allow_public=False)
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.2:10001")
    with pytest.raises(SettingsError, match="Ray Client address"):
        check_address("auto", allow_public=False)
    monkeypatch.delenv("RAY_ADDRESS")
    address.CURRENT_CLUSTER_FILE.write_text("1.1.1.1:6379")  # what `ray start --address` wrote here
    with pytest.raises(SettingsError, match="reaches 1.1.1.1"):
        check_address("auto", allow_public=False)
    address.CURRENT_CLUSTER_FILE.write_text("10.0.0.2:6379")
    check_address("auto", allow_public=False)


def test_nodes_at_public_addresses_are_refused_after_connecting():
    check_node_addresses(["10.0.0.2", "127.0.0.1", "100.64.1.2"], allow_public=False)
    with pytest.raises(SettingsError, match="nodes at 8.8.4.4, which are not private.*no job is sent"):
        check_node_addresses(["10.0.0.2", "8.8.4.4"], allow_public=False)
    check_node_addresses(["8.8.4.4"], allow_public=True)


def test_an_address_that_is_not_one_says_what_to_write():
    with pytest.raises(SettingsError, match="not a Ray address: use host:port"):
        check_address("://", allow_public=False)
    with pytest.raises(SettingsError, match="does not resolve"):
        check_address("no-such-host.invalid:6379", allow_public=False)


def test_the_worker_refuses_a_public_cluster_address_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FACECHAIN_RAY_ADDRESS", "8.8.8.8:6379")
    assert main(["worker", "--exit-when-idle", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: FACECHAIN_RAY_ADDRESS=8.8.8.8:6379") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_without_ray_installed_the_owner_is_told_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FACECHAIN_RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the cluster extra were not installed
    for command in (["worker"], ["cluster", "status"]):
        assert main(command) == 2
        assert "pip install -e '.[cluster]'" in capsys.readouterr().err


def test_cluster_status_with_the_cluster_off(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(tmp_path / "data"))
    assert main(["cluster", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"enabled": False, "jobs_running": []}
    assert main(["cluster", "status"]) == 0
    assert "The cluster is off" in capsys.readouterr().out


def test_cluster_status_and_doctor_say_when_no_cluster_answers(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FACECHAIN_RAY_ADDRESS", "127.0.0.1:1")  # nothing listens there
    assert main(["cluster", "status"]) == 2
    err = capsys.readouterr().err
    assert "No Ray cluster answers at 127.0.0.1:1" in err and "ray start --head" in err
    main(["doctor", "--json"])
    checks = {check["name"]: check for check in json.loads(capsys.readouterr().out)}
    cluster = checks["cluster"]
    assert cluster["status"] == "fail" and "No Ray cluster answers" in cluster["detail"] and cluster["fix"]
    auth = checks["cluster authentication"]
    assert auth["status"] == "warn" and auth["detail"].startswith("off") and "RAY_AUTH_MODE=token" in auth["fix"]
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    main(["doctor", "--json"])
    auth = {check["name"]: check for check in json.loads(capsys.readouterr().out)}["cluster authentication"]
    assert auth == {"name": "cluster authentication", "status": "ok", "detail": "on (RAY_AUTH_MODE=token)", "fix": ""}


def test_a_dispatcher_whose_cluster_does_not_answer_tells_the_owner_and_jobs_wait(tmp_path):
    import threading
    import time

    from engine.config import load_settings
    from engine.jobs.cluster.dispatcher import Dispatcher

    settings = load_settings(_env_file=None, data_dir=tmp_path / "data", ray_address="127.0.0.1:1")
    dispatcher = Dispatcher(settings, "dispatcher")
    job = dispatcher.worker.queue.enqueue("train", "ann", {})
    loop = threading.Thread(target=dispatcher.run, daemon=True)
    loop.start()
    store = dispatcher.worker.store
    deadline = time.monotonic() + 30
    while not list(store.db["setup_problems"].rows_where("resolved_at is null")) and time.monotonic() < deadline:
        time.sleep(0.1)
    [problem] = store.db["setup_problems"].rows_where("resolved_at is null")
    assert "No Ray cluster answers at 127.0.0.1:1" in problem["message"] and "ray start --head" in problem["message"]
    assert dispatcher.worker.queue.get(job.id).state == "queued"  # the member's job waits for the owner's fix
    dispatcher.stopping.set()
    loop.join(timeout=15)
    assert not loop.is_alive()


class FakeSlot:
    def __init__(self, ready: bool) -> None:
        self.ready, self.busy_with, self.adapters, self.name = ready, None, [], "facechain-gpu-0"


class FakePool:
    """The dispatcher's actor pool without Ray: actors that answer or not, as the test says."""

    def __init__(self, *ready: bool) -> None:
        self.slots = [FakeSlot(r) for r in ready]

    def any_ready(self) -> bool:
        return any(slot.ready for slot in self.slots)

    def free(self) -> bool:
        return False

    def refresh(self) -> bool:
        return False

    def wanted(self) -> int:
        return len(self.slots)


def test_a_cluster_whose_actors_never_answer_is_the_owners_problem_within_a_minute(tmp_path):
    from engine.jobs.cluster import dispatcher as module
    from engine.jobs.queue import WAITING_FOR_SETUP
    from engine.store.setup_problems import open_setup_problems

    settings = load_settings(_env_file=None, data_dir=tmp_path / "data", ray_address="127.0.0.1:6379")
    dispatcher = module.Dispatcher(settings, "dispatcher")
    queue = dispatcher.worker.queue
    job = queue.enqueue("generate", "ann", {"style": "anime"})
    dispatcher.pool = FakePool(False, False)  # two actors asked for; neither answers
    dispatcher._check_serving()
    assert open_setup_problems(queue.store) == [] and queue.get(job.id).progress_text == "queued"
    dispatcher._no_actor_since -= module.NO_ACTOR_SECONDS + 1  # a minute later
    dispatcher._check_serving()
    [problem] = open_setup_problems(queue.store)
    assert problem.key == "cluster" and "None of the cluster's 2 GPU actors has answered for 60 s" in problem.message
    assert queue.get(job.id).progress_text == WAITING_FOR_SETUP  # the member reads that it waits
    later = queue.enqueue("generate", "bob", {"style": "anime"})
    dispatcher._next_hold_at -= module.RECONNECT_SECONDS  # ten seconds later
    dispatcher._check_serving()  # jobs queued meanwhile show it too; still one incident
    assert queue.get(later.id).progress_text == WAITING_FOR_SETUP and len(open_setup_problems(queue.store)) == 1
    dispatcher.pool.slots[0].ready = True  # a GPU machine is back
    dispatcher._check_serving()
    assert open_setup_problems(queue.store) == []
    assert {queue.get(j.id).progress_text for j in (job, later)} == {"queued"}


def test_the_dispatchers_loop_survives_an_error_and_goes_on(tmp_path, monkeypatch):
    """A locked database or a Ray hiccup in one round ends nothing: every job in flight goes on."""
    import sqlite3
    import threading

    from engine.jobs.cluster import dispatcher as module

    settings = load_settings(_env_file=None, data_dir=tmp_path / "data", ray_address="127.0.0.1:6379")
    dispatcher = module.Dispatcher(settings, "dispatcher")
    monkeypatch.setattr(dispatcher, "connect", lambda: True)
    dispatcher.pool = FakePool(True)
    monkeypatch.setattr(module, "LOOP_ERROR_SECONDS", 0.05)
    rounds = []

    def tick():
        rounds.append(len(rounds))
        if len(rounds) == 2:
            raise sqlite3.OperationalError("database is locked")
        if len(rounds) == 5:
            dispatcher.stopping.set()
        return True

    monkeypatch.setattr(dispatcher, "_tick", tick)
    loop = threading.Thread(target=dispatcher.run, kwargs={"poll_seconds": 0.01})
    loop.start()
    loop.join(timeout=30)
    assert not loop.is_alive() and rounds == [0, 1, 2, 3, 4]


def test_an_abandoned_stream_stops_the_actors_work(monkeypatch):
    """When the dispatcher stops reading an actor's events before "done" or "error" (here a checkpoint
    that cannot be written), the actor's work is cancelled and asked to stop, never left running."""
    from engine.jobs.cluster import dispatcher as module

    events = iter([("progress", 0.1, "training 1/10"), ("checkpoint", b"weights")])
    cancelled, stopped = [], []
    monkeypatch.setattr(module.ray, "wait", lambda refs, timeout: (refs, []))
    monkeypatch.setattr(module.ray, "get", lambda ref: ref)
    monkeypatch.setattr(module.ray, "cancel", lambda ref: cancelled.append(ref))

    class Context:
        def update(self, progress, text):
            pass

        def cancelled(self):
            return False

        def should_stop(self):
            return False

        def save_checkpoint(self, data):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        module.follow(events, Context(), lambda: stopped.append(True), "actor@1.2.3.4")
    assert cancelled == [events] and stopped == [True]

    finished = iter([("progress", 0.5, "half"), ("done", {"ok": True}, 0.25)])  # a normal end: nothing to stop
    cancelled.clear(), stopped.clear()
    assert module.follow(finished, Context(), lambda: stopped.append(True), "actor") == ({"ok": True}, 0.25)
    assert cancelled == [] and stopped == []


def test_an_actor_sends_back_the_latest_progress_twice_a_second_not_every_step(monkeypatch):
    """Every event an actor streams costs both ends CPU: a job's 200 steps send a few progress events (the
    latest), then its outputs, the checkpoints all of them."""
    import threading
    import time

    from engine.jobs.cluster import actor as module

    def compute_job(kind, models, inputs, context, low_memory):
        for step in range(200):
            context.update(step / 200, f"generating {step}")
            if step == 100:
                context.save_checkpoint(b"weights")
            time.sleep(0.004)
        return {"done": kind}

    class Runtime:
        def is_canceled(self):
            return False

    class Models:
        on_download = None

    monkeypatch.setattr(module, "compute_job", compute_job)
    monkeypatch.setattr(module.ray, "get_runtime_context", Runtime)
    monkeypatch.setattr("engine.jobs.worker.release_cached_memory", lambda: None)
    actor = module.GpuActor.__new__(module.GpuActor)
    actor.models, actor._stops, actor._working, actor._to_unload, actor.job_id = Models(), {}, threading.Lock(), set(), None
    run = getattr(module.GpuActor.run, "__wrapped__", module.GpuActor.run)
    events = list(run(actor, 7, "generate", None))
    kinds = [event[0] for event in events]
    assert kinds.count("checkpoint") == 1 and events[-1][:2] == ("done", {"done": "generate"})
    assert 0.8 <= events[-1][2] < 30  # the seconds it computed, for the dispatcher's figures
    assert 1 <= kinds.count("progress") <= 4, kinds  # about 0.8 s of steps: at most one every 0.5 s
