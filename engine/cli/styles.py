"""`facechain styles`: list, show, check and draw previews of the portrait styles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from engine.cli.common import command, console, download_bar, print_json, report
from engine.config import Settings
from engine.errors import FaceChainError


def cmd_styles_list(args: argparse.Namespace, settings: Settings) -> int:
    from engine.styles import load_catalogue

    catalogue = load_catalogue(settings)
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
    from engine.generation.generate import build_negative_prompt, build_prompt
    from engine.models.family import FAMILIES, SD15, family_of_reference
    from engine.models.files import NamedModel, where_is
    from engine.training.files import WEIGHTS_FILE

    base = family_of_reference(settings.base_model) or SD15
    loras = [{"role": "face", "reference": "the member's face model", "weight": style.face_weight}]
    if style.lora is not None:
        model = NamedModel("style LoRA", style.lora.reference, style.lora_setting, "file",
                           style.lora.weight_name or WEIGHTS_FILE, style.lora.revision)
        fits = style.lora.fits(base.name)
        loras.append({"role": "style", "reference": style.lora.reference, "file": model.filename,
                      "revision": style.lora.revision, "weight": style.lora.weight, "bases": style.lora.bases,
                      "used": fits, "downloaded": where_is(model) is not None,
                      **({} if fits else {"note": f"made for {', '.join(FAMILIES[b].label for b in style.lora.bases)}; "
                                                  f"on this bot's {base.label} base the style is drawn from its words "
                                                  "alone"})})
    fast_lora = settings.fast_lora_for(base.name)
    fast = NamedModel("fast-mode LoRA", fast_lora, base.fast_setting, "file", WEIGHTS_FILE)
    return {
        "id": style.id, "name": style.name, "family": style.family, "base": base.name,
        "prompt": build_prompt("{trigger}", style), "negative_prompt": build_negative_prompt(style),
        "sampler": style.sampler.model_dump(), "loras": loras,
        "fast_mode": {"sampler": "lcm", "steps": settings.fast_steps, "guidance": settings.fast_guidance,
                      "lora": fast_lora, "weight": 1.0,
                      "downloaded": bool(fast_lora.strip()) and where_is(fast) is not None},
    }


def cmd_styles_show(args: argparse.Namespace, settings: Settings) -> int:
    from engine.styles import load_catalogue

    catalogue = load_catalogue(settings)
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
        if lora.get("note"):
            console.print(f"  not used: {lora['note']}", soft_wrap=True)
    fast = recipe["fast_mode"]
    console.print(f"fast mode: {fast['lora']} at 1, LCM, {fast['steps']} steps, guidance {fast['guidance']:g}"
                  f"{' (downloaded)' if fast['downloaded'] else ' (not downloaded yet)'}", soft_wrap=True)
    return 0


def cmd_styles_previews(args: argparse.Namespace, settings: Settings) -> int:
    from engine.generation.generate import PortraitGenerator
    from engine.generation.preview_drawing import draw_preview
    from engine.generation.previews import preview_file, shown_preview
    from engine.models.base_model import load_base_pipeline
    from engine.styles import load_catalogue

    catalogue = load_catalogue(settings)
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
    from engine.models.files import style_lora_problems
    from engine.styles import load_catalogue

    catalogue = load_catalogue(settings)
    problems = [*catalogue.problems, *style_lora_problems(catalogue)]
    if args.json:
        print_json({"styles": len(catalogue.styles),
                    "problems": [{"path": str(p.path), "field": p.field, "message": p.message} for p in problems]})
    else:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        console.print(f"{len(catalogue.styles)} styles loaded, {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_styles_add(args: argparse.Namespace, settings: Settings) -> int:
    from engine.generation.owner_styles import add_style

    added = add_style(settings, args.id, args.lora, args.prompt, weight=args.weight, negative=args.negative or "",
                      family=args.family, name=args.name, weight_name=args.file, revision=args.revision)
    report(args, {"id": added.style.id, "path": str(added.path), "lora": added.style.lora and
                  added.style.lora.reference},
           f"Style {added.style.id} added at {added.path}; members can pick it now. Its preview is drawn by "
           "`facechain styles previews --only " + added.style.id + "` (or the worker, on a GPU machine).")
    return 0


def cmd_styles_remove(args: argparse.Namespace, settings: Settings) -> int:
    from engine.generation.owner_styles import remove_style

    path = remove_style(settings, args.id)
    report(args, {"id": args.id, "removed": str(path)}, f"Style {args.id} removed ({path}).")
    return 0


def cmd_styles_import(args: argparse.Namespace, settings: Settings) -> int:
    from engine.generation.owner_styles import import_facechain_styles

    added = import_facechain_styles(settings, [Path(path) for path in args.files])
    report(args, [{"id": a.style.id, "path": str(a.path), "lora": a.style.lora and a.style.lora.reference}
                  for a in added],
           f"Imported {len(added)} style(s): {', '.join(a.style.id for a in added)}. `facechain models pull` "
           "fetches their LoRAs.")
    return 0


# --- the commands --------------------------------------------------------------------------------

def register(commands) -> None:
    styles = commands.add_parser("styles", help="the portrait styles").add_subparsers(
        dest="styles_command", required=True, metavar="ACTION")
    command(styles, "list", cmd_styles_list, "list the styles")
    command(styles, "check", cmd_styles_check, "validate every style file and LoRA reference; exit 1 on a problem")
    command(styles, "show", cmd_styles_show, "exactly what generation uses for a style").add_argument("style")
    previews = command(styles, "previews", cmd_styles_previews,
                       "draw a sample per style with the base model (no face), cached for /facechain styles")
    previews.add_argument("--only", metavar="IDS", help="comma-separated style ids (default: every style)")
    previews.add_argument("--force", action="store_true", help="draw again even where a preview exists")
    add = command(styles, "add", cmd_styles_add,
                  "add a style of your own (kept in the data folder): words, and optionally a style LoRA")
    add.add_argument("id", metavar="ID", help="lowercase letters, digits, '-' or '_'")
    add.add_argument("--prompt", required=True, help="the style's words")
    add.add_argument("--lora", metavar="FILE|HUB-ID|modelscope:ID", help="a .safetensors LoRA for Stable Diffusion 1.5")
    add.add_argument("--file", metavar="NAME", help="with a hub --lora: the .safetensors file of the repository")
    add.add_argument("--revision", help="with a hub --lora: a branch, tag or commit")
    add.add_argument("--weight", type=float, default=0.35, help="the LoRA's weight (FaceChain uses 0.25-0.45)")
    add.add_argument("--negative", help="words the style avoids (added to its family's)")
    add.add_argument("--family", default="photo", help="photo, illustration, painting, ... (styles/_families.toml)")
    add.add_argument("--name", help="the name members see (default: from the id)")
    command(styles, "remove", cmd_styles_remove, "remove a style you added").add_argument("id", metavar="ID")
    imported = command(styles, "import", cmd_styles_import, "import FaceChain's own style files (its JSON format)")
    imported.add_argument("files", nargs="+", metavar="FILE.json")
