"""`facechain enroll`, `users` and `train`: a member's selfies and face model."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from engine.cli.common import USAGE_ERROR, command, console, download_bar, open_store, print_json, read_photo, report
from engine.config import Settings
from engine.errors import FaceChainError
from engine.preprocess.trigger import SUBJECTS


def cmd_enroll(args: argparse.Namespace, settings: Settings) -> int:
    from engine.faces import get_analyzer
    from engine.preprocess.enroll import enroll_user

    photos = [read_photo(path) for path in args.paths]
    store = open_store(settings)
    report = enroll_user(store, get_analyzer(settings), settings, args.user, photos, args.subject)
    if args.json:
        print_json(report.to_json())
    else:
        console.print(f"[bold]{args.user}[/] ({report.trigger}): {len(report.result.accepted)} accepted, "
                      f"{len(report.result.rejected)} rejected, {report.enrolled_total} enrolled in all")
        if report.subject == "person" and args.subject is None:
            hint = f"the face engine suggests {report.suggested_subject}; " if report.suggested_subject else ""
            console.print(f"  Portraits describe {args.user} as \"a person\": {hint}set their own words with "
                          f"`facechain users set {args.user} --subject man|woman|boy|girl|person`.",
                          markup=False, soft_wrap=True)
        for photo in report.result.accepted:
            console.print(f"  [green]accepted[/] {photo.name} (quality {photo.quality.score:.2f})")
        for photo in report.result.rejected:
            console.print(f"  [red]rejected[/] {photo.name}: {photo.advice} ({photo.reason.value}: {photo.detail})")
    return 0 if report.result.accepted else USAGE_ERROR


def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    users = open_store(settings).list_users()
    if args.json:
        print_json(users)
        return 0
    table = Table(title=f"{len(users)} user(s)")
    for column in ("id", "trigger", "selfies", "face models", "portraits", "since"):
        table.add_column(column)
    for user in users:
        table.add_row(user["id"], user["trigger"], str(user["selfies"]), str(user["face_models"]),
                      str(user["portraits"]), user["created_at"])
    console.print(table)
    return 0


def cmd_users_show(args: argparse.Namespace, settings: Settings) -> int:
    from engine.store.members import describe_member

    member = describe_member(open_store(settings), args.user)
    if args.json:
        print_json(member)
        return 0
    model = member["face_model"]
    console.print(f"[bold]{member['id']}[/] ({member['trigger']}): {len(member['photos'])} enrolled photo(s); "
                  + (f"face model v{model['version']} of {model['finished_at'][:16]}" if model
                     else "no face model yet"), soft_wrap=True)
    for photo in member["photos"]:
        console.print(f"  {photo['number']}. {photo['name']} (quality {photo['quality']:.2f}, "
                      f"{photo['created_at'][:10]})", soft_wrap=True, markup=False)
    return 0


def cmd_users_remove_photo(args: argparse.Namespace, settings: Settings) -> int:
    from engine.jobs.queue import open_queue
    from engine.store.members import remove_photo

    store = open_store(settings)
    removed = remove_photo(store, open_queue(settings, store), args.user, args.number)
    then = (f"retraining on the {removed.remaining} left (job {removed.train_job_id})" if removed.train_job_id
            else f"{removed.remaining} left")
    report(args, {"removed": removed.number, "name": removed.name, "remaining": removed.remaining,
                  "train_job_id": removed.train_job_id}, f"Removed photo {removed.number} ({removed.name}); {then}.")
    return 0


def cmd_users_set(args: argparse.Namespace, settings: Settings) -> int:
    from engine.jobs.queue import open_queue
    from engine.store.members import change_subject
    from engine.store.together import set_together

    if args.subject is None and args.together is None:
        raise FaceChainError("Nothing to set: give --subject, --together or both.")
    store = open_store(settings)
    summary, lines = {"user": args.user}, []
    if args.together is not None:
        summary["together"] = set_together(store, args.user, args.together)
        lines.append(f"Pictures with other members: {TOGETHER_WORDS[args.together]}.")
    if args.subject is not None:
        change = change_subject(store, open_queue(settings, store), args.user, args.subject)
        then = ("unchanged" if not change.changed else f"retraining with it (job {change.train_job_id})"
                if change.train_job_id else "no photos to retrain on yet")
        summary.update({"subject": change.subject, "trigger": change.trigger, "changed": change.changed,
                        "train_job_id": change.train_job_id})
        lines.insert(0, f"Portraits describe {args.user} as \"{change.trigger}\"; {then}.")
    report(args, summary, " ".join(lines))
    return 0


TOGETHER_WORDS = {"ask": "each request is asked first", "always": "allowed without asking",
                  "never": "never allowed"}


def cmd_users_forget(args: argparse.Namespace, settings: Settings) -> int:
    report = open_store(settings).delete_user(args.user)
    if args.json:
        print_json({"user": report.user_id, "rows_deleted": report.rows_deleted, "files_deleted": report.files_deleted})
    elif report.anything_deleted:
        rows = sum(report.rows_deleted.values())
        console.print(f"Forgot {args.user}: {rows} database row(s) and {report.files_deleted} file(s) deleted.")
    else:
        console.print(f"Nothing stored for {args.user}.")
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from engine.models.base_model import load_base_pipeline
    from engine.training.train import train_user

    store = open_store(settings)
    if args.queue:  # for the worker (or the bot's) to run; the result lands in the data folder
        from engine.jobs.queue import open_queue

        if not store.accepted_selfies(args.user):
            raise FaceChainError(f"User {args.user} has no enrolled selfies: run `facechain enroll` first.")
        job = open_queue(settings, store).enqueue("train", args.user, {"steps": args.steps} if args.steps else {})
        report(args, {"job_id": job.id}, f"Training of {args.user} queued as job {job.id} "
                                         "(`facechain worker` runs it; `facechain jobs list` shows it).")
        return 0
    base = load_base_pipeline(settings, on_progress=download_bar())
    with Progress(TextColumn("training {task.fields[user]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                  console=Console(stderr=True), disable=args.json) as bar:
        task = bar.add_task("train", total=None, user=args.user, loss=0.0)
        model = train_user(
            store, base, settings, args.user, steps=args.steps,
            on_progress=lambda p: bar.update(task, completed=p.step, total=p.total, loss=p.loss),
        )
    summary = {"user": args.user, "version": model.version, "path": str(model.path), "status": model.status,
               "steps": model.meta["steps"], "final_loss": model.meta["final_loss"],
               "resumed_from_step": model.meta["resumed_from_step"]}
    report(args, summary, f"Face model v{model.version} for {args.user} ready at {model.path} "
                          f"({summary['steps']} steps, final loss {summary['final_loss']:.4f}).")
    return 0


# --- the commands --------------------------------------------------------------------------------

def register(commands) -> None:
    enroll = command(commands, "enroll", cmd_enroll, "preprocess and store a user's selfies")
    enroll.add_argument("--user", required=True, help="user id (a Discord id, or any name of letters and digits)")
    enroll.add_argument("--subject", choices=sorted(SUBJECTS), help="who is in the photos (sets the trigger phrase)")
    enroll.add_argument("paths", nargs="+", metavar="PATH")

    users = commands.add_parser("users", help="list, show, change or forget users").add_subparsers(
        dest="users_command", required=True, metavar="ACTION")
    command(users, "list", cmd_users_list, "list users and what is stored for them")
    command(users, "forget", cmd_users_forget, "delete every file and row of a user").add_argument("user")
    command(users, "show", cmd_users_show, "a user's enrolled photos (numbered) and face model").add_argument("user")
    remove = command(users, "remove-photo", cmd_users_remove_photo,
                     "delete one enrolled photo (its number from `users show`) and queue a retrain on the rest")
    remove.add_argument("user")
    remove.add_argument("number", type=int, metavar="N")
    set_words = command(users, "set", cmd_users_set,
                        "how portraits describe a user (their subject; a change retrains their face model), and who "
                        "may put them in a picture together (`facechain together`)")
    set_words.add_argument("user")
    set_words.add_argument("--subject", choices=list(SUBJECTS))
    set_words.add_argument("--together", choices=["ask", "always", "never"],
                           help="pictures with another member: ask each time (the default; the bot asks them), "
                                "always allowed, or never")
    train = command(commands, "train", cmd_train, "train a user's face LoRA from their enrolled selfies")
    train.add_argument("--user", required=True)
    train.add_argument("--steps", type=int, help="training steps (default: scaled with the number of photos)")
    train.add_argument("--queue", action="store_true", help="queue it for the worker instead (JSON: the job id)")
