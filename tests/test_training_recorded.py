"""A face model trained from a seed is the same as the recorded run (tests/data/recorded/tiny_training.json):
the training loop may be made faster (fewer host syncs, blocks of random draws), never different."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from engine.config import load_settings
from engine.models.base_model import load_base_pipeline
from engine.models.random_models import make_tiny_model
from engine.training.lora import TrainOptions, TrainProgress, train_face_lora

RECORDED = json.loads((Path(__file__).parent / "data" / "recorded" / "tiny_training.json").read_text())
# Another CPU's BLAS may add in another order: float32 rounding (1e-7 a sum) over 12 steps stays far below 1e-4,
# while any change to the recipe (a draw, the noise, the schedule) moves the losses by percents.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def recorded_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recorded")
    model = make_tiny_model(root / "tiny")  # seed 0, as recorded
    base = load_base_pipeline(load_settings(_env_file=None, base_model=str(model), device="cpu", vae=""))
    rng = np.random.default_rng(0)
    photos = []
    for number in range(2):
        photos.append(root / f"photo{number}.png")
        Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(photos[-1])
    return base, photos, root


def test_training_from_a_seed_gives_the_recorded_loss_curve_and_weights(recorded_setup):
    base, photos, root = recorded_setup
    progress: list[TrainProgress] = []
    options = TrainOptions(steps=12, learning_rate=1e-3, resolution=64, seed=7, checkpoint_every=5)
    result = train_face_lora(base, photos, "<fcsks>, a man", root / "model", options, on_progress=progress.append)
    weights = load_file(str(result.folder / "pytorch_lora_weights.safetensors"))
    recorded_losses = np.array(RECORDED["losses"])
    losses = np.array(json.loads((result.folder / "meta.json").read_text())["loss_curve"])
    assert np.allclose(losses, recorded_losses.round(5), rtol=TOLERANCE, atol=1e-5)
    assert progress[-1].step == 12 and progress[-1].loss == pytest.approx(recorded_losses[-1], rel=TOLERANCE)
    assert sorted(weights) == sorted(RECORDED["weights"])
    for name, (total, magnitude) in RECORDED["weights"].items():
        tensor = weights[name].double()
        assert float(tensor.abs().sum()) == pytest.approx(magnitude, rel=TOLERANCE), name
        assert float(tensor.sum()) == pytest.approx(total, rel=TOLERANCE, abs=TOLERANCE * magnitude), name


def test_a_run_stopped_between_blocks_resumes_to_the_recorded_weights(recorded_setup):
    """Stopped where the loop next looks (after a block of steps), then resumed from its checkpoint: the same face
    model as the uninterrupted recorded run."""
    from engine.training.lora import TrainingCancelled

    base, photos, root = recorded_setup
    options = TrainOptions(steps=12, learning_rate=1e-3, resolution=64, seed=7, checkpoint_every=5)
    seen: list[int] = []
    with pytest.raises(TrainingCancelled) as stopped:
        train_face_lora(base, photos, "<fcsks>, a man", root / "stopped", options,
                        on_progress=lambda p: seen.append(p.step), should_cancel=lambda: bool(seen) and seen[-1] >= 5)
    assert "step 5 of 12" in str(stopped.value)
    result = train_face_lora(base, photos, "<fcsks>, a man", root / "stopped", options)
    assert result.meta["resumed_from_step"] == 5
    weights = load_file(str(result.folder / "pytorch_lora_weights.safetensors"))
    for name, (_, magnitude) in RECORDED["weights"].items():
        assert float(weights[name].double().abs().sum()) == pytest.approx(magnitude, rel=TOLERANCE), name


def test_a_compiled_training_that_fails_goes_on_eagerly_to_the_recorded_weights(recorded_setup, monkeypatch, caplog):
    """FACECHAIN_TRAIN_COMPILE where the compiled step fails (here: a compiled forward that raises, as an op the
    compiler cannot take does): the step is done again eagerly, the run ends as the recorded one, the owner's log
    says so once, and later runs of the process do not try again."""
    import torch

    from engine.training import lora

    base, photos, root = recorded_setup
    compiled = []

    def failing_compile(module, **options):
        compiled.append(options)

        def call(*args, **kwargs):
            raise RuntimeError("cudagraphs: this op cannot be captured")
        module._compiled_call_impl = call

    monkeypatch.setattr(lora, "compiles_on", lambda device: True)
    monkeypatch.setattr(torch.nn.Module, "compile", failing_compile)
    monkeypatch.setattr(lora, "COMPILE_FAILED", False)
    options = TrainOptions(steps=12, learning_rate=1e-3, resolution=64, seed=7, checkpoint_every=5, compile=True)
    with caplog.at_level("WARNING", logger="engine.training.lora"):
        result = train_face_lora(base, photos, "<fcsks>, a man", root / "compiled", options)
        train_face_lora(base, photos, "<fcsks>, a man", root / "again", options)
    assert compiled == [{"mode": "reduce-overhead", "dynamic": False}]  # the second run did not try again
    assert [r.message for r in caplog.records].count(
        "compiled training failed (RuntimeError: cudagraphs: this op cannot be captured); training without "
        "torch.compile from now on") == 1
    assert base.pipeline.unet._compiled_call_impl is None  # the generator draws eagerly
    losses = np.array(json.loads((result.folder / "meta.json").read_text())["loss_curve"])
    assert np.allclose(losses, np.array(RECORDED["losses"]).round(5), rtol=TOLERANCE, atol=1e-5)
