"""Model references and the base-pipeline loader, on a tiny model the project writes itself."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.errors import ModelMissing
from engine.models.base_model import load_base_pipeline, plan_memory
from engine.models.references import parse_model_reference, resolve_model_folder

GIB = 2**30


def test_make_tiny_model_cli_writes_a_diffusers_folder(tmp_path, capsys):
    assert main(["make-tiny-model", str(tmp_path / "tiny"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["path"] == str(tmp_path / "tiny")
    assert set(printed["settings"]) == {"FACECHAIN_BASE_MODEL", "FACECHAIN_POSE_CONTROLNET", "FACECHAIN_POSE_DETECTOR",
                                        "FACECHAIN_DEPTH_CONTROLNET", "FACECHAIN_DEPTH_ESTIMATOR", "FACECHAIN_UPSCALER",
                                        "FACECHAIN_INSTANT_ADAPTER", "FACECHAIN_INSTANT_IMAGE_ENCODER",
                                        "FACECHAIN_INSIGHTFACE_MODEL_DIR"}
    assert all(Path(path).exists() for path in printed["settings"].values())  # every new mode runs on them
    from engine.postprocess.super_resolution import read_rrdb

    assert read_rrdb(Path(printed["settings"]["FACECHAIN_UPSCALER"])).scale == 4
    index = json.loads((tmp_path / "tiny" / "model_index.json").read_text())
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    size = sum(p.stat().st_size for p in (tmp_path / "tiny").rglob("*") if p.is_file())
    assert size < 20 * 2**20


def test_the_tiny_model_loads_through_the_production_loader_and_draws(tiny_model, settings):
    base = load_base_pipeline(settings.model_copy(update={"base_model": str(tiny_model), "device": "cpu"}))
    assert base.device == "cpu" and base.plan.dtype_name == "float32"
    images = base.pipeline(["<fcsks>, a man"] * 2, num_inference_steps=2, height=64, width=64,
                           generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 64, 64, 3)
    assert np.isfinite(images).all() and images.std() > 0


def test_a_hugging_face_id_resolves_from_the_hub_cache(tiny_model, tmp_path, monkeypatch):
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny--sd" / "snapshots" / "0123abc"
    shutil.copytree(tiny_model, snapshot)
    (cache / "models--tiny--sd" / "refs").mkdir()
    (cache / "models--tiny--sd" / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert resolve_model_folder(parse_model_reference("tiny/sd")) == snapshot


@pytest.mark.parametrize(
    "reference, message",
    [
        ("./no/such/folder", "FACECHAIN_BASE_MODEL=no/such/folder is not a diffusers model folder"),
        ("nobody/not-downloaded", "Could not get nobody/not-downloaded from Hugging Face"),
        ("modelscope:someone/model", "needs the modelscope package"),
    ],
)
def test_a_missing_model_says_what_to_set(reference, message, monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "modelscope", None)  # an install without it (the case the message is for)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # never touch the network in tests
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelMissing, match=message.replace(".", r"\.")):
        resolve_model_folder(parse_model_reference(reference))


def test_a_corrupted_model_file_is_a_clear_error(tiny_model, tmp_path, settings):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    next((broken / "unet").glob("*.safetensors")).write_bytes(b"not a tensor file")
    with pytest.raises(ModelMissing, match="could not be loaded"):
        load_base_pipeline(settings.model_copy(update={"base_model": str(broken), "device": "cpu"}))


@pytest.mark.parametrize(
    "device, free_gib, expected",
    [
        ("cpu", None, ("float32", False, False, False)),
        ("mps", None, ("float16", True, False, False)),
        ("cuda", 40, ("float16", False, False, False)),
        ("cuda", 7, ("float16", True, True, False)),
        ("cuda", 3.5, ("float16", True, True, True)),
    ],
)
def test_memory_plans_fit_an_8gb_card(device, free_gib, expected):
    plan = plan_memory(device, None if free_gib is None else int(free_gib * GIB))
    assert (plan.dtype_name, plan.attention_slicing, plan.vae_tiling, plan.cpu_offload) == expected
    assert plan_memory("cuda", 40 * GIB, bf16=True).dtype_name == "bfloat16"


def test_memory_savers_follow_each_plan_on_and_off(tiny_model, settings):
    """Savers are set per job to what the plan asks: an out-of-memory retry's savers do not outlive it."""
    from engine.models.base_model import apply_memory_savers

    base = load_base_pipeline(settings.model_copy(update={"base_model": str(tiny_model), "device": "cpu"}))
    assert not base.plan.attention_slicing
    tight = plan_memory("cuda", int(7 * GIB))  # slicing, tiling and sliced decoding, no offload
    apply_memory_savers(base, tight)
    assert base.plan.attention_slicing and base.plan.vae_tiling and not base.plan.cpu_offload
    assert base.pipeline.vae.use_tiling and base.pipeline.vae.use_slicing
    apply_memory_savers(base, plan_memory("cuda", int(40 * GIB)))  # the next job has room: savers off
    assert not base.plan.attention_slicing and not base.plan.vae_tiling
    assert not base.pipeline.vae.use_tiling and not base.pipeline.vae.use_slicing
    assert base.plan.dtype_name == "float32"  # the precision stays as loaded


def test_an_8gb_card_plans_from_what_this_process_may_use(monkeypatch):
    """The plan counts memory this process already holds (its loaded pipeline, torch's cache) as its own:
    an 8 GB card with the pipeline loaded still gets the no-offload plan."""
    import torch

    from engine.models import base_model

    total, others, ours = int(7.6 * GIB), int(0.3 * GIB), int(2.4 * GIB)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (total - others - ours, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: ours)
    monkeypatch.setattr(base_model, "native_bf16", lambda: False)
    plan = base_model.current_plan("cuda")
    assert (plan.attention_slicing, plan.vae_tiling, plan.cpu_offload) == (True, True, False)
    assert "7.3 GiB usable" in plan.reason


@pytest.mark.parametrize("native, capability, expected", [(True, (8, 0), "bfloat16"), (False, (7, 5), "float16")])
def test_bf16_only_where_the_card_has_it_natively(monkeypatch, native, capability, expected):
    """T4 / V100 / RTX 20xx report bf16 through emulation: they get fp16."""
    import torch

    from engine.models import base_model

    def is_bf16_supported(including_emulation=True):
        return True if including_emulation else native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (20 * GIB, 24 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 0)
    assert base_model.current_plan("cuda").dtype_name == expected

    def old_torch(): return True  # no including_emulation before torch 2.4: the capability decides
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_torch)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    assert base_model.current_plan("cuda").dtype_name == expected
