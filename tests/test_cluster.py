"""The cluster with a real Ray cluster: a head and two worker nodes that each declare one GPU (CUDA is
absent here, so the actors draw on the CPU with the tiny model). The dispatcher runs as `facechain
worker` with FACECHAIN_RAY_ADDRESS set, in its own process, as the bot would start it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster  # the cluster extra, which the test command installs

from engine.config import load_settings
from engine.jobs.queue import SqliteJobQueue
from engine.jobs.scratch import SCRATCH_NAME, process_alive
from engine.preprocess.enroll import enroll_user
from engine.store import Store
from tests.conftest import DATA, TEST_MODEL_SETTINGS, photo

# The real bot, worker processes, the cluster, the full-size model or the benchmarks: skipped by the
# edit loop's quick lane (`pytest -m "not slow"`), run by CI.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]
STEPS = 200  # the trainings a node loss, a kill or a SIGTERM interrupts at 30%
SETTINGS = {"DEVICE": "cpu", "TRAIN_RESOLUTION": 64, "TRAIN_STEPS_PER_PHOTO": 20, "PORTRAIT_SIZE": 64,
            "PORTRAIT_CANDIDATES": 2, "JOB_LEASE_SECONDS": 5, "JOB_RETRY_SECONDS": 0, "TRAINING_PREVIEWS": "false",
            "ONE_FACE_PER_MEMBER": "false"}  # several members share the test photos of one face


@pytest.fixture(scope="module")
def cluster():
    """A head (no GPU) and two GPU nodes, one CPU each (this machine has two cores)."""
    started = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        started.add_node(num_cpus=1, num_gpus=1)
    started.wait_for_nodes()
    yield started
    started.shutdown()


@pytest.fixture
def two_gpu_nodes(cluster):
    """The cluster with exactly two live GPU nodes (a test may remove one; the next one gets it back)."""
    while len(gpu_nodes(cluster)) < 2:
        cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    return cluster


def gpu_nodes(cluster) -> list:
    return list(cluster.worker_nodes)  # every node but the head declares one GPU


@pytest.fixture
def setup(two_gpu_nodes, tiny_model, tmp_path):
    values = {**SETTINGS, "DATA_DIR": tmp_path / "data", "BASE_MODEL": str(tiny_model),
              "RAY_ADDRESS": two_gpu_nodes.address}
    settings = load_settings(_env_file=None, **{k.lower(): v for k, v in values.items()})
    store = Store(settings.data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECHAIN_")}
    env.update({f"FACECHAIN_{k}": str(v) for k, v in {**TEST_MODEL_SETTINGS, **values}.items()})
    env["PYTHONPATH"] = str(ROOT)
    yield settings, SqliteJobQueue(store, settings), env, two_gpu_nodes
    store.close()


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_dispatcher_left_behind():
    """A test that fails midway leaves no dispatcher holding the cluster's GPUs for the next one."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(timeout=60)


def dispatcher(env, name: str | None = None, idle: float | None = None, **extra: str) -> subprocess.Popen:
    """`facechain worker` (a dispatcher, as FACECHAIN_RAY_ADDRESS is set); unnamed, it is <host>-<pid>."""
    command = [sys.executable, "-m", "engine.cli", "worker", *(["--id", name] if name else [])]
    if idle is not None:
        command += ["--exit-when-idle", str(idle)]
    process = subprocess.Popen(command, env={**env, **extra}, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    STARTED.append(process)
    return process


def actors_ready(process: subprocess.Popen, count: int, timeout: float = 120) -> None:
    """Read the dispatcher's log until `count` actors said they are ready."""
    ready, deadline = 0, time.monotonic() + timeout
    while ready < count:
        line = process.stdout.readline()
        assert line and time.monotonic() < deadline, f"only {ready} actors became ready"
        ready += "cluster: actor ready" in line


def stop(process: subprocess.Popen) -> str:
    """SIGTERM (as the bot stops its worker) once the test has what it waited for: no idle wait."""
    process.send_signal(signal.SIGTERM)
    return finish(process, timeout=60)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def uploads(settings, user: str, names: list[str]) -> list[dict]:
    folder = settings.data_dir / "tmp" / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in names:
        target = folder / f"{user}-{name.replace('/', '_')}"
        shutil.copy(DATA / name, target)
        entries.append({"name": name, "path": str(target)})
    return entries


def node_of(ran_on: str) -> str:
    """The node id in a job's ran_on ("<actor>@<ip> node <id>")."""
    return ran_on.rsplit("node ", 1)[1]


def enrolled(settings, queue, analyzer, *users: str) -> None:
    for user in users:
        enroll_user(queue.store, analyzer, settings, user, [photo(p) for p in OBAMA], subject="man")


def test_three_members_across_both_nodes_then_a_node_lost_mid_training(setup):
    """Three members enroll, train and get portraits, spread over both GPU nodes with adapter affinity;
    then the node running a retraining is lost: it resumes on the other node from its checkpoint."""
    settings, queue, env, cluster = setup
    process = dispatcher(env)
    actors_ready(process, 2)  # then the first two enrollments go one to each actor
    users = ("ann", "bob", "cy")
    enrolls = {user: queue.enqueue("enroll", user, {"uploads": uploads(settings, user, OBAMA), "subject": "man",
                                                    "train_after": True}) for user in users}
    portraits = {user: queue.enqueue("generate", user, {"style": "anime", "count": 1, "seed": 5,
                                                        "wait_for_training": True}) for user in users}
    wait_for(lambda: all(job.finished for job in queue.jobs(limit=100)) and len(queue.jobs()) == 9, 300,
             "every enrollment, training and portrait")
    # One more portrait each, while both actors are free: each goes to the actor holding that face model.
    again = {}
    for user in users:
        again[user] = queue.enqueue("generate", user, {"style": "anime", "count": 1, "seed": 6})
        wait_for(lambda: queue.get(again[user].id).finished, 120, f"{user}'s second portrait")

    jobs = queue.jobs(limit=100)
    assert {job.kind for job in jobs} == {"enroll", "train", "generate"}
    for job in jobs:
        assert job.state == "done" and job.attempts == 1, job  # each ran once, nothing failed
    for user in users:
        assert len(queue.get(enrolls[user].id).result["accepted"]) == 3
        [model] = queue.store.face_models(user)
        assert model.status == "ready" and (model.path / "pytorch_lora_weights.safetensors").is_file()
        [saved] = queue.get(portraits[user].id).result["portraits"]
        assert Path(saved["path"]).is_file() and Path(saved["path"]).is_relative_to(settings.data_dir)
        rows = list(queue.store.db["portraits"].rows_where("job_id = ?", [portraits[user].id]))
        assert len(rows) == 1  # recorded once
        assert queue.get(again[user].id).ran_on == queue.get(portraits[user].id).ran_on  # adapter affinity
    assert not list((settings.data_dir / "tmp").rglob("*.jpg"))  # the uploads were consumed
    assert len({node_of(job.ran_on) for job in jobs}) == 2, [job.ran_on for job in jobs]  # both GPU nodes worked

    retraining = queue.enqueue("train", "ann", {"steps": STEPS})
    running = wait_for(lambda: (j := queue.get(retraining.id)).progress >= 0.3 and j, 180,
                       "the retraining to pass 30%")
    lost_node = next(node for node in gpu_nodes(cluster) if node.node_id.startswith(node_of(running.ran_on)))
    cluster.remove_node(lost_node)
    wait_for(lambda: queue.get(retraining.id).finished, 180, "the retraining to finish on the other node")
    stop(process)
    done = queue.get(retraining.id)
    assert done.state == "done" and done.attempts == 2, done  # the lost run counts as an attempt
    assert done.result["resumed_from_step"] >= 0.2 * STEPS  # its step count went on from the last checkpoint
    assert node_of(done.ran_on) != node_of(running.ran_on)
    assert [(m.version, m.status) for m in queue.store.face_models("ann")] == [(2, "ready"), (1, "superseded")]


def test_a_killed_dispatcher_loses_nothing_and_a_stopped_one_hands_its_training_back(setup, analyzer):
    """SIGKILL: the next dispatcher takes the dead one's jobs back and resumes from the last checkpoint.
    SIGTERM (as the bot stops its worker): the training is checkpointed and handed back, no attempt used."""
    settings, queue, env, cluster = setup
    enrolled(settings, queue, analyzer, "ann", "bob")
    training = queue.enqueue("train", "ann", {"steps": STEPS})
    first = dispatcher(env)
    wait_for(lambda: queue.get(training.id).progress >= 0.3, 180, "the training to pass 30%")
    first.send_signal(signal.SIGKILL)  # no checkpoint on the way out, its actors die with it
    first.wait(timeout=30)
    assert queue.get(training.id).state == "running"  # still leased to the dead dispatcher
    other = queue.enqueue("train", "bob", {"steps": 5})

    second = dispatcher(env)  # takes the dead one's job back at once (same host, its pid gone)
    wait_for(lambda: queue.get(training.id).finished and queue.get(other.id).finished, 180, "both trainings")
    done = queue.get(training.id)
    assert done.state == "done" and done.attempts == 2
    assert done.result["resumed_from_step"] >= 0.2 * STEPS  # from the checkpoint the dead one had sent back
    assert queue.get(other.id).state == "done"
    assert [(m.version, m.status) for m in queue.store.face_models("ann")] == [(1, "ready")]

    retraining = queue.enqueue("train", "bob", {"steps": STEPS})
    wait_for(lambda: queue.get(retraining.id).progress >= 0.3, 180, "bob's retraining to pass 30%")
    second.send_signal(signal.SIGTERM)  # as the bot stops its worker
    finish(second, timeout=60)
    handed_back = queue.get(retraining.id)
    assert handed_back.state == "queued" and handed_back.attempts == 0, handed_back  # no attempt used
    [unfinished, ready] = queue.store.face_models("bob")
    assert ready.status == "ready" and unfinished.status == "training"
    assert (unfinished.path.parent / f"{unfinished.path.name}.partial" / "checkpoint.pt").is_file()


def test_a_cancelled_or_forgotten_training_stops_and_frees_the_actor_for_the_next_job(setup, analyzer):
    """A member cancels a running training; later another member is forgotten mid-training (the
    dispatcher stops reading: no job left to record into). Either way the actor stops the work too,
    so the next member's job, waiting for the one actor, runs at once."""
    settings, queue, env, cluster = setup
    enrolled(settings, queue, analyzer, "ann", "bob", "cy", "dee")
    long_training = queue.enqueue("train", "ann", {"steps": 5000})
    next_job = queue.enqueue("train", "bob", {"steps": 5})
    process = dispatcher(env, FACECHAIN_RAY_ACTORS="1")  # one actor: bob waits for it
    wait_for(lambda: queue.get(long_training.id).progress > 0.002, 180, "the long training to start")
    cluster_status_shows(env, long_training.id)  # while it runs: the owner's view of the cluster
    queue.cancel(long_training.id, "ann")
    wait_for(lambda: queue.get(next_job.id).finished, 120, "bob's training on the freed actor")
    cancelled = queue.get(long_training.id)
    assert cancelled.state == "cancelled", cancelled
    assert queue.get(next_job.id).state == "done"  # the actor was free again
    assert queue.get(next_job.id).ran_on.split("@")[0] == cancelled.ran_on.split("@")[0]

    forgotten = queue.enqueue("train", "cy", {"steps": 5000})
    wait_for(lambda: queue.get(forgotten.id).progress >= 0.02, 180, "cy's training to be under way")
    queue.store.delete_user("cy")  # /facechain forget, mid-training
    after = queue.enqueue("train", "dee", {"steps": 5})
    wait_for(lambda: queue.get(after.id).state == "done", 90, "dee's training on the freed actor")
    stop(process)
    assert queue.get(forgotten.id) is None and not queue.store.face_models("cy")


def test_a_frozen_dispatcher_runs_nothing_twice_and_a_forgotten_face_leaves_the_actors(setup, analyzer):
    """SIGSTOP past the lease while a training runs on an actor, then SIGCONT: the dispatcher claims the
    job again under its one worker id, and only the new claim may record it. The same for a portrait.
    Then a member forgets: their face adapter leaves the actor's GPU memory."""
    settings, queue, env, cluster = setup
    enrolled(settings, queue, analyzer, "ann", "bob")
    quick = queue.enqueue("train", "bob", {"steps": 4})
    process = dispatcher(env)
    wait_for(lambda: queue.get(quick.id).state == "done", 180, "bob's face model")

    training = queue.enqueue("train", "ann", {"steps": STEPS})
    wait_for(lambda: queue.get(training.id).progress >= 0.05, 180, "ann's training to be under way")
    portrait = queue.enqueue("generate", "bob", {"style": "anime", "count": 2, "seed": 4})
    wait_for(lambda: queue.get(portrait.id).state == "running", 60, "bob's portrait on the other actor")
    freeze(process, queue, seconds=settings.job_lease_seconds + 2)  # both jobs' leases run out meanwhile
    wait_for(lambda: queue.get(training.id).finished and queue.get(portrait.id).finished, 300, "both jobs")

    trained, drawn = queue.get(training.id), queue.get(portrait.id)
    assert trained.state == "done" and trained.attempts == 2, trained  # claimed again after the freeze
    assert [(m.version, m.status) for m in queue.store.face_models("ann")] == [(1, "ready")]
    assert drawn.state == "done" and len(drawn.result["portraits"]) == 2
    assert len(list(queue.store.db["portraits"].rows_where("job_id = ?", [portrait.id]))) == 2  # recorded once

    assert any(key.startswith("bob-v1-") for key in actor_adapters(env))  # drawn: bob's face is on an actor
    queue.store.delete_user("bob")  # /facechain forget
    wait_for(lambda: not any(key.startswith("bob-") for key in actor_adapters(env)), 60,
             "bob's face adapter to leave the actors")
    stop(process)


def freeze(process: subprocess.Popen, queue, seconds: float) -> None:
    """Stop the dispatcher's process past its lease (a suspended host, a long pause), then let it go.
    Meanwhile the bot's maintenance takes the expired leases back, as it does every minute, so the
    job is queued again when the dispatcher wakes up and claims it anew.

    It is stopped outside a write: a process stopped inside one holds SQLite's write lock until it runs
    again (every other writer waits, nothing is lost), which is SQLite's rule, not what this tests."""
    for _ in range(100):
        process.send_signal(signal.SIGSTOP)
        wait_for(lambda: process_state(process.pid) == "T", 5, "the dispatcher to stop")
        if takes_the_write_lock(queue.store.db_path):
            break
        process.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    else:
        pytest.fail("the dispatcher held the database's write lock at every try")
    time.sleep(seconds)
    assert queue.reap_expired() >= 1
    process.send_signal(signal.SIGCONT)


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def takes_the_write_lock(db_path: Path) -> bool:
    connection = sqlite3.connect(db_path, timeout=0.05)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


def actor_infos(env) -> list[dict]:
    status = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "status", "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)["actors"]


def actor_adapters(env) -> list[str]:
    return [key for actor in actor_infos(env) for key in actor.get("adapters", [])]


def test_a_job_on_a_hung_actor_is_handed_back_and_the_actor_restarted(setup, analyzer):
    settings, queue, env, cluster = setup
    enrolled(settings, queue, analyzer, "ann")
    training = queue.enqueue("train", "ann", {"steps": 5000})  # longer than its limit: as if it hung
    started = time.time()
    process = dispatcher(env, FACECHAIN_TRAIN_TIME_LIMIT_MINUTES="0.15", FACECHAIN_JOB_MAX_ATTEMPTS="1",
                         FACECHAIN_RAY_ACTORS="1")
    wait_for(lambda: queue.get(training.id).progress > 0, 120, "the training to be under way")  # a step done
    # ann's crops, on the GPU machine's disk while the one actor trains (read before its time limit)
    # (made since the test started, by a Ray actor: other test processes may be training beside it)
    [actor_pid] = [pid for pid in scratch_pids(since=started - 1) if ray_actor(pid)]
    assert process_alive(actor_pid)
    hung = wait_for(lambda: (job := queue.get(training.id)).finished and job, 120, "the time limit")
    assert hung.state == "failed" and hung.error.startswith("The GPU machine running this stopped answering."), hung
    [model] = queue.store.face_models("ann")
    assert model.status == "training"  # a passing failure: a later try resumes from its checkpoint
    # The killed actor's training folder goes with the actor that replaces it.
    wait_for(lambda: not training_scratch(actor_pid), 60, "the killed actor's scratch folder to be swept")
    output = stop(process)
    assert "ran past its time limit" in output and "restarting actor" in output


def training_scratch(pid: int | str = "*") -> list[Path]:
    import tempfile

    return list(Path(tempfile.gettempdir()).glob(f"facechain-train-{pid}-*"))


def scratch_pids(since: float) -> set[int]:
    recent = [folder for folder in training_scratch() if folder.stat().st_mtime >= since]
    return {int(SCRATCH_NAME.match(folder.name)["pid"]) for folder in recent}


def ray_actor(pid: int) -> bool:
    """Whether a process is one of Ray's actors (Ray titles them `ray::<class>...`)."""
    title = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True).stdout
    return title.startswith("ray::")


def cluster_status_shows(env, running_job: int) -> None:
    """`facechain cluster status` (JSON and text) and doctor, with one actor of two GPUs busy on a job."""
    status = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "status", "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    listed = json.loads(status.stdout)
    assert listed["enabled"] and listed["gpus"] == 2 and len([n for n in listed["nodes"] if n["alive"]]) >= 3
    assert [a["job"] for a in listed["actors"]] == [running_job]
    assert [j["job"] for j in listed["jobs_running"]] == [running_job] and "node" in listed["jobs_running"][0]["ran_on"]
    shown = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "status"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "2 GPUs" in shown.stdout and "facechain-gpu-" in shown.stdout
    doctor = subprocess.run([sys.executable, "-m", "engine.cli", "doctor", "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    [check] = [c for c in json.loads(doctor.stdout) if c["name"] == "cluster"]
    assert check["status"] == "ok" and "2 GPUs, 1 actors" in check["detail"]


def test_server_and_owner_styles_are_drawn_on_gpu_machines_that_share_no_disk_with_the_bot(setup, analyzer,
                                                                                             tiny_model, tmp_path):
    """A server's style and the owner's style keep their LoRAs in the bot's data folder: each actor is sent a
    file once (by its hash), then draws it from its own copy, never from the bot's path."""
    import re

    from diffusers import UNet2DConditionModel

    from engine.generation.guild_styles import add_guild_style
    from engine.generation.owner_styles import add_style
    from engine.generation.style_files import file_digest, local_lora_path
    from engine.models.random_models import make_random_lora

    settings, queue, env, _ = setup
    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    upload = make_random_lora(unet, tmp_path / "upload.safetensors", kohya=True)
    guild_style = add_guild_style(settings, "111", "neon-look", upload, "neon portrait, city lights", weight=0.5)
    upload = make_random_lora(unet, tmp_path / "other.safetensors", kohya=True)
    owner_style = add_style(settings, "owners-own", str(upload), "ink wash portrait", weight=0.5).style
    digests = {file_digest(local_lora_path(guild_style)), file_digest(local_lora_path(owner_style))}
    enrolled(settings, queue, analyzer, "7")
    jobs = [queue.enqueue("teaser", "7", {"style": style, "count": 1}, guild_id="111")
            for style in ("neon-look", "owners-own") * 3]
    process = dispatcher(env)
    actors_ready(process, 2)
    wait_for(lambda: all(queue.get(job.id).state in ("done", "failed") for job in jobs), 300, "the portraits")
    output = stop(process)
    assert [queue.get(job.id).state for job in jobs] == ["done"] * 6, [queue.get(job.id).error for job in jobs]
    sent = re.findall(r"sent the style file (\w+) ", output)
    assert {digest[:12] for digest in digests} == set(sent)
    assert all(sent.count(digest) <= 2 for digest in sent)  # once per actor at most, not once per job


def test_a_members_face_is_read_and_drawn_instantly_on_gpu_machines(setup, analyzer, instant_models):
    """Instant portraits on a cluster: the reading of a member enrolled before the mode was on runs on an actor, and
    their instant portrait is drawn on one from the face sent with the job (nothing of it stays on the actor)."""
    settings, queue, env, _ = setup
    enrolled(settings, queue, analyzer, "7")
    instant = {name: str(value) for name, value in instant_models.items()}
    process = dispatcher(env, FACECHAIN_INSTANT="true", **instant)
    actors_ready(process, 2)
    [read] = wait_for(lambda: [job for job in queue.jobs() if job.kind == "instant" and job.state == "done"], 180,
                      "the face read at the dispatcher's start")
    assert "node" in read.ran_on  # on an actor
    portrait = queue.enqueue("generate", "7", {"style": "anime", "count": 1, "instant": True})
    wait_for(lambda: queue.get(portrait.id).state in ("done", "failed"), 180, "the instant portrait")
    stop(process)
    done = queue.get(portrait.id)
    assert done.state == "done" and done.result["instant"] is True, done.error


def test_the_bot_end_to_end_with_the_cluster_on(two_gpu_nodes, tiny_model, tmp_path):
    """The bot's story (enroll, train, portraits with progress and buttons) with its worker as the
    cluster's dispatcher: the same checks as tests/test_bot.py, on the cluster."""
    from tests import test_bot as story
    from tests.bot_harness import running_bot

    with running_bot(tmp_path / "run", {**story.SETTINGS, "BASE_MODEL": tiny_model,
                                        "RAY_ADDRESS": two_gpu_nodes.address}) as deployment:
        story.test_enroll_asks_consent_checks_each_photo_and_trains(deployment)
        story.test_portrait_shows_progress_then_ranked_results_with_buttons(deployment)
        ran_on = deployment.rows("select kind, ran_on from jobs where state = 'done'")
        assert {kind for kind, _ in ran_on} >= {"enroll", "train", "generate"}
        assert all(" node " in where for _, where in ran_on), ran_on  # every job ran on a cluster actor
        story.test_every_interaction_was_acknowledged_in_time_and_nothing_crashed(deployment)

