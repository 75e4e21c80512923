"""GPU benchmark on the real SDXL 1.0 architecture with random weights (real FLOPs and memory, no download).

    python bench/gpu_sdxl.py [--json FILE] [--size 1024|768]   # on a CUDA machine
    python bench/gpu_sdxl.py --smoke                           # any machine: the tiny SDXL model

Face-LoRA training on 5 photos (with gradient checkpointing, as the planner turns it on below 32 GiB,
and without), 4 portraits with 40 DPM++ 2M Karras steps, and fast mode (an LCM-LoRA of the real
shape, 6 steps), at FACECHAIN_SDXL_SIZE (1024 by default; FaceChain's 768 with --size 768). Then
the same training and portraits with the process capped to 12 GB (the card the README names for
SDXL: the planner's plan for it, the memory fraction set). Each run reports wall time, peak GPU
memory and achieved TFLOP/s. Pictures from random weights are noise; only time and memory mean
anything. `--measure-steps N` projects the training from N/4 and N steps on a short GPU lease.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from gpu_sd15 import CAPTION, linear_flops, measure, peak_tflops, timed_training, training_crops

from engine.benchmarks.common import bench_arguments, write_figures
from engine.benchmarks.machine import machine_facts
from engine.config import load_settings
from engine.generation.generate import PortraitGenerator, PortraitRequest
from engine.models.base_model import apply_memory_savers, load_base_pipeline, native_bf16, plan_memory
from engine.models.family import SDXL
from engine.models.random_models import make_random_lora
from engine.models.random_sdxl import make_sdxl_shaped_model, make_tiny_sdxl_model
from engine.styles import load_styles
from engine.training import lora
from engine.training.files import WEIGHTS_FILE
from engine.training.lora import TrainOptions, train_face_lora

CAP_GIB = 12.0  # the smallest card the README names for SDXL


def main() -> None:
    parser = bench_arguments(__doc__)
    parser.add_argument("--smoke", action="store_true", help="the tiny SDXL model at 64 px: checks the script anywhere")
    parser.add_argument("--size", type=int, default=1024, help="side of the training images and portraits")
    parser.add_argument("--measure-steps", type=int, metavar="N",
                        help="time training at N/4 and N steps and project the full run (a short GPU lease)")
    args = parser.parse_args()
    smoke, cuda = args.smoke, torch.cuda.is_available()
    size, photos, (slow, fast) = (64, 2, (2, 1)) if smoke else (args.size, 5, (40, 6))

    scratch = Path(tempfile.mkdtemp(prefix="facechain-sdxl-"))
    start = time.perf_counter()
    model = make_tiny_sdxl_model(scratch / "tiny") if smoke else make_sdxl_shaped_model(scratch / "sdxl")
    # The random model's own VAE (fp16-fix has the same shape and cost) keeps the run offline.
    settings = load_settings(_env_file=None, data_dir=scratch / "data", base_model=str(model), vae="", sdxl_size=size)
    base = load_base_pipeline(settings)
    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"device: {device_name}; torch {torch.__version__}; dtype {base.plan.dtype_name}; {base.plan.reason}; "
          f"model ready in {time.perf_counter() - start:.0f} s")
    figures = {"measured_on": machine_facts(), "device": device_name, "peak_tflops": peak_tflops(device_name),
               "family": base.family.name, "dtype": base.plan.dtype_name, "smoke": smoke, "resolution": size,
               "training": [], "generation": [], "capped": [], "cap_gib": CAP_GIB}
    crops = training_crops(scratch, photos, size=size)
    steps = photos if smoke else min(settings.train_steps_per_photo * photos, settings.train_max_steps)

    def train(steps_: int, out: Path = scratch / "face"):
        options = TrainOptions(steps=steps_, rank=settings.lora_rank, alpha=settings.lora_alpha,
                               learning_rate=settings.learning_rate, resolution=size, checkpoint_every=10**9)
        return train_face_lora(base, crops, CAPTION, out, options)

    flops = linear_flops(train, steps)
    for checkpointing in (True, False):
        room = lora.training_room
        lora.training_room = lambda b, c=checkpointing: lora.TrainingPlan(True, c, "benchmark")
        try:
            label = f"train {photos} photos, {steps} steps at {size}px, checkpointing {'on' if checkpointing else 'off'}"
            figures["training"].append(timed_training(label, train, steps, flops, cuda, args.measure_steps)
                                       | {"photos": photos, "steps": steps, "gradient_checkpointing": checkpointing})
        except torch.OutOfMemoryError as error:
            figures["training"].append({"label": label, "error": f"out of memory: {str(error)[:120]}"})
        finally:
            lora.training_room = room
        write_figures(args.json, figures)

    lcm = make_random_lora(base.pipeline.unet, scratch / "lcm" / WEIGHTS_FILE, rank=64, kohya=True)
    generator = PortraitGenerator(base, fast_lora=str(lcm))
    style = load_styles().get("studio-headshot")

    def portraits(label: str, count: int, steps_: int, fast_mode: bool = False) -> dict:
        def request(s: int) -> PortraitRequest:
            return PortraitRequest(style, "a handsome man", scratch / "face", count=count, seed=1, steps=s, size=size,
                                   fast=fast_mode, guidance=settings.fast_guidance if fast_mode else None)
        generator.generate(request(steps_))  # warm-up: adapter load, kernels
        work = linear_flops(lambda s: generator.generate(request(s)), steps_)
        return asdict(measure(label, lambda: generator.generate(request(steps_)), work, cuda)) | {
            "count": count, "steps": steps_, "fast": fast_mode}

    figures["generation"] += [portraits(f"4 portraits x {slow} steps at {size}px", 4, slow),
                              portraits(f"4 portraits, fast mode (LCM-LoRA, {fast} steps)", 4, fast, True)]
    write_figures(args.json, figures)
    if cuda and not smoke:
        figures["capped"] = capped_runs(base, train, steps, portraits, slow)
    write_figures(args.json, figures)


def capped_runs(base, train, steps: int, portraits, slow: int) -> list[dict]:
    """Training and 4 portraits with the process held to CAP_GIB, under the planner's plan for that card."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GIB * 2**30 / total))
    runs = []
    try:
        apply_memory_savers(base, plan_memory("cuda", int(CAP_GIB * 2**30 * 0.95), bf16=native_bf16(), family=SDXL))
        print(f"capped to {CAP_GIB:g} GB: {base.plan.reason}")
        for label, run in ((f"train at {CAP_GIB:g} GB", lambda: train(min(steps, 50))),
                           (f"4 portraits at {CAP_GIB:g} GB", lambda: portraits("capped", 4, slow))):
            try:
                runs.append(asdict(measure(label, run, None, True)))
            except torch.OutOfMemoryError as error:
                runs.append({"label": label, "error": f"out of memory: {str(error)[:120]}"})
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        apply_memory_savers(base, plan_memory("cuda", total, bf16=native_bf16(), family=SDXL))
    return runs


if __name__ == "__main__":
    main()
