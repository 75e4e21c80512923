"""results.json -> report.md with matplotlib charts (charts/*.png), each stamped with the machine,
the versions and the settings it was measured with."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.errors import FaceChainError

COLOURS = {"before": "#b0b7c3", "after": "#2f7ed8", "target": "#d9534f", "bar": "#2f7ed8", "second": "#f0ad4e"}


def stamp(results: dict) -> str:
    """The line under every chart: what it was measured on, with what."""
    machine, versions = results["machine"], results["machine"]["versions"]
    return (f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; GPU: {machine['accelerator']}; "
            f"torch {versions['torch']}, diffusers {versions['diffusers']}, Python {versions['python']}; "
            f"{'--quick' if results['quick'] else 'full'} run {results['started_at'][:16]}")


class Charts:
    """Saves matplotlib figures under charts/ with the stamp, and remembers their names."""

    def __init__(self, folder: Path, results: dict) -> None:
        try:
            import matplotlib
        except ImportError:
            raise FaceChainError("The report's charts need matplotlib: pip install -e '.[bench]' "
                                 "(results.json is written already).") from None
        matplotlib.use("Agg")
        logging.getLogger("matplotlib").setLevel(logging.WARNING)  # not its font-cache notices
        import matplotlib.pyplot as plt

        self.plt, self.folder, self.stamp = plt, folder, stamp(results)
        folder.mkdir(parents=True, exist_ok=True)

    def figure(self, columns: int = 1, height: float = 3.2):
        figure, axes = self.plt.subplots(1, columns, figsize=(5.2 * columns if columns > 1 else 8, height))
        return figure, axes

    def save(self, figure, name: str) -> str:
        figure.text(0.01, 0.005, self.stamp, fontsize=6, color="#666666", ha="left", va="bottom")
        figure.tight_layout(rect=(0, 0.04, 1, 1))
        figure.savefig(self.folder / name, dpi=110)
        self.plt.close(figure)
        return f"![{name}](charts/{name})"


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def figures_of(results: dict, name: str) -> dict | None:
    return results["benchmarks"].get(name, {}).get("figures")


# --- sections ------------------------------------------------------------------------------------

def preprocess_section(figures: dict, charts: Charts) -> list[str]:
    stages = sorted(figures["stage_ms_per_photo"].items(), key=lambda item: item[1])
    figure, axes = charts.figure()
    axes.barh([name for name, _ in stages], [ms for _, ms in stages], color=COLOURS["bar"])
    axes.set_xlabel("ms per photo")
    axes.set_title(f"Selfie preprocessing: {figures['photos_per_s']} photos/s, time by stage")
    lines = ["## Selfie preprocessing", "",
             f"{figures['photos_per_s']} photos/s end to end ({figures['photos']} photos, best of {figures['rounds']}; "
             f"{figures['backend']} backend; face models load once per process in {figures['face_models_load_s']} s).",
             "", charts.save(figure, "preprocess_stages.png"), ""]
    return lines + table(["stage", "ms per photo"], [[name, ms] for name, ms in reversed(stages)])


def throughput_section(results: dict) -> list[str]:
    rows = [("preprocess", "photos_per_s", "selfies preprocessed"), ("engine_tiny", "train_steps_per_s",
             "training steps (tiny model, 64 px)"), ("engine_tiny", "images_per_s", "portraits (tiny model, 64 px)"),
            ("queue_speed", "jobs_per_s", "queue jobs, enqueue to complete")]
    present = [[label, f"{figures_of(results, name)[key]:g} / s"] for name, key, label in rows
               if figures_of(results, name)]
    return ["## Throughput", ""] + table(["what", "rate"], present) if present else []


def engine_section(figures: dict, charts: Charts) -> list[str]:
    figure, axes = charts.figure(height=2.6)
    labels = ["switch user (cached adapter)", "first adapter load", "reload the base model"]
    values = [figures["adapter_swap_ms"], figures["first_adapter_load_ms"], figures["base_reload_ms"]]
    axes.barh(labels, values, color=[COLOURS["after"], COLOURS["second"], COLOURS["before"]])
    axes.set_xscale("log")
    axes.set_xlabel("ms (log scale)")
    axes.set_title(f"Adapter swap is {figures['swap_vs_reload']:g}x cheaper than a base reload (tiny model)")
    return ["## Portrait engine (tiny model)", "",
            f"Training {figures['train_steps_per_s']} steps/s at {figures['size_px']} px; generation "
            f"{figures['images_per_s']} images/s ({figures['images']} at a time, {figures['generation_steps']} steps). "
            "The tiny model's absolute speed says little about a GPU; the ratios carry over.", "",
            charts.save(figure, "adapter_swap.png"), ""]


def hot_spots_section(results: dict, charts: Charts) -> list[str]:
    spots = [spot for name in results["benchmarks"] for spot in (figures_of(results, name) or {}).get("hot_spots", [])]
    if not spots:
        return []
    figure, axes = charts.figure(height=0.55 * len(spots) + 1.4)
    rows = range(len(spots))
    axes.barh([r + 0.2 for r in rows], [s["before_ms"] for s in spots], height=0.4, color=COLOURS["before"],
              label="before")
    axes.barh([r - 0.2 for r in rows], [s["after_ms"] for s in spots], height=0.4, color=COLOURS["after"],
              label="now")
    axes.set_yticks(list(rows), [s["name"] for s in spots])
    axes.set_xscale("log")
    axes.set_xlabel("ms (log scale)")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("Hot spots: before and after, measured in the same run")
    return ["## Hot spots, before and after", "", charts.save(figure, "hot_spots.png"), ""] + table(
        ["what", "before (ms)", "now (ms)", "faster", "change"],
        [[s["name"], s["before_ms"], s["after_ms"], f"{s['before_ms'] / s['after_ms']:.1f}x", s["change"]]
         for s in spots])


def queue_section(figures: dict) -> list[str]:
    return ["## Job queue", ""] + table(["figure", "value"], [
        ["enqueue", f"{figures['enqueue_per_s']} / s"],
        ["claim + complete", f"{figures['claim_complete_per_s']} / s"],
        ["end to end (no-op jobs)", f"{figures['jobs_per_s']} / s"],
        [f"claim + complete, {figures['claim_queued']} queued, {figures['claim_history']} finished",
         f"{figures['claim_ms_long_history']} ms"],
        ["enqueue while a worker trains, p50 / p99 / max",
         f"{figures['enqueue_while_training_p50_ms']} / {figures['enqueue_while_training_p99_ms']} / "
         f"{figures['enqueue_while_training_max_ms']} ms"],
        *([["the queue's write lock a running job holds a minute (lease beats; progress is on its own board)",
            f"{figures['write_lock_ms_per_job_minute']} ms"]] if "write_lock_ms_per_job_minute" in figures else []),
    ])


def cluster_section(figures: dict) -> list[str]:
    if "skipped" in figures:
        return ["## Ray cluster", "", f"Not measured: {figures['skipped']}.", ""]
    rows = [[f"{run['actors']} actor(s)", f"{run['jobs_per_min']} jobs/min",
             "-" if run["affinity_hit_rate"] is None else f"{100 * run['affinity_hit_rate']:.0f}%"]
            for run in figures["runs"]]
    return ["## Ray cluster", "",
            f"{figures['jobs_per_run']} one-portrait jobs from {figures['members']} members on the tiny model "
            f"({figures['size_px']} px), one actor per node of a local cluster, on {figures['cores']} cores: more "
            "actors than cores cannot scale.", ""] + table(
        ["run", "throughput", "adapter-affinity hits"],
        [["local worker", f"{figures['local_jobs_per_min']} jobs/min", "-"], *rows]) + [
        (f"Dispatch: {figures['dispatch_ms_per_job']} ms per job of a steady backlog beyond the actor's drawing "
         "(target: under 50). " if "dispatch_ms_per_job" in figures else "")
        + f"Against the local worker (1 actor): {figures['dispatch_overhead_ms']} ms per job from "
        "enqueue to done" + (f", {figures['dispatch_overhead_steady_ms']} ms per job of a steady backlog (first start "
                             "to last end)" if "dispatch_overhead_steady_ms" in figures else "")
        + f"; 3 actors against 1: {figures['scaling_3_vs_1']}x.", ""]


def bot_section(figures: dict, charts: Charts) -> list[str]:
    figure, (latency, memory) = charts.figure(columns=2)
    for offset, (prefix, label) in enumerate((("ack", "interaction ack"), ("loop_lag", "event-loop lag"))):
        values = [figures[f"{prefix}_{p}_ms"] for p in ("p50", "p99", "max")]
        latency.bar([x * 3 + offset for x in range(3)], values, color=COLOURS["bar" if offset == 0 else "second"],
                    label=label)
    for key, target in figures["targets"].items():
        latency.axhline(target, color=COLOURS["target"], linestyle="--", linewidth=1)
        latency.text(7.6, target, f"{key.replace('_ms', '').replace('_', ' ')} target {target:g} ms", fontsize=7,
                     va="bottom",
                     ha="right", color=COLOURS["target"])
    latency.set_xticks([0.5, 3.5, 6.5], ["p50", "p99", "max"])
    latency.set_yscale("log")
    latency.set_ylabel("ms (log scale)")
    latency.legend(fontsize=8, loc="upper left")
    latency.set_title(f"{figures['interactions']} interactions, {figures['members']} members, "
                      f"{figures['training_while_measured']} trainings running", fontsize=9)
    processes = [("bot", figures["bot_peak_rss_mb"]), ("worker", figures["worker_peak_rss_mb"])]
    processes = [(name, mb) for name, mb in processes if mb is not None]
    memory.bar([name for name, _ in processes], [mb for _, mb in processes], color=COLOURS["bar"])
    memory.set_ylabel("peak RSS, MB")
    memory.set_title("Peak memory (tiny model, CPU)", fontsize=9)
    verdicts = [[key, f"{figures[key]} ms", f"< {target:g} ms", "met" if figures[key] < target else "MISSED"]
                for key, target in figures["targets"].items()]
    return ["## The bot under load", "",
            "The real bot against the local fake Discord, with its worker training on the same machine.", "",
            charts.save(figure, "bot_load.png"), ""] + table(["figure", "measured", "target", ""], verdicts) + table(
        ["process", "peak RSS"], [[name, f"{mb} MB"] for name, mb in processes]) + backlog_lines(figures.get("backlog"))


def backlog_lines(backlog: dict | None) -> list[str]:
    """The launch night: a community's backlog, and what the bot's one store thread does under it."""
    if not backlog:
        return []
    verdicts = [[key, f"{backlog[key]} ms", f"< {target:g} ms", "met" if backlog[key] < target else "MISSED"]
                for key, target in backlog["targets"].items()]
    verdicts.append(["store thread busy", f"{100 * backlog['store_busy_share']:.1f}% of the time", "", ""])
    return ["### Launch night", "",
            f"{backlog['members']} members, {backlog['queued']} queued requests of which {backlog['watched']} are "
            f"watched (their progress refreshed every 2 s), while the worker trains "
            f"{backlog['trainings_while_measured']} members.", ""] + table(["figure", "measured", "target", ""],
                                                                           verdicts)


def gpu_section(figures: dict, charts: Charts) -> list[str]:
    runs = (figures["training"] + figures["generation"] + figures.get("modes", []) + figures["variants"]
            + figures.get("capped", []))
    measured = [run for run in runs if "error" not in run]
    figure, (seconds, tflops) = charts.figure(columns=2, height=0.45 * len(measured) + 1.6)
    seconds.barh([run["label"] for run in measured], [run["seconds"] for run in measured], color=COLOURS["bar"])
    seconds.invert_yaxis()
    seconds.set_xscale("log")
    seconds.set_xlabel("seconds (log scale)")
    seconds.set_title(f"{figures['device']}, {figures['resolution']} px", fontsize=9)
    with_flops = [run for run in measured if run["tflops"] is not None]
    tflops.barh([run["label"] for run in with_flops], [run["tflops"] for run in with_flops], color=COLOURS["second"])
    tflops.invert_yaxis()
    tflops.set_yticks([])
    if figures["peak_tflops"]:
        tflops.axvline(figures["peak_tflops"], color=COLOURS["target"], linestyle="--", linewidth=1)
        tflops.set_title(f"achieved TFLOP/s (datasheet peak {figures['peak_tflops']:g})", fontsize=9)
    else:
        tflops.set_title("achieved TFLOP/s (peak unknown for this device)", fontsize=9)
    lines = ["## GPU: SD1.5 architecture, random weights", ""]
    if "measured_on" in figures:  # it may have run on another machine than the rest
        where = figures["measured_on"]
        lines += [f"Measured on {where['accelerator']}, {where['cpu']}; torch {where['versions']['torch']}, "
                  f"diffusers {where['versions']['diffusers']}; weights {figures['dtype']}.", ""]
    if figures["smoke"]:
        lines += ["_Smoke run (the tiny model on this machine): it checks the script, its figures mean nothing._", ""]
    elif not figures.get("capped"):
        lines += ["_No 8 GB-capped runs in these figures (made before the script had them)._", ""]
    else:
        lines += [f"The \"8 GB cap\" runs limit the process to {figures.get('cap_gib', 8):g} GiB "
                  "(`torch.cuda.set_per_process_memory_fraction`, the loaded pipeline included) with the memory "
                  "plan the planner picks for an 8 GB card: what a member of a server on such a card waits.", ""]
    lines += [charts.save(figure, "gpu.png"), ""]
    lines += table(["run", "seconds", "peak GiB", "TFLOP/s", "% of peak"], [
        [run["label"], run.get("seconds", "—"), run.get("peak_gib", "—"), run.get("tflops", "—"),
         f"{100 * run['tflops'] / figures['peak_tflops']:.0f}%" if run.get("tflops") and figures["peak_tflops"]
         else "—"] for run in runs])
    errors = [f"- {run['label']}: {run['error']}" for run in runs if "error" in run]
    if step := figures.get("training_step_profile"):
        syncs = "—" if step["host_syncs_per_step"] is None else step["host_syncs_per_step"]
        busy = "—" if step["gpu_busy_share"] is None else f"{step['gpu_busy_share']:.0%}"
        lines += ["", f"A training step, profiled ({step['label']}, {step['steps']} steps against a quarter of them): "
                  f"{step['aten_ops_per_step']} aten ops, {syncs} host syncs, the GPU busy {busy} of the time, "
                  f"{step['ms_per_step_profiled']} ms a step under the profiler.", ""]
    if figures.get("targets"):
        lines += table(["target", "measured", "target", ""], [
            [key, verdict["value"], verdict["target"], "met" if verdict["met"] else "MISSED"]
            for key, verdict in figures["targets"].items()])
    return lines + errors + ([""] if errors else [])


NO_GPU_SECTION = [
    "## GPU: SD1.5 architecture, random weights", "",
    "**Not measured in this report:** no CUDA GPU was available where it was made, so the training, portrait, "
    "fast-mode and 8 GB-capped figures are missing. Run `facechain bench --gpu` on a GPU machine, or "
    "`bench/gpu_sd15.py --json FILE` there and `facechain bench --gpu-results FILE` here.", "",
]


def write_report(results: dict, out_dir: Path) -> Path:
    """report.md (and charts/) in `out_dir` from `results`; returns the report's path."""
    charts = Charts(out_dir / "charts", results)
    machine = results["machine"]
    lines = ["# FaceChain for Discord: benchmark report", "",
             f"Measured {results['started_at']} with `facechain bench{' --quick' if results['quick'] else ''}` on "
             f"{machine['cpu']} ({machine['cores']} cores, {machine['memory_gib']} GiB), "
             f"GPU: {machine['accelerator']}, {machine['os']}.", "",
             "Versions: " + ", ".join(f"{name} {version}" for name, version in machine["versions"].items()) + ".", "",
             "Timings on shared machines are noisy: compare ratios within one run, not numbers across runs.", ""]
    sections = [
        ("preprocess", lambda f: preprocess_section(f, charts)), ("engine_tiny", lambda f: engine_section(f, charts)),
        ("queue_speed", queue_section), ("bot_load", lambda f: bot_section(f, charts)), ("cluster", cluster_section),
        ("gpu_sd15", lambda f: gpu_section(f, charts)),
    ]
    lines += throughput_section(results) + hot_spots_section(results, charts)
    for name, section in sections:
        if figures_of(results, name):
            lines += section(figures_of(results, name))
    if not figures_of(results, "gpu_sd15"):
        lines += NO_GPU_SECTION
    failed = {name: run["error"] for name, run in results["benchmarks"].items() if "error" in run}
    if failed:
        lines += ["## Failed", ""] + [f"- `bench/{name}.py`: {error}" for name, error in failed.items()] + [""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
