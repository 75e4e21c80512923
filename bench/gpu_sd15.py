"""GPU benchmark on the real SD1.5 architecture with random weights (real FLOPs and memory, no download).

    python bench/gpu_sd15.py                # on a CUDA machine: full settings
    python bench/gpu_sd15.py --smoke        # any machine: tiny settings, checks the script runs

Reports time and peak GPU memory for training a face LoRA on 5 photos and for 4 portraits at
512x512 with 40 DPM-Solver steps (plus an 8-step fast mode), against the targets in the README
of bench/. Pictures from random weights are noise; only time and memory mean anything.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from engine.base_model import load_base_pipeline
from engine.config import load_settings
from engine.faces import get_analyzer
from engine.generate import PortraitGenerator, PortraitRequest
from engine.lora_training import TrainOptions, train_face_lora
from engine.preprocess import UploadedPhoto, preprocess_photos
from engine.random_models import make_sd15_shaped_model
from engine.styles import load_styles

PHOTOS = Path(__file__).parent.parent / "tests" / "data" / "obama"
TARGETS = {"train_5_photos_s": 45.0, "train_peak_gib": 8.0, "portraits_4x40_s": 3.0, "fast_4x8_s": 1.0}


class Meter:
    """Wall time and peak GPU memory of a block."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.peak_gib = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description="SD1.5-shaped GPU benchmark")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and step counts, to check the script")
    parser.add_argument("--photos", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args()
    resolution, train_steps_per_photo, gen_steps, fast_steps = (64, 1, 2, 1) if args.smoke else (512, None, 40, 8)

    scratch = Path(tempfile.mkdtemp(prefix="facechain-sd15-"))
    with Meter(False) as made:
        model = make_sd15_shaped_model(scratch / "sd15")
    settings = load_settings(_env_file=None, data_dir=scratch / "data", base_model=str(model))
    cuda = torch.cuda.is_available()
    with Meter(cuda) as loaded:
        base = load_base_pipeline(settings)
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(f"device: {device_name}; torch {torch.__version__}; dtype {base.plan.dtype_name}; {base.plan.reason}")
    print(f"model written in {made.seconds:.1f} s, loaded in {loaded.seconds:.1f} s")

    uploads = [UploadedPhoto(p.name, p.read_bytes()) for p in sorted(PHOTOS.glob("obama[123].jpg"))]
    accepted = preprocess_photos(uploads, get_analyzer(settings), settings).accepted
    crops = []
    for index in range(args.photos):  # the 3 distinct test selfies, repeated to make up the count
        path = scratch / f"crop{index}.jpg"
        path.write_bytes(accepted[index % len(accepted)].crop_jpeg())
        crops.append(path)
    steps = (train_steps_per_photo or settings.train_steps_per_photo) * args.photos
    steps = min(steps, settings.train_max_steps)
    options = TrainOptions(steps=steps, rank=settings.lora_rank, alpha=settings.lora_alpha,
                           learning_rate=settings.learning_rate, resolution=resolution, checkpoint_every=10**9)
    with Meter(cuda) as trained:
        result = train_face_lora(base, crops, "<fcsks>, a handsome man", scratch / "face", options)
    print(f"train: {args.photos} photos, {steps} steps at {resolution}px: {trained.seconds:.1f} s "
          f"({steps / trained.seconds:.1f} steps/s), peak {trained.peak_gib:.2f} GiB")

    generator = PortraitGenerator(base)
    style = load_styles().get("studio-headshot")
    figures = {"device": device_name, "dtype": base.plan.dtype_name, "train_steps": steps,
               "train_5_photos_s": trained.seconds, "train_peak_gib": trained.peak_gib}
    for label, count, steps_ in (("portraits_4x40_s", 4, gen_steps), ("fast_4x8_s", 4, fast_steps)):
        request = PortraitRequest(style, "a handsome man", result.folder, count=count if not args.smoke else 1,
                                  seed=1, steps=steps_, size=resolution)
        generator.generate(request)  # warm-up: adapter load, kernels
        with Meter(cuda) as drawn:
            generator.generate(request)
        figures[label], figures[label.replace("_s", "_peak_gib")] = drawn.seconds, drawn.peak_gib
        print(f"generate: {request.count} images x {steps_} steps at {resolution}px: {drawn.seconds:.2f} s, "
              f"peak {drawn.peak_gib:.2f} GiB")
    if cuda and not args.smoke:
        for key, target in TARGETS.items():
            verdict = "ok" if figures[key] <= target else "MISSED"
            print(f"target {key}: {figures[key]:.2f} vs {target:g}  {verdict}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
