"""Portrait engine speed on the tiny model (any machine): training steps/s, generation images/s,
what an adapter swap costs against reloading the base model, and the engine's speed-ups measured
against what they replaced (batched candidates, cached training inputs, SDPA attention).

    python bench/engine_tiny.py [--quick] [--json FILE]

The tiny model's absolute numbers say little about a real GPU (see bench/gpu_sd15.py); the ratios
carry over.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from engine.benchmarks.common import bench_arguments, best_seconds, seconds, write_figures
from engine.config import load_settings
from engine.faces import get_analyzer
from engine.generation.generate import PortraitGenerator, PortraitRequest
from engine.models.base_model import load_base_pipeline
from engine.models.random_models import make_tiny_model
from engine.preprocess import UploadedPhoto
from engine.preprocess.enroll import enroll_user
from engine.store import Store
from engine.styles import load_styles
from engine.training.lora import TrainOptions, _cache_inputs
from engine.training.train import train_user

PHOTOS = Path(__file__).parent.parent / "tests" / "data" / "obama"
IMAGES, SIZE = 4, 64


def ms(value: float) -> float:
    return round(value * 1000, 2)


def main() -> None:
    args = bench_arguments(__doc__).parse_args()
    train_steps, gen_steps, rounds = (20, 4, 1) if args.quick else (60, 10, 3)
    scratch = Path(tempfile.mkdtemp(prefix="facechain-bench-"))
    model = make_tiny_model(scratch / "tiny")
    settings = load_settings(_env_file=None, data_dir=scratch / "data", base_model=str(model), vae="", device="cpu",
                             train_resolution=SIZE, one_face_per_member=False)  # two members, one set of photos
    print(f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    store = Store(settings.data_dir)
    photos = [UploadedPhoto(p.name, p.read_bytes()) for p in sorted(PHOTOS.glob("obama[123].jpg"))]
    for user in ("a", "b"):
        enroll_user(store, get_analyzer(settings), settings, user, photos, subject="man")

    reload_seconds = best_seconds(lambda: load_base_pipeline(settings), rounds)
    base = load_base_pipeline(settings)
    train_seconds = seconds(lambda: train_user(store, base, settings, "a", steps=train_steps))
    train_user(store, base, settings, "b", steps=5)
    print(f"training: {train_steps} steps at {SIZE}px in {train_seconds:.2f} s = {train_steps / train_seconds:.1f} "
          "steps/s (including caching latents and the caption once)")

    # What FaceChain's loop pays on every step and ours pays once: a VAE encode of the photo and
    # a text-encoder pass over the caption.
    crop = store.accepted_selfies("a")[0].path
    options = TrainOptions(steps=1, resolution=SIZE)
    encode = best_seconds(lambda: _cache_inputs(base, [crop], "<fcsks>, a man", options, base.execution_device),
                          rounds) / 2  # + mirror
    step = train_seconds / train_steps

    generator = PortraitGenerator(base)
    style = load_styles().get("cyberpunk")
    faces = [store.ready_face_model(user).path for user in ("a", "b")]

    def draw(face: Path | None, count: int = IMAGES) -> None:
        generator.generate(PortraitRequest(style, "a handsome man", face, count=count, seed=1, steps=gen_steps,
                                           size=SIZE))

    first_load = seconds(lambda: draw(faces[0], 1)) - seconds(lambda: draw(faces[0], 1))
    draw(faces[1], 1)  # both adapters now cached
    batched = best_seconds(lambda: draw(faces[0]), rounds)
    one_by_one = best_seconds(lambda: [draw(faces[0], 1) for _ in range(IMAGES)], rounds)
    print(f"generation: {IMAGES} images, {gen_steps} steps, {SIZE}px in {batched:.2f} s = "
          f"{IMAGES / batched:.1f} images/s (one by one: {one_by_one:.2f} s)")

    swap = min(seconds(lambda: generator._activate(PortraitRequest(style, "x", face))) for face in faces * 3)
    print(f"switching users (cached adapter, set_adapters): {swap * 1000:.1f} ms; reloading the base model: "
          f"{reload_seconds * 1000:.0f} ms ({reload_seconds / swap:.0f}x); "
          f"first adapter load ~{first_load * 1000:.0f} ms")

    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet = base.pipeline.unet
    sdpa = best_seconds(lambda: draw(None), rounds)
    unet.set_attn_processor(AttnProcessor())  # the classic matmul-softmax-matmul attention
    classic = best_seconds(lambda: draw(None), rounds)
    unet.set_attn_processor(AttnProcessor2_0())
    print(f"attention: SDPA {sdpa:.2f} s, classic {classic:.2f} s for {IMAGES} images")

    write_figures(args.json, {
        "size_px": SIZE, "train_steps": train_steps, "generation_steps": gen_steps, "images": IMAGES,
        "train_steps_per_s": round(train_steps / train_seconds, 2), "images_per_s": round(IMAGES / batched, 2),
        "adapter_swap_ms": ms(swap), "base_reload_ms": ms(reload_seconds),
        "first_adapter_load_ms": ms(max(first_load, 0)),
        "swap_vs_reload": round(reload_seconds / swap, 1),
        "hot_spots": [
            {"name": f"{IMAGES} candidates ({SIZE} px, {gen_steps} steps)", "before_ms": ms(one_by_one),
             "after_ms": ms(batched), "change": "one batched pipeline call instead of one call per candidate"},
            {"name": f"training step ({SIZE} px)", "before_ms": ms(step + encode), "after_ms": ms(step),
             "change": "photo latents and caption embedding cached once (before = step + the per-step encode, "
                       "both measured)"},
            {"name": "switching user (tiny model)", "before_ms": ms(reload_seconds), "after_ms": ms(swap),
             "change": "face LoRAs kept as named adapters (set_adapters) instead of reloading the base"},
            {"name": f"attention, {IMAGES} portraits ({SIZE} px)", "before_ms": ms(classic), "after_ms": ms(sdpa),
             "change": "scaled_dot_product_attention instead of the classic attention"},
        ],
    })


if __name__ == "__main__":
    main()
