"""`facechain worker`, `jobs`, `cluster status` and `maintenance`: the queue and who runs it."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from rich.table import Table

from engine.cli.common import command, console, open_store, print_json, report
from engine.config import Settings


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """The local worker, or with FACECHAIN_RAY_ADDRESS set, the dispatcher of the Ray cluster. A worker
    that cannot start is the owner's problem (incident, DM, doctor) while members' jobs wait."""
    from engine.errors import SettingsError
    from engine.jobs.queue import open_queue
    from engine.store.setup_problems import report_setup_problem, resolve_setup_problems

    store = open_store(settings)
    try:
        runner, worker = _worker_for(args, settings)
    except SettingsError as error:
        report_setup_problem(store, WORKER_PROBLEM, f"The worker cannot start: {error}")
        open_queue(settings, store).hold_for_setup()
        raise
    if resolve_setup_problems(store, WORKER_PROBLEM):
        open_queue(settings, store).hold_for_setup(False)
    store.close()
    if args.parent_pid:
        worker.stop_with_parent(args.parent_pid)
    runner.run(exit_when_idle=args.exit_when_idle)
    return 0


# The incident key of a worker that cannot start (a refused cluster address, Ray missing).
WORKER_PROBLEM = "worker"


def _worker_for(args: argparse.Namespace, settings: Settings):
    """(what runs the loop, the Worker that records jobs' endings)."""
    if settings.ray_address:
        from engine.jobs.cluster.status import require_ray

        require_ray()
        from engine.jobs.cluster.dispatcher import Dispatcher

        dispatcher = Dispatcher(settings, args.id)
        return dispatcher, dispatcher.worker
    from engine.jobs.worker import Worker

    worker = Worker(settings, args.id)
    worker.models.for_life = True  # this process is the worker: its models stay loaded until it stops
    return worker, worker


def cmd_cluster_status(args: argparse.Namespace, settings: Settings) -> int:
    from engine.jobs.cluster.status import cluster_status
    from engine.store import Store

    status = cluster_status(settings, Store(settings.data_dir))
    if args.json:
        print_json(status)
        return 0
    if not status["enabled"]:
        console.print("The cluster is off (FACECHAIN_RAY_ADDRESS is empty): jobs run on this machine's worker.")
    else:
        console.print(f"Ray cluster at {status['address']}: {len(status['nodes'])} nodes, {status['gpus']:g} GPUs")
        table = Table("node", "ip", "alive", "GPUs", "CPUs")
        for node in status["nodes"]:
            table.add_row(node["node_id"][:8], node["ip"], "yes" if node["alive"] else "no", f"{node['gpus']:g}",
                          f"{node['cpus']:g}")
        console.print(table)
        table = Table("actor", "node", "job", "model loaded", "adapters")
        for actor in status["actors"]:
            table.add_row(actor["name"], (actor.get("node_id") or "")[:8], str(actor.get("job") or "idle"),
                          "yes" if actor.get("model_loaded") else "no", ", ".join(actor.get("adapters", [])) or "-")
        console.print(table if status["actors"] else "No actors yet: the dispatcher starts them (facechain worker).")
    table = Table("job", "kind", "user", "runs on", "progress")
    for job in status["jobs_running"]:
        table.add_row(str(job["job"]), job["kind"], job["user"], job["ran_on"] or "",
                      f"{100 * job['progress']:.0f}% {job['text']}")
    console.print(table if status["jobs_running"] else "No job running.")
    return 0


def cmd_jobs_list(args: argparse.Namespace, settings: Settings) -> int:
    from engine.jobs.queue import open_queue

    queue = open_queue(settings)
    jobs = queue.jobs(state=args.state, user_id=args.user, limit=args.limit)
    if args.json:
        listed = []
        positions = queue.positions(job.id for job in jobs)
        for job in jobs:
            place = positions.get(job.id)
            listed.append({**asdict(job), "position": place.position if place else None,
                           "eta_seconds": round(place.eta_seconds) if place else None})
        print_json(listed)
        return 0
    table = Table(title=f"{len(jobs)} job(s)")
    for column in ("id", "kind", "user", "state", "progress", "attempts", "ran on", "created", "error"):
        table.add_column(column)
    for job in jobs:
        table.add_row(str(job.id), job.kind, job.user_id, job.state, job.progress_text, str(job.attempts),
                      job.ran_on or "", job.created_at[:19], job.error or "")
    console.print(table)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from engine.jobs.queue import open_queue

    job = open_queue(settings).cancel(args.job_id)
    message = "cancelled" if job.state == "cancelled" else "asked to stop; the worker stops it at its next step"
    report(args, {"id": job.id, "state": job.state, "cancel_requested": job.cancel_requested}, f"Job {job.id} {message}.")
    return 0


def cmd_maintenance(args: argparse.Namespace, settings: Settings) -> int:
    from engine.store.maintenance import run_all

    summary = run_all(open_store(settings), settings)
    retention = summary["retention"]
    report(args, summary, f"Reaped {summary['leases_reaped']} expired lease(s), deleted {summary['temp_files_deleted']} "
                          f"temp file(s), {retention['portraits']} old portrait(s), {retention['selfies']} old selfie(s)"
                          + (f"; backup at {summary['backup']}" if "backup" in summary else "") + ".")
    return 0


# --- the commands --------------------------------------------------------------------------------

def register(commands) -> None:
    worker = command(commands, "worker", cmd_worker, "run queued jobs on this machine's GPU until stopped")
    worker.add_argument("--id", help="worker name (default: host-pid)")
    worker.add_argument("--parent-pid", type=int, help="stop (checkpointing any training) when this process exits")
    worker.add_argument("--exit-when-idle", type=float, metavar="SECONDS", help="stop once the queue stays empty this long")

    jobs = commands.add_parser("jobs", help="the job queue").add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    cluster = commands.add_parser("cluster", help="the Ray cluster of GPU machines (FACECHAIN_RAY_ADDRESS)").add_subparsers(
        dest="cluster_command", required=True, metavar="ACTION")
    command(cluster, "status", cmd_cluster_status, "nodes, GPUs, actors, the adapters they hold, and jobs in flight")
    jobs_list = command(jobs, "list", cmd_jobs_list, "list jobs, newest first")
    jobs_list.add_argument("--state", choices=["queued", "running", "done", "failed", "cancelled"])
    jobs_list.add_argument("--user")
    jobs_list.add_argument("--limit", type=int, default=50)
    command(jobs, "cancel", cmd_jobs_cancel, "cancel a job").add_argument("job_id", type=int, metavar="ID")

    command(commands, "maintenance", cmd_maintenance,
            "reap expired leases, delete old temp files and expired portraits/selfies, back up the database")
