"""`facechain bench`: the scripts run, their figures land in results.json, and the report draws
every section as Markdown plus PNG charts. (Speed itself is never asserted: see bench/.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.benchmarks.report import write_report
from engine.cli import main

# The real bot, worker processes, the cluster, the full-size model or the benchmarks: skipped by the
# edit loop's quick lane (`pytest -m "not slow"`), run by CI.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
COMMITTED = ROOT / "bench" / "results" / "results.json"


def charts_in(report: Path) -> list[Path]:
    """The chart files the report links to; each must be a real PNG."""
    names = re.findall(r"\(charts/([\w.-]+\.png)\)", report.read_text())
    paths = [report.parent / "charts" / name for name in names]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 400
    return paths


def test_bench_runs_the_chosen_scripts_and_writes_results_and_a_report(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", "--quick", "--only", "preprocess,queue_speed", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == [] and Path(summary["report"]) == out / "report.md"
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and set(results["benchmarks"]) == {"preprocess", "queue_speed"}
    assert results["machine"]["cores"] >= 1 and "torch" in results["machine"]["versions"]
    preprocess = results["benchmarks"]["preprocess"]["figures"]
    assert preprocess["photos_per_s"] > 0 and set(preprocess["stage_ms_per_photo"]) >= {"embed", "decode"}
    queue = results["benchmarks"]["queue_speed"]["figures"]
    assert queue["jobs_per_s"] > 0 and queue["claim_ms_long_history"] > 0
    assert queue["write_lock_ms_per_job_minute"] > 0 and queue["progress_board_write_ms"] > 0
    report = (out / "report.md").read_text()
    assert "## Selfie preprocessing" in report and "## Job queue" in report and "## The bot under load" not in report
    assert "AMD" in report or results["machine"]["cpu"] in report  # every report says what it ran on
    assert "**Not measured in this report:** no CUDA GPU" in report  # says plainly where no GPU was lent
    assert {p.name for p in charts_in(out / "report.md")} == {"preprocess_stages.png", "hot_spots.png"}


def test_the_committed_report_renders_again_from_its_results(tmp_path):
    results = json.loads(COMMITTED.read_text())
    assert set(results["benchmarks"]) >= {"preprocess", "engine_tiny", "queue_speed", "bot_load", "cluster"}
    assert all("error" not in run for run in results["benchmarks"].values())
    report = write_report(results, tmp_path)
    text = report.read_text()
    for section in ("Hot spots", "Selfie preprocessing", "Portrait engine", "Job queue", "The bot under load",
                    "Ray cluster"):
        assert f"## {section}" in text
    assert {"hot_spots.png", "bot_load.png", "adapter_swap.png", "preprocess_stages.png"} <= {
        p.name for p in charts_in(report)}
    assert (ROOT / "bench" / "results" / "report.md").read_text().count("![") == text.count("![")


def test_the_gpu_script_runs_in_smoke_mode_and_its_figures_join_a_report(tmp_path, capsys):
    figures_file = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_sd15.py"), "--smoke", "--json", str(figures_file)],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    figures = json.loads(figures_file.read_text())
    assert figures["smoke"] and [run["photos"] for run in figures["training"]] == [2, 3]
    assert {(run["count"], run["steps"]) for run in figures["generation"]} == {(1, 2), (2, 2), (1, 1), (2, 1)}
    assert [run["label"] for run in figures["generation"] if run["fast"]] == [
        "1 portraits, fast mode (LCM-LoRA, 2 steps)"]  # the real fast mode: LCM-LoRA and its scheduler
    assert figures["capped"] == [] and figures["cap_gib"] == 8.0  # the 8 GB cap needs CUDA
    labels = [run["label"] for run in figures["variants"]]
    assert "classic attention (no SDPA)" in labels and "channels-last UNet" in labels
    assert all(run["tflops"] > 0 for run in figures["training"] + figures["generation"])  # FLOPs were counted
    step = figures["training_step_profile"]  # aten ops a step, from the profiler; syncs and busy share need CUDA
    assert step["aten_ops_per_step"] > 1000 and step["host_syncs_per_step"] is None

    # As from a lent GPU machine: its figures join the report without running anything here.
    out = tmp_path / "report"
    assert main(["bench", "--only", "gpu_sd15", "--gpu-results", str(figures_file), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## GPU: SD1.5 architecture" in report and "Smoke run" in report and "Measured on " in report
    assert "A training step, profiled" in report
    assert [p.name for p in charts_in(out / "report.md")] == ["gpu.png"]
    assert json.loads((out / "results.json").read_text())["benchmarks"]["gpu_sd15"]["ran_elsewhere"] is True
    capsys.readouterr()
    (tmp_path / "wrong.json").write_text('{"photos_per_s": 5}')
    assert main(["bench", "--only", "gpu_sd15", "--gpu-results", str(tmp_path / "wrong.json"), "--out",
                 str(out)]) == 2
    assert "is not the output of `bench/gpu_sd15.py --json`" in capsys.readouterr().err


def test_only_refreshes_the_named_benchmarks_and_keeps_the_others(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    committed = json.loads((ROOT / "bench" / "results" / "results.json").read_text())
    (out / "results.json").write_text(json.dumps(committed))
    figures = committed["benchmarks"]["gpu_sd15"]["figures"] | {"device": "Stand-in GPU"}
    (tmp_path / "gpu.json").write_text(json.dumps(figures))

    assert main(["bench", "--only", "gpu_sd15", "--gpu-results", str(tmp_path / "gpu.json"), "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert merged["benchmarks"]["gpu_sd15"]["figures"]["device"] == "Stand-in GPU"
    assert merged["benchmarks"]["preprocess"] == committed["benchmarks"]["preprocess"]
    assert "## Selfie preprocessing" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--only", "preprocess,warp_drive"], "Unknown benchmark(s): warp_drive"),
    (["--gpu"], "--gpu needs a CUDA GPU"),
])
def test_bench_refuses_what_it_cannot_do(capsys, tmp_path, monkeypatch, argv, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without CUDA, even on one
    assert main(["bench", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_peak_memory_is_the_programs_own():
    """A fresh program reports its own peak, not its (big) parent's pages from before exec."""
    script = ("import json; from engine.memory import peak_rss_mb\n"
              "start = peak_rss_mb(); block = bytearray(300 * 2**20)\n"
              "block[::4096] = b'x' * len(block[::4096]); print(json.dumps([start, peak_rss_mb()]))")
    ballast = bytearray(400 * 2**20)  # make sure the parent is bigger than the child will ever be
    ballast[::4096] = b"x" * len(ballast[::4096])
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    start, peak = json.loads(run.stdout)
    assert start < 200 and peak - start > 280


def test_the_tiny_engine_benchmark_runs(tmp_path):
    """It calls engine internals directly, so a change there must not break it unnoticed."""
    figures_file = tmp_path / "figures.json"
    finished = subprocess.run([sys.executable, str(ROOT / "bench" / "engine_tiny.py"), "--quick", "--json",
                               str(figures_file)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert finished.returncode == 0, finished.stderr[-2000:]
    figures = json.loads(figures_file.read_text())
    assert figures["train_steps_per_s"] > 0 and figures["images_per_s"] > 0 and len(figures["hot_spots"]) == 4


def test_the_sdxl_gpu_script_runs_in_smoke_mode(tmp_path):
    figures_file = tmp_path / "gpu_sdxl.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_sdxl.py"), "--smoke", "--json", str(figures_file)],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    figures = json.loads(figures_file.read_text())
    assert figures["smoke"] and figures["family"] == "sdxl" and figures["cap_gib"] == 12.0
    assert [run["gradient_checkpointing"] for run in figures["training"]] == [True, False]
    assert [run["fast"] for run in figures["generation"]] == [False, True]
    assert all(run["tflops"] > 0 for run in figures["training"] + figures["generation"])
