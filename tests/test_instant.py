"""Instant portraits (IP-Adapter FaceID Plus v2): random weights in the real file formats, through the production
loaders: the adapter's `.bin` (its LoRA inside), a small CLIP vision model, an ArcFace-shaped ONNX model."""

import numpy as np
import pytest

from engine.config import load_settings
from engine.jobs.worker import Worker
from engine.preprocess.enroll import enroll_user
from tests.conftest import DATA, image_array, photo

OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]
BIDEN = ["biden/biden1.jpg", "biden/biden2.jpg"]


def instant_settings(tiny_model, instant_models, tmp_path, **overrides):
    values = {"instant": True, "instant_adapter": instant_models["FACECHAIN_INSTANT_ADAPTER"],
              "instant_image_encoder": instant_models["FACECHAIN_INSTANT_IMAGE_ENCODER"],
              "insightface_model_dir": instant_models["FACECHAIN_INSIGHTFACE_MODEL_DIR"]}
    return load_settings(_env_file=None, data_dir=tmp_path / "data", base_model=str(tiny_model), device="cpu",
                         vae="", train_resolution=64, portrait_size=64, portrait_candidates=2, job_retry_seconds=0,
                         **values | overrides)


@pytest.fixture
def settings_on(tiny_model, instant_models, tmp_path):
    return instant_settings(tiny_model, instant_models, tmp_path)


def read_face(settings, photos):
    from engine.generation.instant import InstantReader

    return InstantReader(settings).read([image_array(p) for p in photos])


def draw(generator, face, seed=7):
    from engine.generation.generate import PortraitRequest
    from engine.styles import load_styles

    request = PortraitRequest(style=load_styles().get("anime"), trigger="a man", face_model=None, count=2, seed=seed,
                              steps=2, size=64, instant=face)
    return np.stack([np.asarray(candidate.image, np.float32) for candidate in generator.generate(request)])


def test_the_instant_embedding_draws_each_members_face_and_a_plain_request_draws_as_if_the_adapter_were_absent(
        settings_on):
    """Same seed, two members: different faces. The adapter loaded, a request without it draws exactly the
    picture drawn before it was loaded (its attention and its LoRA are put aside)."""
    obama, biden = read_face(settings_on, OBAMA), read_face(settings_on, BIDEN)
    assert obama.identity.shape == (512,) and abs(float(np.linalg.norm(obama.identity)) - 1) < 1e-5
    assert obama.structure.shape == (257, 32) and obama.structure_unconditional.shape == (257, 32)
    assert float(obama.identity @ biden.identity) < 0.999  # two people read as two vectors
    worker = Worker(settings_on, "instant")
    plain_before = draw(worker.generator, None)
    drawn_obama, drawn_biden = draw(worker.generator, obama), draw(worker.generator, biden)
    plain_after = draw(worker.generator, None)
    assert np.array_equal(plain_before, plain_after)
    assert np.abs(drawn_obama - plain_before).mean() > 0.5 and np.abs(drawn_obama - drawn_biden).mean() > 0.5
    assert np.array_equal(drawn_obama, draw(worker.generator, obama))  # a seed still gives its picture


def test_enrolling_reads_the_face_once_and_the_preview_while_training_is_an_instant_portrait(settings_on, tmp_path,
                                                                                              monkeypatch):
    """The face is read by a job of its own, before the preview and the training; the preview is drawn from it
    alone (neither ArcFace nor the image encoder is loaded where it is drawn) and says what it is."""
    from engine.generation import instant
    from engine.store.members import instant_face_path
    from tests.test_worker import uploads

    worker = Worker(settings_on, "enroller")
    enroll = worker.queue.enqueue("enroll", "42", {"uploads": uploads(settings_on, OBAMA), "subject": "man",
                                                   "train_after": True})
    worker.run_job(worker.queue.claim("w"))
    result = worker.queue.get(enroll.id).result
    order = [result["instant_job_id"], result["teaser_job_id"], result["train_job_id"]]
    assert order == sorted(order)
    read = worker.queue.claim("w")
    assert read.kind == "instant"
    worker.run_job(read)
    assert worker.queue.get(read.id).state == "done", worker.queue.get(read.id).error
    face_file = instant_face_path(worker.store, "42")
    assert face_file.is_file() and face_file.stat().st_mode & 0o077 == 0  # the member's own, like their selfies

    def never(*args, **kwargs):
        raise AssertionError("a drawing loaded the face reader")

    monkeypatch.setattr(instant, "InstantReader", never)
    drawer = Worker(settings_on, "drawer")
    teaser = drawer.queue.claim("w")
    assert teaser.kind == "teaser"
    drawer.run_job(teaser)
    done = drawer.queue.get(teaser.id)
    assert done.state == "done", done.error
    assert done.result["instant"] is True and done.result["notice"].startswith(instant.INSTANT_NOTICE)
    assert len(done.result["portraits"]) == 2


def test_a_portrait_asked_before_the_face_model_is_an_instant_one_that_waits_for_no_training(settings_on):
    from engine.generation.instant import ASKED_NOTICE, INSTANT_NOTICE
    from engine.store.members import INSTANT_NOT_READY as NOT_READY

    worker = Worker(settings_on, "w")
    enroll_user(worker.store, worker.analyzer, settings_on, "42", [photo(p) for p in OBAMA], subject="man")
    early = worker.queue.enqueue("generate", "42", {"style": "anime", "count": 1, "seed": 3, "instant": True})
    worker.run_job(worker.queue.claim("w"))
    assert worker.queue.get(early.id).error == NOT_READY  # its face is not read yet: said in plain words
    worker.queue.enqueue("instant", "42", {})
    training = worker.queue.enqueue("train", "42", {"steps": 2})
    portrait = worker.queue.enqueue("generate", "42", {"style": "anime", "count": 1, "seed": 3, "instant": True})
    read = worker.queue.claim("w")
    assert read.kind == "instant"
    worker.run_job(read)
    claimed = worker.queue.claim("w")
    assert claimed.id == portrait.id  # before the member's own training, queued earlier
    worker.run_job(claimed)
    done = worker.queue.get(portrait.id)
    assert done.state == "done" and done.result["instant"] is True, done.error
    assert done.result["notice"].startswith(INSTANT_NOTICE)
    assert worker.queue.get(training.id).state == "queued"
    worker.run_job(worker.queue.claim("w"))
    asked = worker.queue.enqueue("generate", "42", {"style": "anime", "count": 1, "seed": 3, "instant": True})
    worker.run_job(worker.queue.claim("w"))
    done = worker.queue.get(asked.id)
    assert done.result["instant"] is True and done.result["notice"].startswith(ASKED_NOTICE)  # a face model by then


def test_members_enrolled_before_the_mode_was_on_are_read_when_a_worker_starts_and_forget_erases_it(settings_on):
    from engine.store.members import instant_face_path

    off = settings_on.model_copy(update={"instant": False})
    worker = Worker(off, "off")
    enroll_user(worker.store, worker.analyzer, off, "42", [photo(p) for p in OBAMA], subject="man")
    worker.run(exit_when_idle=0)
    assert worker.queue.active_jobs() == [] and not instant_face_path(worker.store, "42").exists()
    on = Worker(settings_on, "on")
    on.run(exit_when_idle=0)
    assert instant_face_path(on.store, "42").is_file()
    on.store.delete_user("42")
    assert not instant_face_path(on.store, "42").exists()


def test_removing_a_photo_reads_the_face_again_from_the_others(settings_on):
    from engine.store.members import instant_face_path, remove_photo

    worker = Worker(settings_on, "w")
    enroll_user(worker.store, worker.analyzer, settings_on, "42", [photo(p) for p in OBAMA], subject="man")
    worker.queue.enqueue("instant", "42", {})
    worker.run_job(worker.queue.claim("w"))
    first = instant_face_path(worker.store, "42").read_bytes()
    remove_photo(worker.store, worker.queue, "42", 1)
    assert not instant_face_path(worker.store, "42").exists()  # nothing read from the removed photo stays
    assert "instant" in [job.kind for job in worker.queue.active_jobs(user_id="42")]
    worker.run(exit_when_idle=0)
    assert instant_face_path(worker.store, "42").read_bytes() != first


def test_instant_portraits_are_off_by_default_and_fetch_nothing_then(tiny_model, tmp_path):
    from engine.models.files import named_models

    settings = load_settings(_env_file=None, data_dir=tmp_path / "data", base_model=str(tiny_model), device="cpu")
    assert settings.instant is False
    assert not any("instant" in model.name for model in named_models(settings, include_styles=False))
    names = [model.name for model in named_models(settings.model_copy(update={"instant": True}), include_styles=False)]
    assert [name for name in names if "instant" in name] == [
        "instant portraits adapter", "instant portraits image encoder (config)",
        "instant portraits image encoder (weights)"]


def test_a_damaged_or_unsafe_adapter_file_is_the_owners_to_fix_in_one_line(settings_on, tmp_path):
    import pickle

    from engine.errors import ModelUnavailable
    from engine.generation.instant import INSTANT_PROBLEM

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    for name, data in (("garbled.bin", b"\x00not a checkpoint"),
                       ("code.bin", pickle.dumps({"image_proj": Payload()}, protocol=2))):
        (tmp_path / name).write_bytes(data)
        worker = Worker(settings_on.model_copy(update={"instant_adapter": str(tmp_path / name)}), name)
        face = read_face(settings_on, OBAMA[:1])
        with pytest.raises(ModelUnavailable) as raised:
            draw(worker.generator, face)
        assert raised.value.key == INSTANT_PROBLEM and "FACECHAIN_INSTANT_ADAPTER" in str(raised.value)
        assert "\n" not in str(raised.value)


def test_the_face_reader_says_when_no_photo_shows_a_face(settings_on):
    from engine.errors import FaceChainError
    from engine.generation.instant import InstantReader

    with pytest.raises(FaceChainError, match="shows a face"):
        InstantReader(settings_on).read([np.zeros((200, 200, 3), np.uint8)])
    assert DATA.is_dir()


def test_the_bot_says_in_plain_words_when_an_instant_portrait_cannot_be_had_and_gives_one_before_the_model(
        settings_on, tmp_path):
    """What the bot asks for, as it queues a portrait: refused in plain words when the mode is off or the face is
    not read yet; given unasked before the face model (the training is then not waited for)."""
    from bot.backend import Backend, PortraitOrder
    from engine.errors import FaceChainError
    from engine.store.members import INSTANT_NOT_READY, INSTANT_OFF, instant_face_path

    backend = Backend(settings_on)
    enroll_user(backend.store, Worker(settings_on, "w").analyzer, settings_on, "42", [photo(p) for p in OBAMA],
                subject="man")
    asked = PortraitOrder("anime", 1, None, False, instant=True)
    with pytest.raises(FaceChainError) as not_ready:
        backend.draws_instant("42", asked, has_model=False)
    assert str(not_ready.value) == INSTANT_NOT_READY
    assert backend.draws_instant("42", PortraitOrder("anime", 1, None, False), has_model=False) is False
    path = instant_face_path(backend.store, "42")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"read")
    assert backend.draws_instant("42", PortraitOrder("anime", 1, None, False), has_model=False) is True
    assert backend.draws_instant("42", PortraitOrder("anime", 1, None, False), has_model=True) is False
    job = backend.order_portrait("42", None, 1, PortraitOrder("anime", 1, None, False))
    assert job.params["instant"] is True and job.params["wait_for_training"] is False
    off = Backend(settings_on.model_copy(update={"instant": False}))
    with pytest.raises(FaceChainError) as refused:
        off.draws_instant("42", asked, has_model=True)
    assert str(refused.value) == INSTANT_OFF and "FACECHAIN" not in INSTANT_OFF + INSTANT_NOT_READY


def test_instant_portraits_draw_in_a_pose_in_fast_mode_and_under_the_sliced_attention_of_small_cards(
        settings_on, tiny_model, tiny_controlnet, tmp_path):
    """In the same batched call as any portrait: a pose (the ControlNet pipeline shares the UNet), fast mode (the
    LCM-LoRA beside the adapter's LoRA), and the memory plan of a small card (attention slicing), which the UNet
    keeps once the instant drawing is done."""
    from diffusers import UNet2DConditionModel

    from engine.generation.generate import PortraitRequest
    from engine.generation.poses import load_poses
    from engine.models.base_model import MemoryPlan, apply_memory_savers
    from engine.models.random_models import make_random_lora
    from engine.styles import load_styles

    lcm = make_random_lora(UNet2DConditionModel.from_pretrained(tiny_model / "unet"), tmp_path / "lcm.safetensors")
    settings = settings_on.model_copy(update={"pose_controlnet": str(tiny_controlnet), "fast_lora": str(lcm)})
    worker = Worker(settings, "instant")
    face = read_face(settings, OBAMA)
    style = load_styles().get("anime")
    posed = PortraitRequest(style=style, trigger="a man", face_model=None, count=2, seed=1, steps=2, size=64,
                            instant=face, pose=load_poses().get("standing"))
    assert [c.image.size for c in worker.generator.generate(posed)] == [(64, 96)] * 2
    fast = PortraitRequest(style=style, trigger="a man", face_model=None, count=2, seed=1, steps=2, size=64,
                           instant=face, fast=True, guidance=1.0)  # no guidance: the adapter's embeds unpaired
    assert len(worker.generator.generate(fast)) == 2
    base = worker.generator.base
    apply_memory_savers(base, MemoryPlan(base.plan.dtype_name, True, True, False, "a small card"))
    sliced = {type(p).__name__ for p in base.pipeline.unet.attn_processors.values()}
    worker.generator.generate(PortraitRequest(style=style, trigger="a man", face_model=None, count=1, seed=1,
                                              steps=2, size=64, instant=face))
    assert {type(p).__name__ for p in base.pipeline.unet.attn_processors.values()} == sliced
    assert sliced == {"SlicedAttnProcessor"}


def test_with_an_sdxl_base_instant_portraits_are_neither_offered_pulled_nor_read(settings_on, tiny_sdxl):
    """FaceID Plus v2 is SD1.5's: with an SDXL base the mode draws nothing (the bot offers none, `models pull`
    fetches nothing for it, a queued read ends at once) and `doctor` says why."""
    from bot.backend import Backend, PortraitOrder
    from engine.cli.doctor import check_instant
    from engine.errors import FaceChainError
    from engine.models.files import named_models
    from engine.store.members import INSTANT_OFF

    sdxl = settings_on.model_copy(update={"base_model": str(tiny_sdxl)})
    assert not any("instant" in model.name for model in named_models(sdxl, include_styles=False))
    assert check_instant(sdxl).status == "warn" and "not SD1.5" in check_instant(sdxl).detail
    backend = Backend(sdxl)
    with pytest.raises(FaceChainError) as refused:
        backend.draws_instant("42", PortraitOrder("anime", 1, None, False, instant=True), has_model=True)
    assert str(refused.value) == INSTANT_OFF
    worker = Worker(sdxl, "w")
    enroll_user(worker.store, worker.analyzer, sdxl, "42", [photo(p) for p in OBAMA], subject="man")
    read = worker.queue.enqueue("instant", "42", {})
    worker.run_job(worker.queue.claim("w"))
    assert worker.queue.get(read.id).result["skipped"].startswith("instant portraits are off")


def test_the_image_encoder_reads_in_the_base_models_precision_and_leaves_a_card_that_saves_memory(settings_on,
                                                                                                  monkeypatch):
    """ViT-H is 1.2 GB in fp16: beside a base model that slices attention or offloads, the drawing needs it back."""
    from dataclasses import replace

    import torch

    from engine.models.base_model import MemoryPlan
    from engine.store.members import instant_face_path

    worker = Worker(settings_on, "w")
    enroll_user(worker.store, worker.analyzer, settings_on, "42", [photo(p) for p in OBAMA], subject="man")
    base = worker.models.base
    worker.run(exit_when_idle=0)  # the enrolment's read, on the CPU's plan (no savers): the reader stays
    assert instant_face_path(worker.store, "42").is_file() and worker.models._instant_reader is not None

    worker.models._instant_reader = None
    cpu_plan = base.plan
    base.plan = replace(cpu_plan, dtype_name="bfloat16")
    assert worker.models.instant_reader.encoder.dtype == torch.bfloat16  # beside a bf16 base, in bf16
    base.plan = cpu_plan

    # Each job plans afresh for the memory it may use: here, an 8 GB card's plan.
    monkeypatch.setattr("engine.models.base_model.current_plan",
                        lambda device, family=None: MemoryPlan("float32", True, True, False, "an 8 GB card"))
    worker.queue.enqueue("instant", "42", {})
    worker.run(exit_when_idle=0)
    [read] = [job for job in worker.queue.jobs() if job.kind == "instant" and job.id > 1]
    assert read.state == "done" and base.plan.attention_slicing and worker.models._instant_reader is None
