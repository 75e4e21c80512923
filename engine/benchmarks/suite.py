"""Run the scripts in bench/, each in its own process, and gather their figures into results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from engine.benchmarks.machine import machine_facts
from engine.errors import FaceChainError

ROOT = Path(__file__).resolve().parents[2]
# In the order they run: the cheap ones first, so a broken setup shows early.
SCRIPTS = ("preprocess", "engine_tiny", "queue_speed", "bot_load", "cluster")
GPU_SCRIPT = "gpu_sd15"
TIMEOUT_SECONDS = {"quick": 600, "full": 3600}
console = Console(stderr=True)


def bench_folder() -> Path:
    folder = ROOT / "bench"
    if not (folder / f"{SCRIPTS[0]}.py").is_file():
        raise FaceChainError("`facechain bench` runs the scripts in the project's bench/ folder, which this install "
                             "does not have: run it from a source checkout (pip install -e .).")
    return folder


def choose_scripts(only: str | None, gpu: bool) -> list[str]:
    names = [*SCRIPTS, GPU_SCRIPT] if gpu else list(SCRIPTS)
    if not only:
        return names
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in (*SCRIPTS, GPU_SCRIPT)]
    if unknown:
        raise FaceChainError(f"Unknown benchmark(s): {', '.join(unknown)}; "
                             f"choose from {', '.join([*SCRIPTS, GPU_SCRIPT])}.")
    return wanted


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise FaceChainError(f"--gpu needs a CUDA GPU, and torch {torch.__version__} sees none here: run "
                             "`facechain bench --gpu` on the GPU machine (the other benchmarks run anywhere).")


def read_gpu_results(path: Path) -> dict:
    try:
        figures = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FaceChainError(f"Could not read the GPU figures in {path} ({type(error).__name__}): give the file "
                             "`python bench/gpu_sd15.py --json FILE` wrote.") from None
    if not isinstance(figures, dict) or not {"training", "generation", "variants"} <= set(figures):
        raise FaceChainError(f"{path} is not the output of `bench/gpu_sd15.py --json`.")
    return {"figures": figures, "ran_elsewhere": True}


def run_script(folder: Path, name: str, quick: bool) -> dict:
    """One benchmark in a fresh process: its figures, its printed lines and how long it took, or its error."""
    timeout = TIMEOUT_SECONDS["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="facechain-bench-") as scratch:
        figures_file = Path(scratch) / "figures.json"
        command = [sys.executable, str(folder / f"{name}.py"), "--json", str(figures_file)]
        command += ["--quick"] if quick else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        start = time.perf_counter()
        try:
            finished = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"did not finish in {timeout} s"}
        seconds = round(time.perf_counter() - start, 1)
        if finished.returncode != 0 or not figures_file.is_file():
            last_lines = "\n".join((finished.stderr or finished.stdout).strip().splitlines()[-8:])
            return {"seconds": seconds, "error": f"exit {finished.returncode}: {last_lines}"}
        return {"seconds": seconds, "figures": json.loads(figures_file.read_text()), "printed": finished.stdout}


def run_suite(out_dir: Path, quick: bool = False, gpu: bool = False, only: str | None = None,
              gpu_results: Path | None = None) -> dict:
    """Run the chosen benchmarks and write `out_dir`/results.json; returns the results. `gpu_results`
    adds the figures of a gpu_sd15.py run made on another machine (a GPU box) instead of running it."""
    folder = bench_folder()
    names = choose_scripts(only, gpu)
    gpu_run = read_gpu_results(gpu_results) if gpu_results else None
    if GPU_SCRIPT in names and gpu_run is None:
        require_cuda()
    results = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": quick,
               "machine": machine_facts(), "benchmarks": {}}
    earlier = out_dir / "results.json"
    if only and earlier.is_file():  # --only refreshes those benchmarks and keeps the others' figures
        results = json.loads(earlier.read_text())
    if gpu_run is not None:
        names = [name for name in names if name != GPU_SCRIPT]
        results["benchmarks"][GPU_SCRIPT] = gpu_run
    for name in names:
        with console.status(f"running bench/{name}.py{' --quick' if quick else ''} …"):
            run = run_script(folder, name, quick)
        results["benchmarks"][name] = run
        if "error" in run:
            console.print(f"[red]✗ {name}[/red]: {run['error']}", soft_wrap=True)
        else:
            console.print(f"[green]✓ {name}[/green] ({run['seconds']} s)")
            for line in run["printed"].strip().splitlines():
                console.print(f"    {line}", markup=False, highlight=False, soft_wrap=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results
