"""SDXL as a second base family, on a tiny random SDXL pipeline: loading, memory plans, training,
drawing, a switch of base, the styles' LoRA bases, and the modes that stay SD1.5's."""

from __future__ import annotations

import hashlib
import json

import pytest
from PIL import Image

from engine.config import load_settings
from engine.errors import FaceChainError, ModelUnavailable
from engine.jobs.worker import Worker
from engine.models.base_model import load_base_pipeline, plan_memory, vae_reference_for
from engine.models.family import SD15, SDXL, family_of_folder, family_of_reference, training_plan
from engine.preprocess.enroll import enroll_user
from engine.store.families import check_draws_scenes, record_family
from tests.conftest import photo

OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]
GIB = 2**30
# Usable GPU memory on an 8, a 12 and a 24 GB card (the driver and the desktop keep some).
EIGHT_GB, TWELVE_GB, TWENTY_FOUR_GB = 7.6, 11.5, 23.5


def small(tmp_path, base, **changes):
    values = {"data_dir": tmp_path / "data", "base_model": str(base), "device": "cpu", "vae": "", "sdxl_size": 64,
              "portrait_size": 64, "train_resolution": 64, "portrait_candidates": 2, "train_steps_per_photo": 2,
              "job_lease_seconds": 3, "job_retry_seconds": 0, "training_previews": False, "face_parser": ""}
    return load_settings(_env_file=None, **(values | changes))


def enrolled(settings, analyzer, user_id="7"):
    from engine.store import Store

    store = Store(settings.data_dir)
    enroll_user(store, analyzer, settings, user_id, [photo(name) for name in OBAMA])
    store.close()


def test_the_family_is_read_from_the_model_and_each_family_loads_its_own_pipeline(tiny_model, tiny_sdxl, tmp_path):
    from engine.cli import main

    assert family_of_folder(tiny_model) is SD15 and family_of_folder(tiny_sdxl) is SDXL
    assert family_of_reference(str(tmp_path / "not-here")) is None
    assert main(["make-tiny-model", "--sdxl", str(tmp_path / "made")]) == 0
    assert family_of_folder(tmp_path / "made") is SDXL
    assert (tmp_path / "made" / "text_encoder_2").is_dir() and (tmp_path / "made" / "tokenizer_2").is_dir()

    base = load_base_pipeline(small(tmp_path, tiny_sdxl))
    assert type(base.pipeline).__name__ == "StableDiffusionXLPipeline" and base.family is SDXL
    # An SD1.5 VAE scales its latents differently: every SDXL picture would come out wrong.
    with pytest.raises(ModelUnavailable, match="Stable Diffusion 1.5 VAE, but the base model is SDXL"):
        load_base_pipeline(small(tmp_path, tiny_sdxl, vae=str(tiny_model / "vae")))
    # Unset, the VAE is SDXL's fp16-safe one in half precision, never the SD1.5 default base's.
    unset = load_settings(_env_file=None, base_model="some/sdxl-model", vae=None)
    assert vae_reference_for(unset, "some/sdxl-model", SDXL, half=True) == "madebyollin/sdxl-vae-fp16-fix"
    assert vae_reference_for(unset, "some/sdxl-model", SDXL, half=False) == ""
    assert vae_reference_for(unset, "some/sd15-model", SD15, half=True) == ""


def test_memory_plans_say_what_runs_on_8_12_and_24_gb_cards(tmp_path, tiny_sdxl):
    from engine.cli.doctor import check_base_family

    eight, twelve, twenty_four = (plan_memory("cuda", int(gib * GIB), family=SDXL)
                                  for gib in (EIGHT_GB, TWELVE_GB, TWENTY_FOUR_GB))
    assert eight.cpu_offload  # SDXL draws on 8 GB only offloaded
    assert twelve.attention_slicing and twelve.vae_tiling and not twelve.cpu_offload
    assert not (twenty_four.attention_slicing or twenty_four.cpu_offload)
    assert not plan_memory("cuda", int(EIGHT_GB * GIB)).cpu_offload  # SD1.5's 8 GB plan is unchanged

    assert not training_plan(SDXL, EIGHT_GB).fits
    assert training_plan(SDXL, TWELVE_GB).fits and training_plan(SDXL, TWELVE_GB).gradient_checkpointing
    assert training_plan(SDXL, TWENTY_FOUR_GB).fits and training_plan(SDXL, TWENTY_FOUR_GB).gradient_checkpointing
    assert not training_plan(SDXL, 80).gradient_checkpointing
    assert training_plan(SD15, EIGHT_GB).fits and training_plan(SDXL, None).fits  # the CPU: slow, but it fits

    settings = small(tmp_path, tiny_sdxl)
    too_small = check_base_family(settings, usable_gib=EIGHT_GB)
    assert too_small.status == "fail" and "SDXL" in too_small.detail and "12 GB" in too_small.fix
    assert check_base_family(settings, usable_gib=TWELVE_GB).status == "ok"


def test_a_card_too_small_for_sdxl_training_makes_the_training_wait_and_tells_the_owner(tiny_sdxl, tmp_path, analyzer,
                                                                                        monkeypatch):
    from engine.models.family import TrainingPlan
    from engine.store.setup_problems import open_setup_problems

    settings = small(tmp_path, tiny_sdxl)
    enrolled(settings, analyzer)
    monkeypatch.setattr("engine.training.lora.training_room",
                        lambda base: training_plan(SDXL, EIGHT_GB) if base.family is SDXL else TrainingPlan(True, False, ""))
    worker = Worker(settings, "small-card")
    job = worker.queue.enqueue("train", "7", {"steps": 2})
    worker.run(exit_when_idle=0)
    waiting = worker.queue.get(job.id)
    assert waiting.state == "queued" and waiting.attempts == 0  # the member's work waits, nothing failed
    [problem] = open_setup_problems(worker.store)
    assert "12 GB" in problem.message and "FACECHAIN_BASE_MODEL" in problem.message


def test_a_face_model_trains_and_draws_on_sdxl(tiny_sdxl, tmp_path, analyzer):
    from safetensors.torch import load_file

    from engine.training.files import WEIGHTS_FILE

    settings = small(tmp_path, tiny_sdxl)
    enrolled(settings, analyzer)
    worker = Worker(settings, "xl")
    train = worker.queue.enqueue("train", "7", {"steps": 4})
    portrait = worker.queue.enqueue("generate", "7", {"style": "cyberpunk", "count": 1, "seed": 1,
                                                      "wait_for_training": True})
    worker.run(exit_when_idle=0)
    assert worker.queue.get(train.id).state == "done", worker.queue.get(train.id).error
    model = worker.store.ready_face_model("7")
    assert model.family == "sdxl" and model.meta["family"] == "sdxl"
    weights = load_file(model.path / WEIGHTS_FILE)
    # On the SDXL UNet, cross-attention reads both text encoders' states side by side (32 + 32 here).
    keys = [key for key in weights if key.endswith("attn2.to_k.lora.down.weight")]
    assert keys and all(weights[key].shape[1] == 64 for key in keys)

    done = worker.queue.get(portrait.id)
    assert done.state == "done", done.error
    [saved] = done.result["portraits"]
    assert Image.open(saved["path"]).size == (64, 64)  # FACECHAIN_SDXL_SIZE, not the SD1.5 portrait size
    assert done.result["sharper"] is False  # the results offer no Sharper x2 (SD1.5's img2img)
    assert any("/7-v1-" in key for key in worker.models.generator.loaded_adapters)  # the face model drew it


@pytest.mark.slow  # two workers and two trainings: CI runs it, the quick lane need not
def test_after_a_switch_of_base_the_next_portrait_waits_for_a_retraining_from_the_selfies(tiny_model, tiny_sdxl,
                                                                                          tmp_path, analyzer):
    from bot.backend import Backend, PortraitOrder
    from bot.messages import progress_line

    before = small(tmp_path, tiny_model)
    enrolled(before, analyzer)
    worker = Worker(before, "sd15")
    worker.queue.enqueue("train", "7", {"steps": 2})
    worker.run(exit_when_idle=0)
    assert worker.store.ready_face_model("7").family == "sd15"

    after = before.model_copy(update={"base_model": str(tiny_sdxl)})
    backend = Backend(after)
    try:
        backend.sync_family()  # the bot reads the family of a base model on this machine
        assert backend.store.ready_face_model("7") is None  # an SD1.5 face model is none for SDXL
        job = backend.order_portrait("7", None, 5, PortraitOrder("cyberpunk", 1, 1, False))
        assert job.params["rebuilding"] and "rebuilt" in progress_line(job, backend.queue.position(job.id))
        assert [j.kind for j in backend.queue.active_jobs(user_id="7")] == ["train", "generate"]
    finally:
        backend.close()

    xl_worker = Worker(after, "sdxl")
    xl_worker.run(exit_when_idle=0)
    done = xl_worker.queue.get(job.id)
    assert done.state == "done", done.error
    model = xl_worker.store.ready_face_model("7")
    assert (model.version, model.family) == (2, "sdxl")
    assert len(xl_worker.store.accepted_selfies("7")) == 3  # nothing enrolled is lost


@pytest.mark.slow  # two workers and two trainings: CI runs it, the quick lane need not
def test_a_job_queued_before_the_switch_waits_for_the_retraining_instead_of_failing(tiny_model, tiny_sdxl, tmp_path,
                                                                                     analyzer):
    before = small(tmp_path, tiny_model)
    enrolled(before, analyzer)
    worker = Worker(before, "sd15")
    worker.queue.enqueue("train", "7", {"steps": 2})
    worker.run(exit_when_idle=0)
    portrait = worker.queue.enqueue("generate", "7", {"style": "cyberpunk", "count": 1, "seed": 2})

    xl_worker = Worker(before.model_copy(update={"base_model": str(tiny_sdxl)}), "sdxl")
    xl_worker.run(exit_when_idle=0)
    done = xl_worker.queue.get(portrait.id)
    assert done.state == "done" and done.params["rebuilding"] and done.attempts == 1
    assert xl_worker.store.ready_face_model("7").family == "sdxl"


def test_styles_say_which_base_their_lora_fits_and_are_drawn_from_their_words_on_another(tiny_model, tiny_sdxl,
                                                                                        tmp_path, capsys, monkeypatch):
    from diffusers import UNet2DConditionModel

    from engine.cli import main
    from engine.generation.generate import PortraitGenerator, PortraitRequest
    from engine.models.random_models import make_random_lora
    from engine.styles import Style

    for base, used in ((tiny_model, False), (tiny_sdxl, True)):  # flower-fields ships with FaceChain's SDXL LoRA
        monkeypatch.setenv("FACECHAIN_BASE_MODEL", str(base))
        assert main(["styles", "show", "flower-fields", "--json"]) == 0
        [style_lora] = [lora for lora in json.loads(capsys.readouterr().out)["loras"] if lora["role"] == "style"]
        assert style_lora["bases"] == ["sdxl"] and style_lora["used"] is used
    monkeypatch.setenv("FACECHAIN_BASE_MODEL", str(tiny_model))
    assert main(["styles", "show", "flower-fields"]) == 0
    assert "drawn from its words alone" in capsys.readouterr().out

    generator = PortraitGenerator(load_base_pipeline(small(tmp_path, tiny_sdxl)))
    sd15_lora = make_random_lora(UNet2DConditionModel.from_pretrained(tiny_model / "unet"), tmp_path / "sd15.safetensors")
    xl_lora = make_random_lora(generator.base.pipeline.unet, tmp_path / "xl.safetensors", kohya=True)

    def style(lora, bases):
        return Style(id="s", name="S", description="d", prompt="a portrait",
                     lora={"reference": str(lora), "weight": 0.5, "bases": bases})

    # An SD1.5 LoRA on SDXL would not even load: it is left out, and the style drawn from its words.
    generator.generate(PortraitRequest(style(sd15_lora, ["sd15"]), "man", None, count=1, seed=1, size=64, steps=1))
    assert generator.loaded_adapters == []
    generator.generate(PortraitRequest(style(xl_lora, ["sdxl"]), "man", None, count=1, seed=1, size=64, steps=1))
    digest = hashlib.sha256(xl_lora.read_bytes()).hexdigest()  # a file on this machine is cached by its content
    assert generator.loaded_adapters == [f"style:sha256:{digest}"]


def test_fast_mode_on_sdxl_uses_the_sdxl_lcm_lora(tiny_sdxl, tmp_path):
    from engine.generation.generate import PortraitGenerator, PortraitRequest
    from engine.models.random_models import make_random_lora
    from engine.styles import Style

    settings = small(tmp_path, tiny_sdxl)
    assert settings.fast_lora_for("sdxl") == "latent-consistency/lcm-lora-sdxl"
    base = load_base_pipeline(settings)
    style = Style(id="s", name="S", description="d", prompt="a portrait")
    request = PortraitRequest(style, "man", None, count=1, seed=1, size=64, steps=2, guidance=1.0, fast=True)
    with pytest.raises(ModelUnavailable, match="FACECHAIN_FAST_LORA_SDXL is empty"):
        PortraitGenerator(base, fast_lora="").generate(request)
    lcm = make_random_lora(base.pipeline.unet, tmp_path / "lcm-sdxl.safetensors", kohya=True)
    generator = PortraitGenerator(base, fast_lora=str(lcm))
    [candidate] = generator.generate(request)
    assert candidate.image.size == (64, 64) and generator.loaded_adapters == [f"fast:{lcm}"]


def test_an_owners_style_lora_must_fit_the_running_family(tiny_model, tiny_sdxl, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from engine.generation.owner_styles import add_style, import_facechain_styles
    from engine.models.random_models import make_random_lora

    settings = small(tmp_path, tiny_sdxl)
    xl_lora = make_random_lora(UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet"), tmp_path / "xl.safetensors")
    sd15_lora = make_random_lora(UNet2DConditionModel.from_pretrained(tiny_model / "unet"), tmp_path / "sd.safetensors")
    added = add_style(settings, "xl-look", str(xl_lora), "bright studio portrait")
    assert added.style.lora.bases == ["sdxl"] and 'bases = ["sdxl"]' in added.path.read_text()
    with pytest.raises(FaceChainError, match="a LoRA made for SDXL is needed"):
        add_style(settings, "old-look", str(sd15_lora), "bright studio portrait")
    assert not (settings.data_dir / "styles" / "old-look.toml").exists()

    folder = tmp_path / "facechain" / "styles" / "sdxl_1.0"  # FaceChain keeps its SDXL styles here
    folder.mkdir(parents=True)
    (folder / "Mecha.json").write_text(json.dumps({
        "name": "机甲风(Mecha style)", "img": "./style_image/Mecha.jpg", "model_id": "damo/cv_sdxl_lora",
        "revision": "v1.0.0", "bin_file": "mecha-000009.safetensors", "multiplier_style": 0.55,
        "multiplier_human": 0.9, "add_prompt_style": "mecha armor, futuristic hangar, dramatic rim light"}))
    [imported] = import_facechain_styles(settings, [folder / "Mecha.json"])
    assert imported.style.lora.bases == ["sdxl"] and imported.style.lora.weight == 0.55


def test_poses_scenes_and_redraws_stay_sd15s_and_say_so_in_plain_words(tiny_sdxl, tmp_path, analyzer):
    from bot.backend import Backend, PortraitOrder, TogetherOrder
    from engine.generation.portrait import portrait_inputs
    from engine.generation.upscale import upscale_inputs
    from engine.models.family import scenes_unavailable
    from engine.styles import load_catalogue

    settings = small(tmp_path, tiny_sdxl)
    enrolled(settings, analyzer)
    enrolled(settings, analyzer, "8")
    backend = Backend(settings)
    try:
        backend.sync_family()
        with pytest.raises(FaceChainError) as refused:
            check_draws_scenes(backend.store)
        assert str(refused.value) == scenes_unavailable(SDXL)
        assert "SDXL" in str(refused.value) and "FACECHAIN" not in str(refused.value)
        backend.queue.enqueue("train", "7", {})  # a portrait may wait for it
        with pytest.raises(FaceChainError, match="not poses"):
            backend.check_portrait("7", None, PortraitOrder("cyberpunk", 1, None, False, pose="standing"))
        with pytest.raises(FaceChainError, match="not poses"):
            backend.check_together("7", None, TogetherOrder("8"), on_photo=False)
        assert not backend.redraws_faces("7")  # /facechain swap pastes the selfie's face instead
        # The engine refuses them too (the CLI, a job queued before the switch).
        with pytest.raises(FaceChainError, match="not poses"):
            portrait_inputs(backend.store, settings, load_catalogue(settings), "7", "cyberpunk", count=1, pose="standing")
        with pytest.raises(FaceChainError, match="not poses"):
            upscale_inputs(backend.store, settings, load_catalogue(settings), "7", 1)
        record_family(backend.store, SD15)
        check_draws_scenes(backend.store)
    finally:
        backend.close()
