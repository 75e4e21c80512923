"""The `facechain` command: everything the engine does, without Discord.

Other tools call the `--json` forms; keep their flags and keys stable. Errors meant for people
print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engine.config import Settings, load_settings
from engine.errors import FaceChainError
from engine.preprocess import UploadedPhoto
from engine.preprocess.trigger import SUBJECTS

console = Console()
USAGE_ERROR = 2


def read_photo(path: str) -> UploadedPhoto:
    file = Path(path)
    if not file.is_file():
        raise FaceChainError(f"File not found: {path}")
    return UploadedPhoto(name=path, data=file.read_bytes())


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def report(args: argparse.Namespace, data: object, sentence: str) -> None:
    """The result as JSON with --json, else as a sentence for people."""
    if args.json:
        print_json(data)
    else:
        console.print(sentence)


# --- doctor ------------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from engine.doctor import checks_to_json, run_checks

    checks = run_checks(settings)
    if args.json:
        print_json(checks_to_json(checks))
    else:
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        table = Table(title="facechain doctor")
        for column in ("check", "status", "detail", "fix"):
            table.add_column(column)
        for check in checks:
            table.add_row(check.name, f"[{colours[check.status]}]{check.status}[/]", check.detail, check.fix)
        console.print(table)
    return 1 if any(check.status == "fail" for check in checks) else 0


# --- faces ---------------------------------------------------------------------------------------

def cmd_faces_analyze(args: argparse.Namespace, settings: Settings) -> int:
    from engine.faces import get_analyzer
    from engine.preprocess.decode import decode_photo
    from engine.preprocess.reasons import PhotoRejected

    analyzer = get_analyzer(settings)
    results = []
    for path in args.paths:
        entry: dict = {"path": path, "faces": [], "error": None}
        try:
            image = decode_photo(read_photo(path).data, settings.max_photo_megapixels)
            entry["faces"] = [face.to_json() for face in analyzer.detect(image)]
        except PhotoRejected as rejection:
            entry["error"] = f"{rejection.reason.value}: {rejection.detail}"
        except FaceChainError as error:
            entry["error"] = str(error)
        results.append(entry)
    if args.json:
        print_json(results)
    else:
        for entry in results:
            found = entry["error"] or f"{len(entry['faces'])} face(s) " + " ".join(
                f"[box {face['box']} score {face['score']}]" for face in entry["faces"]
            )
            console.print(f"{entry['path']}: {found}")
    return 0


def embed_largest_face(path: str, settings: Settings):
    from engine.faces import get_analyzer
    from engine.preprocess.pipeline import find_usable_face

    analyzer = get_analyzer(settings)
    found = find_usable_face(analyzer, settings, read_photo(path))
    return analyzer.embed(found.image, found.face)


def cmd_faces_compare(args: argparse.Namespace, settings: Settings) -> int:
    from engine.faces import get_analyzer, same_person

    analyzer = get_analyzer(settings)
    first, second = embed_largest_face(args.a, settings), embed_largest_face(args.b, settings)
    distance = analyzer.distance(first, second)
    result = {"distance": round(distance, 4), "same_person": same_person(analyzer, first, second),
              "threshold": analyzer.threshold}
    verdict = "same person" if result["same_person"] else "different people"
    report(args, result, f"{verdict}: distance {distance:.3f} (threshold {analyzer.threshold:g})")
    return 0


# --- enroll and users -----------------------------------------------------------------------------

def open_store(settings: Settings):
    from engine.store import Store

    return Store(settings.data_dir)


def cmd_enroll(args: argparse.Namespace, settings: Settings) -> int:
    from engine.enroll import enroll_user
    from engine.faces import get_analyzer

    photos = [read_photo(path) for path in args.paths]
    store = open_store(settings)
    report = enroll_user(store, get_analyzer(settings), settings, args.user, photos, args.subject)
    if args.json:
        print_json(report.to_json())
    else:
        console.print(f"[bold]{args.user}[/] ({report.trigger}): {len(report.result.accepted)} accepted, "
                      f"{len(report.result.rejected)} rejected, {report.enrolled_total} enrolled in all")
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
    from engine.members import describe_member

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
    from engine.members import remove_photo
    from engine.queue import open_queue

    store = open_store(settings)
    removed = remove_photo(store, open_queue(settings, store), args.user, args.number)
    then = (f"retraining on the {removed.remaining} left (job {removed.train_job_id})" if removed.train_job_id
            else f"{removed.remaining} left")
    report(args, {"removed": removed.number, "name": removed.name, "remaining": removed.remaining,
                  "train_job_id": removed.train_job_id}, f"Removed photo {removed.number} ({removed.name}); {then}.")
    return 0


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


# --- styles -----------------------------------------------------------------------------------------

def cmd_styles_list(args: argparse.Namespace, settings: Settings) -> int:
    from engine.styles import load_styles

    catalogue = load_styles(settings.styles_dir)
    if args.json:
        print_json([style.model_dump(mode="json") for style in catalogue.styles.values()])
        return 0
    table = Table(title=f"{len(catalogue.styles)} styles")
    for column in ("id", "name", "description"):
        table.add_column(column)
    for style in catalogue.styles.values():
        table.add_row(style.id, style.name, style.description)
    console.print(table)
    return 0


def style_recipe(style, settings: Settings) -> dict:
    """Exactly what generation uses for a style: prompts, sampler, LoRAs and weights, what is downloaded."""
    from engine.generate import build_negative_prompt, build_prompt
    from engine.lora_training import WEIGHTS_FILE
    from engine.model_files import NamedModel, where_is

    loras = [{"role": "face", "reference": "the member's face model", "weight": style.face_weight}]
    if style.lora is not None:
        model = NamedModel("style LoRA", style.lora.reference, f"style {style.id}", "file",
                           style.lora.weight_name or WEIGHTS_FILE, style.lora.revision)
        loras.append({"role": "style", "reference": style.lora.reference, "file": model.filename,
                      "revision": style.lora.revision, "weight": style.lora.weight,
                      "downloaded": where_is(model) is not None})
    fast = NamedModel("fast-mode LoRA", settings.fast_lora, "FACECHAIN_FAST_LORA", "file", WEIGHTS_FILE)
    return {
        "id": style.id, "name": style.name, "family": style.family,
        "prompt": build_prompt("{trigger}", style), "negative_prompt": build_negative_prompt(style),
        "sampler": style.sampler.model_dump(), "loras": loras,
        "fast_mode": {"sampler": "lcm", "steps": settings.fast_steps, "guidance": settings.fast_guidance,
                      "lora": settings.fast_lora, "weight": 1.0,
                      "downloaded": bool(settings.fast_lora.strip()) and where_is(fast) is not None},
    }


def cmd_styles_show(args: argparse.Namespace, settings: Settings) -> int:
    from engine.styles import load_styles

    catalogue = load_styles(settings.styles_dir)
    style = catalogue.get(args.style)
    if style is None:
        close = catalogue.suggest(args.style)
        raise FaceChainError(f"Unknown style {args.style!r}" + (f": did you mean {close[0]}?" if close else "."))
    recipe = style_recipe(style, settings)
    if args.json:
        print_json(recipe)
        return 0
    sampler = recipe["sampler"]
    console.print(f"[bold]{style.name}[/] ({style.id}, {style.family} family)", soft_wrap=True)
    console.print(f"prompt: {recipe['prompt']}", soft_wrap=True, markup=False)
    console.print(f"negative: {recipe['negative_prompt']}", soft_wrap=True, markup=False)
    console.print(f"sampler: {sampler['name']}, {sampler['steps']} steps, guidance {sampler['guidance']:g}")
    for lora in recipe["loras"]:
        where = "" if "downloaded" not in lora else (" (downloaded)" if lora["downloaded"] else " (not downloaded yet)")
        file = f" {lora['file']}" if lora.get("file") else ""
        console.print(f"{lora['role']} LoRA: {lora['reference']}{file} at {lora['weight']:g}{where}", soft_wrap=True)
    fast = recipe["fast_mode"]
    console.print(f"fast mode: {fast['lora']} at 1, LCM, {fast['steps']} steps, guidance {fast['guidance']:g}"
                  f"{' (downloaded)' if fast['downloaded'] else ' (not downloaded yet)'}", soft_wrap=True)
    return 0


def cmd_styles_previews(args: argparse.Namespace, settings: Settings) -> int:
    from engine.base_model import load_base_pipeline
    from engine.generate import PortraitGenerator
    from engine.style_previews import draw_preview, preview_file, shown_preview
    from engine.styles import load_styles

    catalogue = load_styles(settings.styles_dir)
    wanted = [part.strip() for part in args.only.split(",")] if args.only else list(catalogue.styles)
    unknown = [style_id for style_id in wanted if catalogue.get(style_id) is None]
    if unknown:
        raise FaceChainError(f"Unknown style(s): {', '.join(unknown)}: see `facechain styles list`.")
    todo = [catalogue.get(style_id) for style_id in wanted
            if args.force or shown_preview(settings, catalogue, catalogue.get(style_id)) is None]
    rows = [{"style": style_id, "path": str(shown_preview(settings, catalogue, catalogue.get(style_id))),
             "drawn": False} for style_id in wanted if catalogue.get(style_id) not in todo]
    if todo:
        generator = PortraitGenerator(load_base_pipeline(settings, on_progress=download_bar()))
        for style in todo:
            rows.append({"style": style.id, "path": str(draw_preview(generator, settings, style)), "drawn": True})
            if not args.json:
                console.print(f"drew {style.id}: {preview_file(settings, style.id)}")
    report(args, rows, f"{sum(r['drawn'] for r in rows)} preview(s) drawn, "
                       f"{sum(not r['drawn'] for r in rows)} already there.")
    return 0


def cmd_styles_check(args: argparse.Namespace, settings: Settings) -> int:
    from engine.model_files import style_lora_problems
    from engine.styles import load_styles

    catalogue = load_styles(settings.styles_dir)
    problems = [*catalogue.problems, *style_lora_problems(catalogue)]
    if args.json:
        print_json({"styles": len(catalogue.styles),
                    "problems": [{"path": str(p.path), "field": p.field, "message": p.message} for p in problems]})
    else:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        console.print(f"{len(catalogue.styles)} styles loaded, {len(problems)} problem(s)")
    return 1 if problems else 0


# --- training -----------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from engine.base_model import load_base_pipeline
    from engine.train import train_user

    store = open_store(settings)
    if args.queue:  # for the worker (or the bot's) to run; the result lands in the data folder
        from engine.queue import open_queue

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


# --- portraits ----------------------------------------------------------------------------------------

def cmd_fuse(args: argparse.Namespace, settings: Settings) -> int:
    from PIL import Image

    from engine.faces import get_analyzer
    from engine.postprocess.fuse_photos import fuse_photos

    result = fuse_photos(get_analyzer(settings), settings, [read_photo(p) for p in args.face], read_photo(args.template))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.image).save(out)
    summary = {"path": str(out), "distance_before": result.distance_before, "distance_after": result.distance_after}
    report(args, summary, f"Wrote {out}: identity distance to the selfies {result.distance_before:.3f} -> "
                          f"{result.distance_after:.3f} (lower is more alike)")
    return 0


def cmd_upscale(args: argparse.Namespace, settings: Settings) -> int:
    from engine.base_model import load_base_pipeline
    from engine.faces import get_analyzer
    from engine.generate import PortraitGenerator
    from engine.styles import load_styles
    from engine.upscale import find_portrait, upscale

    store = open_store(settings)
    find_portrait(store, args.user, args.portrait)  # before the slow model load
    generator = PortraitGenerator(load_base_pipeline(settings, on_progress=download_bar()))
    saved = upscale(store, generator, get_analyzer(settings), settings, load_styles(settings.styles_dir), args.user,
                    args.portrait, out_dir=Path(args.out))
    report(args, saved.to_json(), f"Wrote {saved.path} at twice the size"
           + (f", likeness {saved.similarity:.0%}." if saved.similarity is not None else "."))
    return 0


def cmd_swap(args: argparse.Namespace, settings: Settings) -> int:
    from engine.faces import get_analyzer
    from engine.swap import save_swap, swap_face

    result = swap_face(open_store(settings), get_analyzer(settings), settings, args.user, read_photo(args.photo),
                       args.face)
    out = save_swap(result, Path(args.out))
    report(args, {"path": str(out), "face": result.face, "faces_found": result.faces_found,
                  "similarity": result.similarity},
           f"Wrote {out}: face {result.face} of {result.faces_found}, likeness {result.similarity:.0%}.")
    return 0


def queue_portrait(args: argparse.Namespace, settings: Settings, store, catalogue) -> int:
    """Put a portrait request on the queue, as the bot does; it waits for the user's queued training."""
    from engine.portrait_request import check_prompt_words, check_request
    from engine.queue import open_queue

    queue = open_queue(settings, store)
    training = any(job.kind == "train" for job in queue.active_jobs(user_id=args.user))
    has_model = store.ready_face_model(args.user) is not None
    check_request(store, settings, catalogue, args.user, args.style, args.count, need_model=not training)
    params = {"style": args.style, "count": args.count, "seed": args.seed, "fast": args.fast,
              "prompt": check_prompt_words(args.prompt or ""), "wait_for_training": not has_model}
    job = queue.enqueue("generate", args.user, params)
    report(args, {"job_id": job.id}, f"Portraits of {args.user} queued as job {job.id}"
                                     + (", after the training queued for them" if not has_model else "") + ".")
    return 0


def cmd_portrait(args: argparse.Namespace, settings: Settings) -> int:
    from engine.base_model import load_base_pipeline
    from engine.faces import get_analyzer
    from engine.generate import PortraitGenerator
    from engine.portrait import make_portraits
    from engine.portrait_request import check_prompt_words, check_request
    from engine.safety import load_safety_checker
    from engine.styles import load_styles

    store = open_store(settings)
    catalogue = load_styles(settings.styles_dir)
    if args.queue:
        return queue_portrait(args, settings, store, catalogue)
    if args.out is None:
        raise FaceChainError("Say where the portraits go with --out DIR (or queue them with --queue).")
    # Before the slow model load; a preview needs enrolled selfies only, no face model.
    check_request(store, settings, catalogue, args.user, args.style, args.count, need_model=not args.preview)
    if args.preview and not store.accepted_selfies(args.user):
        raise FaceChainError(f"User {args.user} has no enrolled selfies: run `facechain enroll` first.")
    words = check_prompt_words(args.prompt or "")
    base = load_base_pipeline(settings, on_progress=download_bar())
    safety = load_safety_checker(settings, base)
    generator = PortraitGenerator(base, fast_lora=settings.fast_lora)
    result = make_portraits(store, generator, get_analyzer(settings), settings, catalogue, args.user,
                            args.style, count=args.count, seed=args.seed, out_dir=Path(args.out), safety=safety,
                            show_flagged=args.show_flagged, fast=args.fast, words=words, teaser=args.preview)
    if result.notice:
        print(f"notice: {result.notice}", file=sys.stderr)
    if args.json:
        print_json([portrait.to_json() for portrait in result.portraits])
    else:
        for portrait in result.portraits:
            score = "unranked" if portrait.similarity is None else f"similarity {portrait.similarity:.3f}"
            flagged = ", flagged by the safety check" if portrait.nsfw else ""
            console.print(f"{portrait.path} ({score}, seed {portrait.seed}{flagged})")
    return 0


# --- queue and worker ------------------------------------------------------------------------------------

def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """The local worker, or with FACECHAIN_RAY_ADDRESS set, the dispatcher of the Ray cluster."""
    if settings.ray_address:
        from engine.cluster.status import require_ray

        require_ray()
        from engine.cluster.dispatcher import Dispatcher

        runner = Dispatcher(settings, args.id)
        worker = runner.worker
    else:
        from engine.worker import Worker

        runner = worker = Worker(settings, args.id)
    if args.parent_pid:
        worker.stop_with_parent(args.parent_pid)
    runner.run(exit_when_idle=args.exit_when_idle)
    return 0


def cmd_cluster_status(args: argparse.Namespace, settings: Settings) -> int:
    from engine.cluster.status import cluster_status
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
        table.add_row(str(job["job"]), job["kind"], job["user"], job["ran_on"] or "", f"{100 * job['progress']:.0f}% {job['text']}")
    console.print(table if status["jobs_running"] else "No job running.")
    return 0


def cmd_jobs_list(args: argparse.Namespace, settings: Settings) -> int:
    from engine.queue import open_queue

    queue = open_queue(settings)
    jobs = queue.jobs(state=args.state, user_id=args.user, limit=args.limit)
    if args.json:
        listed = []
        for job in jobs:
            place = queue.position(job.id)
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
    from engine.queue import open_queue

    job = open_queue(settings).cancel(args.job_id)
    message = "cancelled" if job.state == "cancelled" else "asked to stop; the worker stops it at its next step"
    report(args, {"id": job.id, "state": job.state, "cancel_requested": job.cancel_requested}, f"Job {job.id} {message}.")
    return 0


def cmd_maintenance(args: argparse.Namespace, settings: Settings) -> int:
    from engine.maintenance import run_all

    summary = run_all(open_store(settings), settings)
    retention = summary["retention"]
    report(args, summary, f"Reaped {summary['leases_reaped']} expired lease(s), deleted {summary['temp_files_deleted']} "
                          f"temp file(s), {retention['portraits']} old portrait(s), {retention['selfies']} old selfie(s)"
                          + (f"; backup at {summary['backup']}" if "backup" in summary else "") + ".")
    return 0


# --- models -------------------------------------------------------------------------------------------

def download_bar():
    """A progress callback `(what, bytes done, bytes in all)` that draws one bar per download on stderr."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bars = Progress(TextColumn("getting {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=Console(stderr=True), transient=False)
    tasks: dict[str, int] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks:
            bars.start()
            tasks[what] = bars.add_task(what, total=total)
        bars.update(tasks[what], completed=done, total=total)
        if all(task.finished for task in bars.tasks):
            bars.stop()
    return update


def cmd_models_pull(args: argparse.Namespace, settings: Settings) -> int:
    from engine.base_model import current_plan
    from engine.device import resolve_device
    from engine.errors import ModelUnavailable
    from engine.model_files import disk_size, fetch, named_models, where_is

    half = args.fp16 or current_plan(resolve_device(settings.device)).dtype_name != "float32"
    progress = None if args.json else download_bar()
    rows, failed = [], 0
    for model in named_models(settings):
        row = {"name": model.name, "reference": model.reference, "status": "present", "path": None, "bytes": 0,
               "error": None}
        path = where_is(model)
        if path is None:
            try:
                path = fetch(model, half, (lambda d, t, name=model.name: progress(name, d, t)) if progress else None)
                row["status"] = "downloaded"
            except ModelUnavailable as error:
                row.update(status="failed", error=str(error))
                failed += 1
        if path is not None:
            row.update(path=str(path), bytes=disk_size(path))
        rows.append(row)
        if not args.json:
            said = {"present": "already here", "downloaded": "downloaded", "failed": "not available"}[row["status"]]
            where = f" ({row['bytes'] / 1e9:.2f} GB at {row['path']})" if path is not None else f": {row['error']}"
            console.print(f"{model.name} {model.reference}: {said}{where}", soft_wrap=True)
    if args.json:
        print_json(rows)
    return 1 if failed else 0


def cmd_make_tiny_model(args: argparse.Namespace, settings: Settings) -> int:
    from engine.random_models import make_tiny_model

    folder = make_tiny_model(Path(args.folder))
    report(args, {"path": str(folder)},
           f"Tiny random model written to {folder} (set FACECHAIN_BASE_MODEL={folder} to use it).")
    return 0


# --- benchmarks -----------------------------------------------------------------------------------

def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from engine.benchmarks.report import write_report
    from engine.benchmarks.suite import run_suite

    out = Path(args.out)
    results = run_suite(out, quick=args.quick, gpu=args.gpu, only=args.only,
                        gpu_results=Path(args.gpu_results) if args.gpu_results else None)
    report_path = write_report(results, out)
    failed = [name for name, run in results["benchmarks"].items() if "error" in run]
    report(args, {"results": str(out / "results.json"), "report": str(report_path), "failed": failed},
           f"Report: {report_path} (figures in {out / 'results.json'})"
           + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


# --- wiring ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facechain", description="FaceChain portrait engine (no Discord needed).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group, name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", action="store_true", help="print machine-readable JSON")
        sub.set_defaults(handler=handler)
        return sub

    command(commands, "doctor", cmd_doctor, "check that this machine is ready, with a fix for each problem")

    faces = commands.add_parser("faces", help="detect and compare faces").add_subparsers(
        dest="faces_command", required=True, metavar="ACTION")
    command(faces, "analyze", cmd_faces_analyze, "list the faces in photos").add_argument("paths", nargs="+", metavar="PATH")
    compare = command(faces, "compare", cmd_faces_compare, "are two photos the same person?")
    compare.add_argument("a", metavar="A")
    compare.add_argument("b", metavar="B")

    enroll = command(commands, "enroll", cmd_enroll, "preprocess and store a user's selfies")
    enroll.add_argument("--user", required=True, help="user id (a Discord id, or any name of letters and digits)")
    enroll.add_argument("--subject", choices=sorted(SUBJECTS), help="who is in the photos (sets the trigger phrase)")
    enroll.add_argument("paths", nargs="+", metavar="PATH")

    users = commands.add_parser("users", help="list or forget users").add_subparsers(
        dest="users_command", required=True, metavar="ACTION")
    command(users, "list", cmd_users_list, "list users and what is stored for them")
    command(users, "forget", cmd_users_forget, "delete every file and row of a user").add_argument("user")
    command(users, "show", cmd_users_show, "a user's enrolled photos (numbered) and face model").add_argument("user")
    remove = command(users, "remove-photo", cmd_users_remove_photo,
                     "delete one enrolled photo (its number from `users show`) and queue a retrain on the rest")
    remove.add_argument("user")
    remove.add_argument("number", type=int, metavar="N")
    train = command(commands, "train", cmd_train, "train a user's face LoRA from their enrolled selfies")
    train.add_argument("--user", required=True)
    train.add_argument("--steps", type=int, help="training steps (default: scaled with the number of photos)")
    train.add_argument("--queue", action="store_true", help="queue it for the worker instead (JSON: the job id)")

    fuse = command(commands, "fuse", cmd_fuse, "put the face from selfies onto a template photo")
    fuse.add_argument("--face", nargs="+", required=True, metavar="SELFIE")
    fuse.add_argument("--template", required=True, metavar="T")
    fuse.add_argument("--out", required=True, metavar="O")

    sharper = command(commands, "upscale", cmd_upscale,
                      "a portrait again at twice the size, same style and face (img2img), fused and ranked again")
    sharper.add_argument("--user", required=True)
    sharper.add_argument("portrait", metavar="PORTRAIT", help="a path from `facechain portrait --json`")
    sharper.add_argument("--out", required=True, metavar="OUT", help="folder for the bigger portrait")

    swap = command(commands, "swap", cmd_swap, "put a user's enrolled face on a photo (no trained model needed)")
    swap.add_argument("--user", required=True)
    swap.add_argument("photo", metavar="PHOTO")
    swap.add_argument("--face", type=int, metavar="N", help="which face, numbered left to right (needed when several)")
    swap.add_argument("--out", required=True, metavar="OUT")

    portrait = command(commands, "portrait", cmd_portrait, "draw a user's portraits in a style, ranked by likeness")
    portrait.add_argument("--user", required=True)
    portrait.add_argument("--style", required=True)
    portrait.add_argument("--count", type=int, default=4)
    portrait.add_argument("--seed", type=int)
    portrait.add_argument("--out", metavar="DIR", help="where the portraits go (not needed with --queue)")
    portrait.add_argument("--queue", action="store_true",
                          help="queue the request for the worker instead (JSON: the job id); it waits for a queued "
                               "training; results land in the data folder")
    portrait.add_argument("--prompt", metavar="WORDS", help="your own words, added to the style's prompt (at most 200 "
                                                             "characters)")
    portrait.add_argument("--preview", action="store_true",
                          help="before the face model is trained: the base model with the enrolled face fused on")
    portrait.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                          help="fast mode: the LCM-LoRA in a few steps (default: FACECHAIN_FAST_BY_DEFAULT)")
    portrait.add_argument("--show-flagged", action="store_true",
                          help="keep portraits the safety check (FACECHAIN_SAFETY_CHECKER) flags, marked, "
                               "instead of dropping them")

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

    models = commands.add_parser("models", help="the models the settings name").add_subparsers(
        dest="models_command", required=True, metavar="ACTION")
    pull = command(models, "pull", cmd_models_pull,
                   "download every model the settings name (base, VAE, safety checker, fast-mode and style LoRAs); "
                   "only the files loading reads")
    pull.add_argument("--fp16", action="store_true",
                      help="fetch half-precision weights where offered (default: when this machine would use them)")

    tiny = command(commands, "make-tiny-model", cmd_make_tiny_model,
                   "write a tiny random Stable Diffusion model (for tests; its pictures are noise)")
    tiny.add_argument("folder", metavar="DIR")

    bench = command(commands, "bench", cmd_bench,
                    "run the benchmarks in bench/ and write results.json and a Markdown report with charts")
    bench.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (a few minutes)")
    bench.add_argument("--gpu", action="store_true",
                       help="also the SD1.5-architecture GPU benchmark (needs CUDA; about 10 minutes)")
    bench.add_argument("--only", metavar="NAMES", help="comma-separated: preprocess, engine_tiny, queue_speed, "
                                                       "bot_load, gpu_sd15")
    bench.add_argument("--out", default="bench/results", metavar="DIR", help="where results.json and report.md go")
    bench.add_argument("--gpu-results", metavar="FILE",
                       help="report the figures of a `bench/gpu_sd15.py --json FILE` run made on a GPU machine")

    styles = commands.add_parser("styles", help="the portrait styles").add_subparsers(
        dest="styles_command", required=True, metavar="ACTION")
    command(styles, "list", cmd_styles_list, "list the styles")
    command(styles, "check", cmd_styles_check, "validate every style file and LoRA reference; exit 1 on a problem")
    command(styles, "show", cmd_styles_show, "exactly what generation uses for a style").add_argument("style")
    previews = command(styles, "previews", cmd_styles_previews,
                       "draw a sample per style with the base model (no face), cached for /facechain styles")
    previews.add_argument("--only", metavar="IDS", help="comma-separated style ids (default: every style)")
    previews.add_argument("--force", action="store_true", help="draw again even where a preview exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
        return args.handler(args, settings)
    except FaceChainError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
