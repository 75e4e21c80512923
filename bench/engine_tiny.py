"""Portrait engine speed on the tiny model (any machine): training steps/s, generation images/s,
and what an adapter swap costs against reloading the base model.

    python bench/engine_tiny.py

The tiny model's absolute numbers say little about a real GPU (see bench/gpu_sd15.py); the ratios
(swap vs reload, cached vs first load) carry over.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import torch

from engine.base_model import load_base_pipeline
from engine.config import load_settings
from engine.enroll import enroll_user
from engine.faces import get_analyzer
from engine.generate import PortraitGenerator, PortraitRequest
from engine.preprocess import UploadedPhoto
from engine.store import Store
from engine.styles import load_styles
from engine.random_models import make_tiny_model
from engine.train import train_user

PHOTOS = Path(__file__).parent.parent / "tests" / "data" / "obama"
TRAIN_STEPS = 60
IMAGES, GEN_STEPS, SIZE = 4, 10, 64


def seconds(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="facechain-bench-"))
    model = make_tiny_model(scratch / "tiny")
    settings = load_settings(_env_file=None, data_dir=scratch / "data", base_model=str(model), device="cpu",
                             train_resolution=SIZE)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    store = Store(settings.data_dir)
    photos = [UploadedPhoto(p.name, p.read_bytes()) for p in sorted(PHOTOS.glob("obama[123].jpg"))]
    for user in ("a", "b"):
        enroll_user(store, get_analyzer(settings), settings, user, photos, subject="man")

    reload_seconds = min(seconds(lambda: load_base_pipeline(settings)) for _ in range(3))
    base = load_base_pipeline(settings)
    progress = []
    train_seconds = seconds(lambda: progress.append(
        train_user(store, base, settings, "a", steps=TRAIN_STEPS)))
    train_user(store, base, settings, "b", steps=5)
    print(f"training: {TRAIN_STEPS} steps at {SIZE}px in {train_seconds:.2f} s = {TRAIN_STEPS / train_seconds:.1f} "
          "steps/s (including caching latents and the caption once)")

    generator = PortraitGenerator(base)
    style = load_styles().get("cyberpunk")
    faces = [store.ready_face_model(user).path for user in ("a", "b")]

    def draw(face: Path, count: int = IMAGES) -> None:
        generator.generate(PortraitRequest(style, "a handsome man", face, count=count, seed=1, steps=GEN_STEPS,
                                           size=SIZE))

    first_load = seconds(lambda: draw(faces[0], 1)) - seconds(lambda: draw(faces[0], 1))
    draw(faces[1], 1)  # both adapters now cached
    generate_seconds = min(seconds(lambda: draw(faces[0])) for _ in range(3))
    print(f"generation: {IMAGES} images, {GEN_STEPS} steps, {SIZE}px in {generate_seconds:.2f} s = "
          f"{IMAGES / generate_seconds:.1f} images/s")

    swap = min(seconds(lambda: generator._activate(PortraitRequest(style, "x", face))) for face in faces * 3)
    print(f"switching users (cached adapter, set_adapters): {swap * 1000:.1f} ms")
    print(f"loading a face adapter the first time: ~{max(first_load, 0) * 1000:.0f} ms")
    print(f"reloading the base model instead: {reload_seconds * 1000:.0f} ms  ->  swap is "
          f"{reload_seconds / swap:.0f}x cheaper than a reload")


if __name__ == "__main__":
    main()
