"""`facechain doctor`, `models pull`, `make-tiny-model` and `bench`: getting a machine ready."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from engine.cli.common import command, console, download_bar, print_json, report
from engine.config import Settings


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from engine.cli.doctor import checks_to_json, run_checks

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


def cmd_models_pull(args: argparse.Namespace, settings: Settings) -> int:
    from engine.errors import ModelUnavailable
    from engine.models.base_model import current_plan
    from engine.models.device import resolve_device
    from engine.models.files import disk_size, fetch, named_models, where_is
    from engine.models.references import hub_silent, parse_model_reference

    half = args.fp16 or current_plan(resolve_device(settings.device)).dtype_name != "float32"
    progress = None if args.json else download_bar()
    rows = []
    silent: dict[str, str | None] = {}  # a hub that does not answer is asked once, then skipped
    for model in named_models(settings):
        row = {"name": model.name, "reference": model.reference, "status": "present", "path": None, "bytes": 0,
               "error": None}
        path = where_is(model)
        hub = parse_model_reference(model.reference).kind
        if path is None and hub != "local" and hub not in silent:
            silent[hub] = hub_silent(hub)
            if silent[hub] and not args.json:
                console.print(f"{silent[hub]}: skipping what comes from there.", soft_wrap=True)
        if path is None and silent.get(hub):
            row.update(status="failed", error=f"{silent[hub]}: not fetched.")
        elif path is None:
            try:
                path = fetch(model, half, (lambda d, t, name=model.name: progress(name, d, t)) if progress else None)
                row["status"] = "downloaded"
            except ModelUnavailable as error:
                row.update(status="failed", error=str(error))
        if path is not None:
            row.update(path=str(path), bytes=disk_size(path))
        rows.append(row)
        if not args.json:
            said = {"present": "already here", "downloaded": "downloaded", "failed": "not available"}[row["status"]]
            where = f" ({row['bytes'] / 1e9:.2f} GB at {row['path']})" if path is not None else f": {row['error']}"
            console.print(f"{model.name} {model.reference}: {said}{where}", soft_wrap=True)
    missing = [row["name"] for row in rows if row["status"] == "failed"]
    if args.json:
        print_json(rows)
    if missing:
        print(f"error: not fetched: {', '.join(missing)}.", file=sys.stderr)
    return 1 if missing else 0


def cmd_make_tiny_model(args: argparse.Namespace, settings: Settings) -> int:
    from engine.models import random_models as make
    from engine.models.random_instant import make_tiny_instant_models

    if args.sdxl:
        from engine.models.random_sdxl import make_tiny_sdxl_model

        folder = make_tiny_sdxl_model(Path(args.folder))
        needed = {"FACECHAIN_BASE_MODEL": str(folder), "FACECHAIN_VAE": "", "FACECHAIN_SDXL_SIZE": "128",
                  "FACECHAIN_UPSCALER": str(make.make_random_rrdb(folder / "upscaler.pth", passthrough=True))}
        report(args, {"path": str(folder), "settings": needed},
               f"Tiny random SDXL model written to {folder} (it carries its own VAE, and an upscaler; poses and pictures "
               "together are SD1.5's). To use it, set:\n" + "\n".join(f"  {name}={value}" for name, value in needed.items()))
        return 0
    folder = make.make_tiny_model(Path(args.folder))
    needed = {"FACECHAIN_BASE_MODEL": str(folder),
              "FACECHAIN_POSE_CONTROLNET": str(make.make_random_controlnet(folder / "controlnet-openpose", folder)),
              "FACECHAIN_POSE_DETECTOR": str(make.make_tiny_pose_detector(folder / "pose-detector")),
              "FACECHAIN_DEPTH_CONTROLNET": str(make.make_random_controlnet(folder / "controlnet-depth", folder, seed=1)),
              "FACECHAIN_DEPTH_ESTIMATOR": str(make.make_tiny_depth_estimator(folder / "depth-estimator")),
              "FACECHAIN_UPSCALER": str(make.make_random_rrdb(folder / "upscaler.pth", passthrough=True)),
              **make_tiny_instant_models(folder / "instant", folder)}
    report(args, {"path": str(folder), "settings": needed},
           f"Tiny random model written to {folder}, with the pose and depth ControlNets, a pose detector (which "
           "finds the same standing person in any photo), a depth estimator, an upscaler (a nearest x4 in "
           "Real-ESRGAN's format) and instant portraits' adapter, image encoder and ArcFace model in it. To use "
           "them, set (and FACECHAIN_POSE_DEPTH=true for depth, FACECHAIN_INSTANT=true for instant portraits):\n"
           + "\n".join(f"  {name}={value}" for name, value in needed.items()))
    return 0


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


# --- the commands --------------------------------------------------------------------------------

def register(commands) -> None:
    command(commands, "doctor", cmd_doctor, "check that this machine is ready, with a fix for each problem")

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
    tiny.add_argument("--sdxl", action="store_true", help="an SDXL-shaped one (two text encoders, time ids)")

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
