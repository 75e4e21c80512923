"""`facechain faces`, `portrait`, `upscale`, `swap` and `fuse`: the commands that look at or make pictures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.common import command, console, download_bar, open_store, print_json, read_photo, report
from engine.config import Settings
from engine.errors import FaceChainError
from engine.provenance import save_marked


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


def cmd_fuse(args: argparse.Namespace, settings: Settings) -> int:
    from PIL import Image

    from engine.faces import get_analyzer
    from engine.generation.portrait import picture_path
    from engine.postprocess.fuse_photos import fuse_photos

    result = fuse_photos(get_analyzer(settings), settings, [read_photo(p) for p in args.face], read_photo(args.template))
    out = picture_path(Path(args.out), "fused.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_marked(Image.fromarray(result.image), out, settings.data_dir)
    summary = {"path": str(out), "distance_before": result.distance_before, "distance_after": result.distance_after}
    report(args, summary, f"Wrote {out}: identity distance to the selfies {result.distance_before:.3f} -> "
                          f"{result.distance_after:.3f} (lower is more alike)")
    return 0


def cmd_upscale(args: argparse.Namespace, settings: Settings) -> int:
    from engine.faces import get_analyzer
    from engine.generation.generate import PortraitGenerator
    from engine.generation.upscale import find_portrait, upscale
    from engine.models.base_model import load_base_pipeline
    from engine.styles import load_catalogue

    store = open_store(settings)
    find_portrait(store, args.user, args.portrait)  # before the slow model load
    if args.x4:
        return upscale_x4(args, settings, store)
    generator = PortraitGenerator(load_base_pipeline(settings, on_progress=download_bar()))
    saved = upscale(store, generator, get_analyzer(settings), settings, load_catalogue(settings), args.user,
                    args.portrait, out_dir=Path(args.out))
    report(args, saved.to_json(), f"Wrote {saved.path} at twice the size"
           + (f", likeness {saved.similarity:.0%}." if saved.similarity is not None else "."))
    return 0


def upscale_x4(args: argparse.Namespace, settings: Settings, store) -> int:
    from engine.faces import get_analyzer
    from engine.generation.portrait import save_portraits
    from engine.generation.upscale_x4 import draw_x4, load_configured_upscaler, x4_inputs

    inputs = x4_inputs(store, args.user, args.portrait)
    upscaler = load_configured_upscaler(settings)
    upscaled = draw_x4(upscaler, get_analyzer(settings), settings, inputs)
    [saved] = save_portraits(store, args.user, inputs.style_id, upscaled.drawn.portraits, Path(args.out))
    width, height = upscaled.size
    report(args, {**saved.to_json(), "size": [width, height], "fused_again": upscaled.fused},
           f"Wrote {saved.path} at {width}x{height}"
           + (f", likeness {saved.similarity:.0%}" if saved.similarity is not None else "")
           + (" (the face fused again: it read more like them so)." if upscaled.fused else "."))
    return 0


def cmd_swap(args: argparse.Namespace, settings: Settings) -> int:
    from engine.faces import get_analyzer
    from engine.generation.portrait import picture_path
    from engine.generation.swap import save_swap, swap_face
    from engine.store.families import recorded_family

    store = open_store(settings)
    family = recorded_family(store)
    redraws = family is None or family.draws_scenes  # SDXL pastes the enrolled face (no inpainting model)
    if not args.fast and redraws and store.ready_face_model(args.user) is not None:
        return redraw_swap(args, settings, store)
    result = swap_face(store, get_analyzer(settings), settings, args.user, read_photo(args.photo), args.face)
    out = save_swap(result, picture_path(Path(args.out), f"swap-face{result.face}.png"), settings.data_dir)
    report(args, {"method": "classical", "path": str(out), "face": result.face, "faces_found": result.faces_found,
                  "similarity": result.similarity},
           f"Wrote {out}: face {result.face} of {result.faces_found}, likeness {result.similarity:.0%}.")
    return 0


def redraw_swap(args: argparse.Namespace, settings: Settings, store) -> int:
    """The face redrawn by the user's face model: every result written, the best at `--out`."""
    import random

    from engine.faces import get_analyzer
    from engine.generation.generate import MAX_SEED, PortraitGenerator
    from engine.generation.portrait import enrolled_face, face_model_files, face_model_folder, picture_path
    from engine.generation.redraw import redraw_face
    from engine.generation.swap import choose_face
    from engine.models.base_model import load_base_pipeline

    analyzer = get_analyzer(settings)
    chosen = choose_face(analyzer, settings, read_photo(args.photo), args.face)  # before the slow model load
    model, user = store.ready_face_model(args.user), store.get_user(args.user)
    generator = PortraitGenerator(load_base_pipeline(settings, on_progress=download_bar()))
    with face_model_folder(face_model_files(store, args.user)) as folder:
        ranked = redraw_face(generator, analyzer, settings, enrolled_face(store, analyzer, args.user), chosen.image,
                             chosen.face, folder, model.meta.get("trigger", user.trigger),
                             args.seed if args.seed is not None else random.randint(0, MAX_SEED))
    best = picture_path(Path(args.out), f"swap-face{chosen.number}.png")
    best.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for index, result in enumerate(ranked, start=1):
        path = best if index == 1 else best.with_name(f"{best.stem}-{index}{best.suffix}")
        save_marked(result.image, path, settings.data_dir)
        results.append({"path": str(path), "similarity": result.similarity, "seed": result.seed})
    score, pasted = ranked[0].similarity, bool(ranked[0].pasted)
    likeness = f", likeness {score:.0%}." if score is not None else " (not ranked)."
    report(args, {"method": "pasted" if pasted else "redrawn", "path": results[0]["path"], "face": chosen.number,
                  "faces_found": chosen.faces_found, "similarity": score, "results": results},
           f"Wrote {best}: face {chosen.number} of {chosen.faces_found} pasted from an enrolled selfie, as no "
           f"redrawing by the face model read as the member as well{likeness}" if pasted else
           f"Wrote {len(results)} redrawn by the face model, best first, the best at {best}: face {chosen.number} "
           f"of {chosen.faces_found}{likeness}")
    return 0


def queue_portrait(args: argparse.Namespace, settings: Settings, store, catalogue) -> int:
    """Put a portrait request on the queue, as the bot does; it waits for the user's queued training."""
    from engine.generation.requests import check_pose, check_prompt_words, check_request
    from engine.jobs.queue import open_queue

    queue = open_queue(settings, store)
    training = any(job.kind == "train" for job in queue.active_jobs(user_id=args.user))
    has_model = store.ready_face_model(args.user) is not None
    check_request(store, settings, catalogue, args.user, args.style, args.count,
                  need_model=not (training or args.instant))
    if args.instant:
        instant_face(settings, store, args.user)
    if pose_argument(args.pose)[1] is not None:
        raise FaceChainError("--queue takes a preset pose: a pose photo is read here, so drop --queue for it.")
    check_pose(settings, args.pose)
    params = {"style": args.style, "count": args.count, "seed": args.seed, "fast": args.fast,
              "prompt": check_prompt_words(args.prompt or ""), "wait_for_training": not (has_model or args.instant),
              "pose": args.pose, "instant": args.instant}
    job = queue.enqueue("generate", args.user, params)
    report(args, {"job_id": job.id}, f"Portraits of {args.user} queued as job {job.id}"
                                     + (", after the training queued for them" if not (has_model or args.instant)
                                        else "") + ".")
    return 0


def instant_face(settings: Settings, store, user_id: str) -> bytes:
    """The user's face as instant portraits read it: the one kept for them, else read here (and kept)."""
    from engine.store.members import instant_face_path

    if not settings.instant:
        raise FaceChainError("Instant portraits are off: set FACECHAIN_INSTANT=true (their weights are licensed for "
                             "non-commercial use only: see the README).")
    path = instant_face_path(store, user_id)
    if not path.is_file():
        import numpy as np
        from PIL import Image

        from engine.generation.instant import InstantReader

        photos = [np.asarray(Image.open(selfie.path).convert("RGB")) for selfie in store.accepted_selfies(user_id)]
        face = InstantReader(settings).read(photos).to_bytes()
        store.private_dir(user_id, path.parent.name)
        store.write_private_file(path, face)
    return path.read_bytes()


def pose_argument(value: str | None) -> tuple[str | None, bytes | None]:
    """--pose NAME|PHOTO as (preset name, None) or (None, the photo's bytes): a path to a file is a photo."""
    if value and ("/" in value or "." in value or Path(value).is_file()):
        return None, read_photo(value).data
    return value, None


def cmd_portrait(args: argparse.Namespace, settings: Settings) -> int:
    from engine.faces import get_analyzer
    from engine.generation.generate import PortraitGenerator
    from engine.generation.instant import adapter_file
    from engine.generation.portrait import make_portraits
    from engine.generation.requests import check_pose, check_prompt_words, check_request
    from engine.models.base_model import load_base_pipeline
    from engine.models.safety import load_safety_checker
    from engine.styles import load_catalogue

    store = open_store(settings)
    catalogue = load_catalogue(settings)
    if args.queue:
        return queue_portrait(args, settings, store, catalogue)
    if args.out is None:
        raise FaceChainError("Say where the portraits go with --out DIR (or queue them with --queue).")
    # Before the slow model load; a preview needs enrolled selfies only, no face model.
    check_request(store, settings, catalogue, args.user, args.style, args.count,
                  need_model=not (args.preview or args.instant))
    if (args.preview or args.instant) and not store.accepted_selfies(args.user):
        raise FaceChainError(f"User {args.user} has no enrolled selfies: run `facechain enroll` first.")
    instant = instant_face(settings, store, args.user) if args.instant else None
    words = check_prompt_words(args.prompt or "")
    pose, pose_photo = pose_argument(args.pose)
    check_pose(settings, pose, from_photo=pose_photo is not None)
    base = load_base_pipeline(settings, on_progress=download_bar())
    safety = load_safety_checker(settings, base)
    generator = PortraitGenerator(base, fast_lora=settings.fast_lora_for(base.family.name), pose_controlnet=settings.pose_controlnet,
                                  depth_controlnet=settings.depth_controlnet,
                                  instant_adapter=(lambda: adapter_file(settings)) if args.instant else None)
    result = make_portraits(store, generator, get_analyzer(settings), settings, catalogue, args.user,
                            args.style, count=args.count, seed=args.seed, out_dir=Path(args.out), safety=safety,
                            show_flagged=args.show_flagged, fast=args.fast, words=words, teaser=args.preview,
                            pose=pose, pose_photo=pose_photo, instant=instant)
    if result.notice:
        print(f"notice: {result.notice}", file=sys.stderr)
    if args.json:
        print_json([portrait.to_json() for portrait in result.portraits])
    else:
        for portrait in result.portraits:
            score = "unranked" if portrait.similarity is None else f"similarity {portrait.similarity:.3f}"
            flagged = ", flagged by the safety check" if portrait.nsfw else ""
            posed = f", pose {portrait.pose}" if portrait.pose else ""
            console.print(f"{portrait.path} ({score}, seed {portrait.seed}{posed}{flagged})")
    return 0


# --- the commands --------------------------------------------------------------------------------

def register(commands) -> None:
    faces = commands.add_parser("faces", help="detect and compare faces").add_subparsers(
        dest="faces_command", required=True, metavar="ACTION")
    command(faces, "analyze", cmd_faces_analyze, "list the faces in photos").add_argument("paths", nargs="+", metavar="PATH")
    compare = command(faces, "compare", cmd_faces_compare, "are two photos the same person?")
    compare.add_argument("a", metavar="A")
    compare.add_argument("b", metavar="B")

    fuse = command(commands, "fuse", cmd_fuse, "put the face from selfies onto a template photo")
    fuse.add_argument("--face", nargs="+", required=True, metavar="SELFIE")
    fuse.add_argument("--template", required=True, metavar="T")
    fuse.add_argument("--out", required=True, metavar="OUT", help="a file ending in .png, .jpg or .webp, or a folder to write it in")

    sharper = command(commands, "upscale", cmd_upscale,
                      "a portrait again at twice the size, same style and face (img2img), fused and ranked again; "
                      "with --x4, four times the size through Real-ESRGAN (FACECHAIN_UPSCALER)")
    sharper.add_argument("--x4", action="store_true", help="Upscale x4 instead of Sharper x2")
    sharper.add_argument("--user", required=True)
    sharper.add_argument("portrait", metavar="PORTRAIT", help="a path from `facechain portrait --json`")
    sharper.add_argument("--out", required=True, metavar="OUT", help="a file ending in .png, .jpg or .webp, or a folder to write it in")

    swap = command(commands, "swap", cmd_swap, "put a user's face on a photo: redrawn by their face model when they "
                                               "have one (several results, best first), else their selfie's pasted on")
    swap.add_argument("--user", required=True)
    swap.add_argument("photo", metavar="PHOTO")
    swap.add_argument("--face", type=int, metavar="N", help="which face, numbered left to right (needed when several)")
    swap.add_argument("--out", required=True, metavar="OUT", help="a file ending in .png, .jpg or .webp, or a folder to write it in")
    swap.add_argument("--fast", action="store_true", help="paste the enrolled face on at once, even when the user has "
                                                        "a face model (which otherwise redraws the face)")
    swap.add_argument("--seed", type=int, help="the first seed of the redrawn results")

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
    portrait.add_argument("--pose", metavar="NAME|PHOTO", help="a preset pose (`facechain poses list`) or a photo of "
                                                                "someone in the pose: the portrait is drawn in it, 2 "
                                                                "wide by 3 high")
    portrait.add_argument("--instant", action="store_true",
                          help="an instant portrait: drawn from the enrolled photos alone (IP-Adapter FaceID, needs "
                               "FACECHAIN_INSTANT=true), with or without a face model")
    portrait.add_argument("--preview", action="store_true",
                          help="before the face model is trained: the base model with the enrolled face fused on")
    portrait.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                          help="fast mode: the LCM-LoRA in a few steps (default: FACECHAIN_FAST_BY_DEFAULT)")
    portrait.add_argument("--show-flagged", action="store_true",
                          help="keep portraits the safety check (FACECHAIN_SAFETY_CHECKER) flags, marked, "
                               "instead of dropping them")
