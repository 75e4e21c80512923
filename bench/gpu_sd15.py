"""GPU benchmark on the real SD1.5 architecture with random weights (real FLOPs and memory, no download).

    python bench/gpu_sd15.py [--json FILE]        # on a CUDA machine (`facechain bench --gpu` runs it)
    python bench/gpu_sd15.py --smoke              # any machine: the tiny model, to check the script runs

Face-LoRA training for 5 and 20 photos, 4 and 10 portraits at 512x512 with 40 and 8 DPM++ 2M Karras
steps, fast mode (the LCM-LoRA with the LCM scheduler, 6 steps), 4 portraits in a pose (a random
OpenPose ControlNet of the real shape), a swap redrawn by the face model (4 inpainted seeds) and 4 instant
portraits (IP-Adapter FaceID Plus v2 of the real shape, no face model; at 40 steps and in fast mode), then the 4 x 40
case again in fp16
and bf16, with classic attention instead of SDPA, channels-last, and torch.compile. Then the same
5-photo training and 4 portraits with the process capped to 8 GB (an 8 GB card: the planner's plan
for it, the memory fraction set) beside the uncapped run. Each run reports wall time, peak GPU
memory and the achieved TFLOP/s (FLOPs counted with torch's FlopCounterMode) next to the GPU's
datasheet peak. Pictures from random weights are noise; only time and memory mean anything.

The first training is also profiled (torch.profiler, 100 steps against 25): aten ops, host syncs and the
GPU's busy share per step, the figures that show whether the CPU launching kernels sets the pace.

On a short GPU lease, `--measure-steps N` times each training at N/4 and N steps and projects the full
run from the two (fixed cost + per-step cost, the label says so); the figures are written after each
section, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from engine.benchmarks.common import bench_arguments, write_figures
from engine.benchmarks.machine import machine_facts
from engine.config import load_settings
from engine.generation.generate import PortraitGenerator, PortraitRequest
from engine.models.base_model import BasePipeline, apply_memory_savers, load_base_pipeline, native_bf16, plan_memory
from engine.models.random_models import (
    make_random_controlnet,
    make_random_lora,
    make_sd15_shaped_model,
    make_tiny_model,
)
from engine.styles import load_styles
from engine.training.files import WEIGHTS_FILE
from engine.training.lora import TrainOptions, train_face_lora

PHOTOS = Path(__file__).parent.parent / "tests" / "data" / "obama"
TARGETS = {"train_5_photos_s": 45.0, "train_5_photos_peak_gib": 8.0, "portraits_4x40_s": 3.0, "fast_4_s": 1.0,
           "instant_4_s": 1.5}
CAP_GIB = 8.0  # the smallest card the README supports
# Dense fp16/bf16 tensor-core TFLOP/s from the vendors' datasheets; the longest matching name wins.
PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.5, "H100 NVL": 835.5, "H100": 989.4, "A100": 312.0, "L40S": 362.1,
               "L4": 121.0, "A10": 125.0, "RTX 4090": 165.2, "RTX A6000": 154.8, "T4": 65.0}
CAPTION = "<fcsks>, a handsome man"


@dataclass
class Measured:
    label: str
    seconds: float
    peak_gib: float | None
    tflops: float | None  # achieved: counted FLOPs / seconds


def peak_tflops(device_name: str) -> float | None:
    matches = [name for name in PEAK_TFLOPS if name in device_name]
    return PEAK_TFLOPS[max(matches, key=len)] if matches else None


def measure(label: str, action, flops: float | None, cuda: bool) -> Measured:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    action()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    result = Measured(label, round(seconds, 3), peak, achieved_tflops(flops, seconds) if flops else None)
    print(f"{label}: {seconds:.2f} s, peak {peak if peak is not None else '-'} GiB, "
          f"{result.tflops if result.tflops is not None else '-'} TFLOP/s")
    return result


def achieved_tflops(flops: float, seconds: float) -> float:
    """TFLOP/s to three significant figures (a smoke run on a busy CPU gets well under 0.001)."""
    return float(f"{flops / seconds / 1e12:.3g}")


def counted_flops(action) -> float:
    with FlopCounterMode(display=False) as counter:
        action()
    return float(counter.get_total_flops())


def linear_flops(run_with_steps, steps: int) -> float:
    """FLOPs of a run with `steps` steps, from counting 1- and 2-step runs (fixed cost + per step)."""
    one, two = counted_flops(lambda: run_with_steps(1)), counted_flops(lambda: run_with_steps(2))
    return one + (two - one) * (steps - 1)


def timed_training(label: str, train, steps: int, flops: float, cuda: bool, measure_steps: int | None) -> dict:
    """Time `train(steps)`; with `measure_steps` below `steps`, time N/4 and N steps and project the rest."""
    if not measure_steps or measure_steps >= steps:
        return asdict(measure(label, lambda: train(steps), flops, cuda))
    short_steps = max(1, measure_steps // 4)
    short = measure(f"{label}: {short_steps} steps", lambda: train(short_steps), None, cuda)
    long = measure(f"{label}: {measure_steps} steps", lambda: train(measure_steps), None, cuda)
    per_step = (long.seconds - short.seconds) / (measure_steps - short_steps)
    projected = round(short.seconds + per_step * (steps - short_steps), 3)
    print(f"{label}: {projected:.2f} s projected ({per_step * 1000:.0f} ms a step)")
    return asdict(Measured(f"{label} (projected from {short_steps} and {measure_steps})", projected, long.peak_gib,
                           achieved_tflops(flops, projected))) | {"measured_steps": measure_steps}


SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def profiled(run, steps: int, cuda: bool) -> tuple[float, float, float, float]:
    """(aten ops, host syncs, GPU kernel seconds, wall seconds) of `run(steps)`, from torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    began = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as trace:
        run(steps)
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - began
    events = trace.key_averages()
    aten = sum(e.count for e in events if e.key.startswith("aten::"))
    syncs = sum(e.count for e in events if e.key in SYNC_CALLS)  # cudaMemcpy without Async waits for the GPU
    kernel_us = sum(getattr(e, "self_device_time_total", 0) for e in events
                    if str(getattr(e, "device_type", "")).endswith("CUDA"))
    return aten, syncs, kernel_us / 1e6, wall


def step_profile(label: str, run, steps: int, cuda: bool) -> dict:
    """Per step of `run`: aten ops, host syncs and the GPU's busy share, from two profiled runs (`steps` and a
    quarter of them) so the run's fixed part (caching the photos, adding the adapter) drops out."""
    short = max(1, steps // 4)
    run(short)  # warm-up: kernels, autotuning, the allocator
    (ops_short, syncs_short, gpu_short, wall_short), (ops, syncs, gpu, wall) = (profiled(run, n, cuda)
                                                                               for n in (short, steps))
    per_step = steps - short
    figures = {"label": label, "steps": steps, "aten_ops_per_step": round((ops - ops_short) / per_step, 1),
               "host_syncs_per_step": round((syncs - syncs_short) / per_step, 2) if cuda else None,
               "gpu_busy_share": round((gpu - gpu_short) / (wall - wall_short), 3) if cuda else None,
               "ms_per_step_profiled": round(1000 * (wall - wall_short) / per_step, 1)}
    print(f"{label}: {figures['aten_ops_per_step']} aten ops a step, {figures['host_syncs_per_step']} host syncs a "
          f"step, GPU busy {figures['gpu_busy_share']} (under the profiler)")
    return figures


def compiled_training(train, photos: int, steps: int, flops: float, measure_steps: int | None, scratch: Path) -> dict:
    """The training compiled (its first run pays the compile: with --measure-steps the projection's fixed part),
    beside the eager one: its final loss and its weights' distance from the eager run's at the same steps."""
    import numpy as np
    from safetensors.torch import load_file

    from engine.training import lora

    label = f"train {photos} photos, compiled (CUDA graphs)"
    run = timed_training(label, lambda n: train(n, out=scratch / "compiled", compile_=True), steps, flops, True,
                         measure_steps)
    compared = measure_steps or steps
    eager, compiled = train(compared, out=scratch / "eager-same"), train(compared, out=scratch / "compiled",
                                                                        compile_=True)
    a, b = (load_file(str(result.folder / WEIGHTS_FILE)) for result in (eager, compiled))
    distance = float(np.sqrt(sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a))
                     / np.sqrt(sum(float(a[k].float().pow(2).sum()) for k in a)))
    run |= {"photos": photos, "steps": steps, "fell_back_to_eager": lora.COMPILE_FAILED,
            "final_loss_eager": eager.meta["final_loss"], "final_loss_compiled": compiled.meta["final_loss"],
            "weights_relative_distance": round(distance, 5), "compared_at_steps": compared}
    print(f"{label}: final loss {run['final_loss_compiled']} vs eager {run['final_loss_eager']}, weights "
          f"{distance:.2e} apart (relative), fell back: {lora.COMPILE_FAILED}")
    return run


def training_crops(scratch: Path, count: int, size: int = 512) -> list[Path]:
    """`count` square crops of the test selfies (repeated to make up the count). Centre crops, not
    face-aligned ones: timing needs no face model, so the script runs where dlib is not installed."""
    sources = sorted(PHOTOS.glob("obama[123].jpg"))
    crops = []
    for index in range(count):
        with Image.open(sources[index % len(sources)]) as photo:
            side = min(photo.size)
            left, top = (photo.width - side) // 2, (photo.height - side) // 2
            square = photo.convert("RGB").crop((left, top, left + side, top + side)).resize((size, size))
        path = scratch / f"crop{index}.jpg"
        square.save(path, quality=95)
        crops.append(path)
    return crops


def main() -> None:
    parser = bench_arguments(__doc__)
    parser.add_argument("--smoke", action="store_true", help="the tiny model at 64 px: checks the script anywhere")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run (minutes to compile)")
    parser.add_argument("--modes-only", action="store_true",
                        help="only the pose portrait and the redrawn swap (on a face LoRA of two steps)")
    parser.add_argument("--measure-steps", type=int, metavar="N",
                        help="time training at N/4 and N steps and project the full run (a short GPU lease)")
    args = parser.parse_args()
    smoke = args.smoke
    cuda = torch.cuda.is_available()
    resolution, photo_counts, counts, (slow, fast) = (64, (2, 3), (1, 2), (2, 1)) if smoke else \
        (512, (5, 20), (4, 10), (40, 8))

    scratch = Path(tempfile.mkdtemp(prefix="facechain-sd15-"))
    start = time.perf_counter()
    model = make_tiny_model(scratch / "tiny") if smoke else make_sd15_shaped_model(scratch / "sd15")
    # The random model's own VAE (the separate one has the same shape and cost).
    settings = load_settings(_env_file=None, data_dir=scratch / "data", base_model=str(model), vae="")
    base = load_base_pipeline(settings)
    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    peak = peak_tflops(device_name) if cuda else None
    print(f"device: {device_name} (datasheet peak {peak or '?'} TFLOP/s); torch {torch.__version__}; "
          f"dtype {base.plan.dtype_name}; model ready in {time.perf_counter() - start:.0f} s")

    figures = {"measured_on": machine_facts(), "device": device_name, "peak_tflops": peak,
               "dtype": base.plan.dtype_name, "smoke": smoke, "resolution": resolution, "training": [],
               "generation": [], "variants": [], "capped": [], "cap_gib": CAP_GIB}
    training, generation, variants = figures["training"], figures["generation"], figures["variants"]
    crops = training_crops(scratch, max(photo_counts))
    face_folder = None
    if args.modes_only:  # a face LoRA to draw with; its training is not what is measured
        face_folder = scratch / "face"
        train_face_lora(base, crops[:photo_counts[0]], CAPTION, face_folder,
                        TrainOptions(steps=2, rank=settings.lora_rank, alpha=settings.lora_alpha,
                                     learning_rate=settings.learning_rate, resolution=resolution))
    for photos in () if args.modes_only else photo_counts:
        steps = 1 * photos if smoke else min(settings.train_steps_per_photo * photos, settings.train_max_steps)

        def train(steps_: int, photos=photos, out=scratch / f"face{photos}", compile_: bool = False):
            options = TrainOptions(steps=steps_, rank=settings.lora_rank, alpha=settings.lora_alpha,
                                   learning_rate=settings.learning_rate, resolution=resolution,
                                   checkpoint_every=10**9, compile=compile_)
            return train_face_lora(base, crops[:photos], CAPTION, out, options)

        flops = linear_flops(train, steps)
        training.append(timed_training(f"train {photos} photos, {steps} steps at {resolution}px", train, steps,
                                       flops, cuda, args.measure_steps) | {"photos": photos, "steps": steps})
        if photos == photo_counts[0]:  # where the step's time goes: launches, syncs, the GPU's busy share
            figures["training_step_profile"] = step_profile(f"train {photos} photos", train, 8 if smoke else 100,
                                                            cuda)
            if cuda:  # the same training through torch.compile's CUDA graphs (FACECHAIN_TRAIN_COMPILE)
                training.append(compiled_training(train, photos, steps, flops, args.measure_steps, scratch))
        face_folder = face_folder or scratch / f"face{photos}"
        write_figures(args.json, figures)

    # A random LCM-LoRA in the published (kohya) format stands in for latent-consistency/lcm-lora-sdv1-5.
    lcm = make_random_lora(base.pipeline.unet, scratch / "lcm" / WEIGHTS_FILE, rank=64, kohya=True)
    generator = PortraitGenerator(base, fast_lora=str(lcm))
    style = load_styles().get("studio-headshot")

    def request(count: int, steps: int, fast_mode: bool = False, pose=None, instant=None) -> PortraitRequest:
        return PortraitRequest(style, "a handsome man", None if instant else face_folder, count=count, seed=1,
                               steps=steps, size=resolution, fast=fast_mode, pose=pose, instant=instant,
                               guidance=settings.fast_guidance if fast_mode else None)

    def portraits(label: str, count: int, steps: int, fast_mode: bool = False, pose=None, instant=None) -> dict:
        def draw(steps_: int):
            return generator.generate(request(count, steps_, fast_mode, pose, instant))

        draw(steps)  # warm-up: adapter load, kernels, autotuning
        run = measure(label, lambda: draw(steps), linear_flops(draw, steps), cuda)
        return asdict(run) | {"count": count, "steps": steps, "fast": fast_mode, "instant": instant is not None}

    headline = (counts[0], slow)
    figures["modes"] = mode_runs(model, generator, portraits, face_folder, headline, resolution, cuda, scratch)
    write_figures(args.json, figures)
    if args.modes_only:
        return

    generation += [portraits(f"{count} portraits x {steps} steps", count, steps)
                   for steps in (slow, fast) for count in counts]
    fast_steps = 2 if smoke else settings.fast_steps
    generation.append(portraits(f"{counts[0]} portraits, fast mode (LCM-LoRA, {fast_steps} steps)", counts[0],
                                fast_steps, fast_mode=True))
    if cuda and not smoke:
        values = {"train_5_photos_s": training[0]["seconds"], "train_5_photos_peak_gib": training[0]["peak_gib"],
                  "portraits_4x40_s": generation[0]["seconds"],
                  "fast_4_s": next(g["seconds"] for g in generation if g.get("fast")),
                  "instant_4_s": next(m["seconds"] for m in figures["modes"] if m.get("instant"))}
        figures["targets"] = {key: {"target": TARGETS[key], "value": value, "met": value <= TARGETS[key]}
                              for key, value in values.items()}
        for key, verdict in figures["targets"].items():
            print(f"target {key}: {verdict['value']:.2f} vs {verdict['target']:g}  "
                  f"{'met' if verdict['met'] else 'MISSED'}")
    write_figures(args.json, figures)
    variants.append(portraits(f"{base.plan.dtype_name} (as loaded)", *headline))
    unet = base.pipeline.unet
    if cuda:
        for dtype in (torch.float16, torch.bfloat16):
            if dtype != unet.dtype and (dtype != torch.bfloat16 or torch.cuda.is_bf16_supported()):
                loaded = unet.dtype
                base.pipeline.to(dtype=dtype)
                variants.append(portraits(str(dtype).removeprefix("torch."), *headline))
                base.pipeline.to(dtype=loaded)

    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor())
    variants.append(portraits("classic attention (no SDPA)", *headline))
    unet.set_attn_processor(AttnProcessor2_0())
    unet.to(memory_format=torch.channels_last)
    variants.append(portraits("channels-last UNet", *headline))
    unet.to(memory_format=torch.contiguous_format)
    write_figures(args.json, figures)
    if cuda:
        capped_steps = min(training[0]["steps"], args.measure_steps or training[0]["steps"])
        figures["capped"] = capped_runs(base, settings, crops, capped_steps, resolution, portraits, headline)
        write_figures(args.json, figures)
    if cuda and not args.no_compile:  # last: compiling takes minutes and may fail
        variants.append(compiled_run(base, portraits, headline))
    write_figures(args.json, figures)


def mode_runs(model: Path, generator: PortraitGenerator, portraits, face_folder: Path, headline: tuple[int, int],
              resolution: int, cuda: bool, scratch: Path) -> list[dict]:
    """FaceChain's other modes: portraits in a pose (a random ControlNet of the real shape, made from the
    UNet) and a selfie's face redrawn by the face model (inpainting, four seeds)."""
    import numpy as np

    from engine.faces import Face
    from engine.generation.poses import load_poses
    from engine.generation.redraw import REDRAW_CANDIDATES, draw_region, face_region

    generator.pose_controlnet = str(make_random_controlnet(scratch / "controlnet", model))
    runs = [portraits(f"{headline[0]} portraits x {headline[1]} steps in a pose (ControlNet)", *headline,
                      pose=load_poses().get("standing"))]
    photo = np.asarray(Image.open(sorted(PHOTOS.glob("obama[123].jpg"))[0]).convert("RGB"))
    height, width = photo.shape[:2]
    side = min(width, height) // 3  # a face-sized box in the middle: timing needs no face detector
    face = Face(box=(width // 2 - side // 2, height // 3, side, side), score=1.0, landmarks=np.zeros((5, 2)),
                left_eye=np.zeros(2), right_eye=np.zeros(2))
    region = face_region(face, photo.shape)

    def redraw():
        return draw_region(generator, photo, face, region, resolution, face_folder, "a handsome man",
                           list(range(REDRAW_CANDIDATES)))

    redraw()  # warm-up: the inpainting pipeline, kernels
    flops = counted_flops(redraw)
    runs.append(asdict(measure(f"swap redrawn: {REDRAW_CANDIDATES} candidates (inpainting at 0.65)", redraw, flops,
                               cuda)) | {"count": REDRAW_CANDIDATES})
    runs += instant_runs(generator, portraits, headline, scratch)
    return runs


def instant_runs(generator: PortraitGenerator, portraits, headline: tuple[int, int], scratch: Path) -> list[dict]:
    """Instant portraits (IP-Adapter FaceID Plus v2 at its real shapes, random weights; a member's face as it is
    kept: ArcFace's 512 numbers and CLIP ViT-H's 257x1280), without a face model, at the headline and in fast mode."""
    import numpy as np

    from engine.generation.instant import InstantFace
    from engine.models.random_instant import make_random_faceid_adapter

    adapter = make_random_faceid_adapter(generator.base.pipeline.unet, scratch / "faceid" / "plusv2.bin")
    generator.instant_adapter = lambda: adapter
    rng = np.random.default_rng(0)
    identity = rng.standard_normal(512).astype(np.float32)
    face = InstantFace(identity / np.linalg.norm(identity), rng.standard_normal((257, 1280)).astype(np.float32),
                       rng.standard_normal((257, 1280)).astype(np.float32))
    return [portraits(f"{headline[0]} instant portraits x {headline[1]} steps (IP-Adapter FaceID)", *headline,
                      instant=face),
            portraits(f"{headline[0]} instant portraits, fast mode", headline[0], 6, fast_mode=True, instant=face)]


def capped_runs(base: BasePipeline, settings, crops: list[Path], steps: int, resolution: int, portraits,
                headline: tuple[int, int]) -> list[dict]:
    """The 5-photo training and 4 portraits as on an 8 GB card: the process may allocate at most
    CAP_GIB (the loaded pipeline included), with the memory plan the planner picks for such a card."""
    total = torch.cuda.get_device_properties(0).total_memory
    plan = plan_memory("cuda", int(CAP_GIB * 2**30), bf16=native_bf16())
    print(f"capped to {CAP_GIB:g} GiB: {plan.reason}")
    runs = []
    try:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GIB * 2**30 / total))
        apply_memory_savers(base, plan)
        options = TrainOptions(steps=steps, rank=settings.lora_rank, alpha=settings.lora_alpha,
                               learning_rate=settings.learning_rate, resolution=resolution, checkpoint_every=10**9)
        train_label = f"8 GB cap: train 5 photos, {steps} steps"
        runs.append(under_cap(train_label, lambda: asdict(measure(train_label, lambda: train_face_lora(
            base, crops[:5], CAPTION, crops[0].parent / "face-capped", options), None, True))))
        draw_label = f"8 GB cap: {headline[0]} portraits x {headline[1]} steps"
        runs.append(under_cap(draw_label, lambda: portraits(draw_label, *headline)))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        apply_memory_savers(base, plan_memory("cuda", total, bf16=native_bf16()))
    return runs


def under_cap(label: str, run) -> dict:
    try:
        return run()
    except torch.cuda.OutOfMemoryError as error:
        print(f"{label}: out of memory under the cap ({str(error)[:200]})")
        return {"label": label, "error": "out of memory under the 8 GB cap"}


def compiled_run(base: BasePipeline, portraits, headline: tuple[int, int]) -> dict:
    """The headline case with the UNet compiled; the first call (compiling) is timed separately. Compiled
    in place (`Module.compile`): a `torch.compile` wrapper hides the UNet's adapters from peft."""
    unet = base.pipeline.unet
    try:
        unet.compile()
        start = time.perf_counter()
        result = portraits("torch.compile UNet", *headline)
        return result | {"compile_and_first_run_s": round(time.perf_counter() - start - result["seconds"], 1)}
    except Exception as error:  # noqa: BLE001 - a compiler failure is a result to report, not a crash
        print(f"torch.compile failed: {type(error).__name__}: {error}")
        return {"label": "torch.compile UNet", "error": f"{type(error).__name__}: {str(error)[:300]}"}
    finally:
        unet._compiled_call_impl = None  # back to eager: Module.compile has no public undo


if __name__ == "__main__":
    main()
