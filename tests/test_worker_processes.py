"""Real worker processes: kill -9 mid-training, SIGTERM, and nothing lost or run twice."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import load_settings
from engine.jobs.queue import SqliteJobQueue
from engine.preprocess.enroll import enroll_user
from engine.store import Store
from tests.conftest import TEST_MODEL_SETTINGS, photo

# The real bot, worker processes, the cluster, the full-size model or the benchmarks: skipped by the
# edit loop's quick lane (`pytest -m "not slow"`), run by CI.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]
STEPS = 150


@pytest.fixture
def setup(tiny_model, tmp_path, analyzer):
    env_settings = {"DATA_DIR": tmp_path / "data", "BASE_MODEL": str(tiny_model), "DEVICE": "cpu",
                    "TRAIN_RESOLUTION": 64, "JOB_LEASE_SECONDS": 3, "JOB_RETRY_SECONDS": 0,
                    "ONE_FACE_PER_MEMBER": False}  # three members share the test photos of one face
    settings = load_settings(_env_file=None, **{k.lower(): v for k, v in env_settings.items()})
    store = Store(settings.data_dir)
    for user in ("ann", "bob", "cy"):
        enroll_user(store, analyzer, settings, user, [photo(p) for p in OBAMA], subject="man")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECHAIN_")}
    env.update({f"FACECHAIN_{k}": str(v) for k, v in {**TEST_MODEL_SETTINGS, **env_settings}.items()})
    env["PYTHONPATH"] = str(ROOT)
    return settings, SqliteJobQueue(store, settings), env


def start_worker(env, name: str, idle: float | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "engine.cli", "worker", "--id", name]
    if idle is not None:
        command += ["--exit-when-idle", str(idle)]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()):
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_mid_training_loses_nothing_and_runs_nothing_twice(setup):
    settings, queue, env = setup
    # ann's training is killed mid-way; bob's and cy's short ones wait behind it.
    jobs = {user: queue.enqueue("train", user, {"steps": STEPS if user == "ann" else 20}) for user in ("ann", "bob", "cy")}
    first = start_worker(env, "first")
    wait_for(lambda: queue.get(jobs["ann"].id).progress >= 0.4, 120, "ann's training to pass 40%")
    first.kill()  # SIGKILL: no cleanup, no checkpoint on the way out
    first.wait(timeout=30)
    assert queue.get(jobs["ann"].id).state == "running"  # still leased to the dead worker

    second = start_worker(env, "second", idle=1)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output

    ann = queue.get(jobs["ann"].id)
    assert ann.state == "done" and ann.attempts == 2
    assert ann.result["resumed_from_step"] >= 0.3 * STEPS  # continued from its last checkpoint
    for user, job in jobs.items():
        finished = queue.get(job.id)
        assert finished.state == "done", (user, finished)
        models = queue.store.face_models(user)
        assert [(m.version, m.status) for m in models] == [(1, "ready")], user  # trained to completion once
        assert not list(models[0].path.parent.glob("*.partial"))


def test_sigterm_checkpoints_releases_and_a_new_worker_resumes(setup):
    settings, queue, env = setup
    job = queue.enqueue("train", "ann", {"steps": STEPS})
    worker = start_worker(env, "polite")
    wait_for(lambda: queue.get(job.id).progress >= 0.3, 120, "training to pass 30%")
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    released = queue.get(job.id)
    assert released.state == "queued" and released.attempts == 0 and released.progress_text.startswith("queued"), (released, output)

    again = start_worker(env, "again", idle=1)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    done = queue.get(job.id)
    assert done.state == "done" and done.result["resumed_from_step"] >= 0.3 * STEPS


def test_the_bot_side_supervisor_restarts_a_dead_worker_and_stops_it_cleanly(setup):
    from engine.jobs.worker_process import WorkerProcess

    settings, queue, env = setup
    supervisor = WorkerProcess(env={k: v for k, v in env.items() if k.startswith(("FACECHAIN_", "PYTHONPATH"))},
                               worker_id="child")
    assert supervisor.ensure_running() is True
    first = supervisor.pid
    assert supervisor.ensure_running() is False  # alive: nothing to do
    os.kill(first, signal.SIGKILL)
    supervisor.process.wait(timeout=30)
    assert supervisor.ensure_running() is True and supervisor.pid != first and supervisor.restarts == 1
    job = queue.enqueue("train", "bob", {"steps": 3})
    wait_for(lambda: queue.get(job.id).state == "done", 120, "the restarted worker to run a job")
    assert supervisor.stop(timeout=60) == 0
    assert not supervisor.running()


def test_a_worker_that_cannot_start_is_the_owners_problem_and_is_restarted_less_and_less_often(tmp_path):
    """A refused cluster address: one setup incident (not a restart every 5 s forever), members' jobs
    show that they wait, and the supervisor backs off: at once, then 5 s, then 10 s later."""
    from engine.jobs.queue import WAITING_FOR_SETUP
    from engine.jobs.worker_process import WorkerProcess
    from engine.store.setup_problems import open_setup_problems

    settings = load_settings(_env_file=None, data_dir=tmp_path / "data")
    queue = SqliteJobQueue(Store(settings.data_dir), settings)
    job = queue.enqueue("train", "ann", {})
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECHAIN_")}
    env.update({"FACECHAIN_DATA_DIR": str(settings.data_dir), "FACECHAIN_RAY_ADDRESS": "8.8.8.8:6379",
                "PYTHONPATH": str(ROOT)})
    now = [1000.0]
    supervisor = WorkerProcess(env=env, worker_id="refused", clock=lambda: now[0])
    starts = []
    for _ in range(20):  # the bot looks every few seconds; here once a simulated second
        if supervisor.ensure_running():
            starts.append(now[0] - 1000.0)
            assert supervisor.process.wait(timeout=60) == 2  # refused, one line, exit 2
        now[0] += 1.0
    # Found stopped at 1 s: restarted at once (a crash); at 2 s: restarted 5 s later; at 8 s: 10 s later.
    assert starts == [0.0, 1.0, 7.0, 18.0]
    [problem] = open_setup_problems(queue.store)
    assert problem.key == "worker" and "The worker cannot start: FACECHAIN_RAY_ADDRESS=8.8.8.8:6379" in problem.message
    assert queue.get(job.id).progress_text == WAITING_FOR_SETUP  # the member reads that the bot is not ready


def test_the_worker_and_doctor_never_print_the_token(tmp_path):
    token = "secret.token.never-logged"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECHAIN_")}
    env.update({"FACECHAIN_DISCORD_TOKEN": token, "FACECHAIN_DATA_DIR": str(tmp_path / "data"),
                "FACECHAIN_LOG_LEVEL": "DEBUG", "PYTHONPATH": str(ROOT)})
    for command in (["worker", "--exit-when-idle", "0"], ["doctor", "--json"], ["users", "list"]):
        run = subprocess.run([sys.executable, "-m", "engine.cli", *command], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert token not in run.stdout + run.stderr, command
        assert "Traceback" not in run.stderr, command
