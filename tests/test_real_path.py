"""What the real path needs, proved on the tiny model: training under every memory plan, savers per
job, the LoRA scale kept on save, samplers, fast mode, the separate VAE and style-LoRA errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.config import load_settings
from engine.generation.generate import PortraitGenerator, PortraitRequest, StyleUnavailable
from engine.jobs.queue import Job
from engine.jobs.worker import Worker
from engine.models.base_model import apply_memory_savers, load_base_pipeline, plan_memory
from engine.models.random_models import make_random_lora, make_tiny_model
from engine.preprocess.enroll import enroll_user
from engine.styles import StyleLora, load_styles
from engine.training.files import WEIGHTS_FILE
from engine.training.lora import TrainOptions, train_face_lora
from tests.conftest import DATA, photo

GIB = 2**30
OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]
PLANS = {
    "roomy": plan_memory("cuda", 40 * GIB),
    "tight": plan_memory("cuda", 7 * GIB),  # an 8 GB card: slicing, tiling, sliced decoding
    "offload": plan_memory("cuda", 4 * GIB),  # model CPU offload (here onto the CPU itself)
}


@pytest.fixture(scope="module")
def tiny_settings(tiny_model, tmp_path_factory):
    return load_settings(_env_file=None, data_dir=tmp_path_factory.mktemp("real") / "data", device="cpu",
                         base_model=str(tiny_model), vae="", train_resolution=64, portrait_size=64,
                         portrait_candidates=2, job_retry_seconds=0)


@pytest.fixture(scope="module")
def base(tiny_settings):
    return load_base_pipeline(tiny_settings)


@pytest.fixture(scope="module")
def selfies():
    return [DATA / p for p in OBAMA]


def anime(**sampler):
    style = load_styles().get("anime")
    return style.model_copy(update={"sampler": style.sampler.model_copy(update={"steps": 3, **sampler})})


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_training_works_under_every_plan_the_planner_can_pick(base, selfies, tmp_path, plan_name, monkeypatch):
    plan = PLANS[plan_name]
    # diffusers re-arms offload after loading a LoRA on the default accelerator; here the CPU plays it.
    pipeline_class, arm = type(base.pipeline), type(base.pipeline).enable_model_cpu_offload
    monkeypatch.setattr(pipeline_class, "enable_model_cpu_offload",
                        lambda self, gpu_id=None, device=None: arm(self, gpu_id, device or "cpu"))
    apply_memory_savers(base, plan)
    try:
        result = train_face_lora(base, selfies, "<fcsks>, a man", tmp_path / "face", TrainOptions(steps=3,
                                 resolution=64))
        assert (result.folder / WEIGHTS_FILE).is_file() and len(result.meta["loss_curve"]) == 3
        if plan.cpu_offload:  # offload's hooks are back after training, and drawing still works
            assert hasattr(base.pipeline.unet, "_hf_hook")
        images = PortraitGenerator(base).generate(PortraitRequest(style=anime(), trigger="a man",
                                                                  face_model=result.folder, count=2, seed=1, size=64))
        assert len(images) == 2
    finally:
        apply_memory_savers(base, PLANS["roomy"])
    assert not hasattr(base.pipeline.unet, "_hf_hook") and not base.pipeline.vae.use_slicing


def test_an_out_of_memory_retry_turns_every_saver_on_for_that_job_only(tiny_settings):
    worker = Worker(tiny_settings, "plans")

    def job(**params) -> Job:
        return Job(1, "generate", "u", None, None, params, "running", 1, 0.0, "", None, None, False, "now", None,
                   None, None)

    worker._fit_memory(job(low_memory=True))
    assert worker.base.plan.attention_slicing and worker.base.plan.vae_tiling
    assert worker.base.pipeline.vae.use_tiling and worker.base.pipeline.vae.use_slicing
    worker._fit_memory(job())  # the next job plans afresh (the CPU needs no savers)
    assert not worker.base.plan.attention_slicing and not worker.base.pipeline.vae.use_tiling


def test_the_lora_scale_survives_saving_when_alpha_differs_from_rank(base, selfies, tmp_path):
    trained = train_face_lora(base, selfies, "<fcsks>, a man", tmp_path / "face",
                              TrainOptions(steps=2, rank=4, alpha=32, resolution=64))
    generator = PortraitGenerator(base)
    request = PortraitRequest(style=anime(), trigger="a man", face_model=trained.folder, count=1, seed=3, size=64)
    generator.generate(request)
    [adapter] = generator.loaded_adapters
    config = base.pipeline.unet.peft_config[generator._adapters[adapter]]
    assert (config.r, config.lora_alpha) == (4, 32)  # scale 8, as trained (not 1)


def test_portraits_use_dpm_plus_plus_2m_karras_unless_the_style_says_otherwise(base):
    generator = PortraitGenerator(base)
    generator.generate(PortraitRequest(style=anime(), trigger="a man", face_model=None, count=1, seed=1, size=64))
    scheduler = base.pipeline.scheduler
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.use_karras_sigmas and scheduler.config.algorithm_type == "dpmsolver++"
    generator.generate(PortraitRequest(style=anime(name="euler_a"), trigger="a man", face_model=None, count=1,
                                       seed=1, size=64))
    assert type(base.pipeline.scheduler).__name__ == "EulerAncestralDiscreteScheduler"


def test_fast_mode_adds_the_lcm_lora_and_its_scheduler(base, tmp_path):
    fast_lora = make_random_lora(base.pipeline.unet, tmp_path / "lcm" / WEIGHTS_FILE, kohya=True)
    generator = PortraitGenerator(base, fast_lora=str(fast_lora.parent))
    normal = PortraitRequest(style=anime(), trigger="a man", face_model=None, count=1, seed=4, size=64, steps=3)
    plain = np.asarray(generator.generate(normal)[0].image, dtype=np.int16)
    fast = PortraitRequest(style=anime(), trigger="a man", face_model=None, count=1, seed=4, size=64, steps=3,
                           guidance=1.5, fast=True)
    quick = np.asarray(generator.generate(fast)[0].image, dtype=np.int16)
    assert type(base.pipeline.scheduler).__name__ == "LCMScheduler"
    assert generator.loaded_adapters == [f"fast:{fast_lora.parent}"]
    assert np.abs(quick - plain).mean() > 0.5
    with pytest.raises(Exception, match="FACECHAIN_FAST_LORA is empty"):
        PortraitGenerator(base).generate(fast)


def test_the_separate_vae_replaces_the_base_models_own(tiny_model, tmp_path):
    other = make_tiny_model(tmp_path / "other", seed=7) / "vae"
    settings = load_settings(_env_file=None, device="cpu", base_model=str(tiny_model), vae=str(other))
    loaded = load_base_pipeline(settings)
    from diffusers import AutoencoderKL

    expected = AutoencoderKL.from_pretrained(other)
    first = next(iter(expected.state_dict()))
    assert torch.equal(loaded.pipeline.vae.state_dict()[first], expected.state_dict()[first])
    assert loaded.vae_reference == str(other)
    with pytest.raises(Exception, match="FACECHAIN_VAE"):
        load_base_pipeline(settings.model_copy(update={"vae": str(tmp_path / "no-vae")}))


def test_a_missing_style_lora_fails_at_once_in_plain_words_and_tells_the_owner(tiny_settings, analyzer, tmp_path):
    styles = tmp_path / "styles"
    shutil.copytree(load_styles().folder, styles)
    with (styles / "anime.toml").open("a") as toml:
        toml.write(f'\n[lora]\nreference = "{tmp_path / "missing.safetensors"}"\nweight = 0.3\n')
    settings = tiny_settings.model_copy(update={"styles_dir": styles, "data_dir": tmp_path / "data"})
    worker = Worker(settings, "style-lora")
    enroll_user(worker.store, analyzer, settings, "u", [photo(p) for p in OBAMA], subject="man")
    worker.queue.enqueue("train", "u", {"steps": 2})
    job = worker.queue.enqueue("generate", "u", {"style": "anime", "count": 1})
    worker.run(exit_when_idle=0)
    failed = worker.queue.get(job.id)
    assert failed.state == "failed" and failed.attempts == 1  # no retries
    assert failed.error.startswith("The Anime style can't be drawn right now") and "missing.safetensors" not in \
        failed.error
    [problem] = list(worker.store.db["setup_problems"].rows)
    assert problem["key"] == "style anime" and "missing.safetensors" in problem["message"]

    with pytest.raises(StyleUnavailable):
        PortraitGenerator(worker.base).generate(PortraitRequest(
            style=load_styles(styles).get("anime").model_copy(update={"sampler": anime().sampler}), trigger="a man",
            face_model=None, count=1, size=64))


def test_styles_check_validates_every_lora_reference(tmp_path, capsys, monkeypatch):
    styles = tmp_path / "styles"
    shutil.copytree(load_styles().folder, styles)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a tensor file")
    references = {"anime": f'reference = "{tmp_path / "missing.safetensors"}"',
                  "clay": f'reference = "{tmp_path / "garbage.safetensors"}"',
                  "pixel-art": 'reference = "someone/pixel-lora"'}  # a hub file needs its name
    for style_id, reference in references.items():
        with (styles / f"{style_id}.toml").open("a") as toml:
            toml.write(f"\n[lora]\n{reference}\n")
    monkeypatch.setenv("FACECHAIN_STYLES_DIR", str(styles))
    assert main(["styles", "check", "--json"]) == 1
    problems = {p["path"].rsplit("/", 1)[-1]: p["message"] for p in json.loads(capsys.readouterr().out)["problems"]}
    assert "does not exist" in problems["anime.toml"]
    assert "not a .safetensors file" in problems["clay.toml"]
    assert "weight_name is needed" in problems["pixel-art.toml"]


def test_a_hub_style_lora_needs_a_file_name():
    with pytest.raises(ValueError, match="weight_name is needed"):
        StyleLora(reference="someone/pixel-lora")
    assert StyleLora(reference="modelscope:someone/pixel-lora", weight_name="pixel.safetensors").weight_name


def test_a_download_shows_in_the_jobs_progress(tiny_settings):
    worker = Worker(tiny_settings.model_copy(update={"data_dir": tiny_settings.data_dir.parent / "progress"}), "dl")
    worker.queue.enqueue("train", "u", {})
    claimed = worker.queue.claim("dl")
    from engine.jobs.heartbeat import Heartbeat

    worker._beat = Heartbeat(worker.settings, claimed.lease)
    try:
        worker._download_progress("the base model", 1_900_000_000, 4_200_000_000)
        assert worker._beat.text == "getting the base model: 1.9 of 4.2 GB"
    finally:
        worker._beat.stop()
