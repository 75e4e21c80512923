"""Training and generation on the tiny model: real diffusers + peft, real assertions."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from engine.cli import main
from engine.config import load_settings
from engine.errors import FaceChainError, ModelMissing
from engine.generation.generate import (
    NEGATIVE_PROMPT,
    PortraitGenerator,
    PortraitRequest,
    build_negative_prompt,
    build_prompt,
)
from engine.models.base_model import load_base_pipeline
from engine.preprocess.enroll import enroll_user
from engine.store import Store
from engine.styles import Style, StyleLora, load_styles
from engine.training import lora as lora_training
from engine.training.files import WEIGHTS_FILE
from engine.training.lora import TrainingCancelled
from engine.training.train import train_user
from tests.conftest import photo

OBAMA = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"]


@pytest.fixture(scope="module")
def engine_settings(tiny_model, tmp_path_factory):
    # A high learning rate so 20 steps visibly move the tiny model's outputs.
    return load_settings(_env_file=None, data_dir=tmp_path_factory.mktemp("engine") / "data", device="cpu",
                         base_model=str(tiny_model), vae="", train_resolution=64, learning_rate=5e-2,
                         one_face_per_member=False)  # three members share the test photos of one face


@pytest.fixture(scope="module")
def engine_store(engine_settings, analyzer):
    store = Store(engine_settings.data_dir)
    for user in ("alice", "bob", "carol"):
        enroll_user(store, analyzer, engine_settings, user, [photo(p) for p in OBAMA], subject="man")
    return store


@pytest.fixture(scope="module")
def base(engine_settings):
    return load_base_pipeline(engine_settings)


@pytest.fixture(scope="module")
def alice_model(engine_store, base, engine_settings):
    return train_user(engine_store, base, engine_settings, "alice", steps=20)


def style(**changes) -> Style:
    return load_styles().get("cyberpunk").model_copy(update={"sampler": load_styles().get("cyberpunk").sampler.model_copy(update={"steps": 3}), **changes})


def draw(generator, face_model, seed=5, count=1, **changes):
    request = PortraitRequest(style=style(**changes), trigger="a handsome man", face_model=face_model,
                              count=count, seed=seed, size=64)
    return [np.asarray(c.image, dtype=np.int16) for c in generator.generate(request)]


def test_training_writes_a_ready_versioned_face_model(alice_model, engine_store):
    assert alice_model.status == "ready" and alice_model.version == 1
    assert (alice_model.path / WEIGHTS_FILE).is_file()
    meta = json.loads((alice_model.path / "meta.json").read_text())
    assert meta["steps"] == 20 and len(meta["loss_curve"]) == 20 and meta["caption"] == "<fcsks>, a handsome man"
    assert len(meta["photos"]) == 3 and meta["rank"] == 4
    assert engine_store.ready_face_model("alice").id == alice_model.id
    weights = load_file(str(alice_model.path / WEIGHTS_FILE))
    assert any("lora" in key and "to_q" in key for key in weights)
    assert not alice_model.path.with_name("v1.partial").exists()


def test_a_face_adapter_changes_outputs_and_removing_it_restores_the_base(base, alice_model):
    generator = PortraitGenerator(base)
    plain = draw(generator, None)[0]
    with_face = draw(generator, alice_model.path)[0]
    assert np.abs(with_face - plain).mean() > 1.0
    assert generator.loaded_adapters == [str(alice_model.path)]
    assert np.array_equal(draw(generator, None)[0], plain)  # disabled, not just reweighted
    generator.forget_adapter(alice_model.path)
    assert generator.loaded_adapters == []
    assert np.array_equal(draw(generator, None)[0], plain)


def test_seeds_reproduce_alone_or_in_a_batch(base, alice_model):
    generator = PortraitGenerator(base)
    batch = draw(generator, alice_model.path, seed=7, count=2)
    assert all(np.array_equal(a, b) for a, b in zip(batch, draw(generator, alice_model.path, seed=7, count=2)))
    alone = draw(generator, alice_model.path, seed=8)[0]
    assert np.abs(batch[1] - alone).max() <= 2  # equal up to float rounding of a different batch shape
    assert np.abs(batch[0] - batch[1]).mean() > 1.0


def test_more_like_this_draws_variations_of_the_chosen_seed(base, alice_model):
    generator = PortraitGenerator(base)
    chosen = draw(generator, alice_model.path, seed=100)[0]
    request = PortraitRequest(style=style(), trigger="a handsome man", face_model=alice_model.path, count=3,
                              seed=500, size=64, variation_of=100)
    variations = [np.asarray(c.image, dtype=np.int16) for c in generator.generate(request)]
    unrelated = draw(generator, alice_model.path, seed=500, count=3)
    for variation, other in zip(variations, unrelated):
        assert np.abs(variation - chosen).mean() < 0.6 * np.abs(other - chosen).mean()
    assert np.abs(variations[0] - variations[1]).mean() > 0.5  # variations, not copies


def test_style_lora_is_a_second_weighted_adapter_and_the_cache_is_lru(base, alice_model, engine_store, engine_settings):
    bob = train_user(engine_store, base, engine_settings, "bob", steps=5)
    generator = PortraitGenerator(base, max_adapters=2)
    face_only = draw(generator, alice_model.path)[0]
    lora = StyleLora(reference=str(bob.path / WEIGHTS_FILE), weight=0.8)
    styled = draw(generator, alice_model.path, lora=lora)[0]
    assert np.abs(styled - face_only).mean() > 0.5
    assert len(generator.loaded_adapters) == 2
    draw(generator, bob.path)  # a third adapter evicts the least recently used (alice's face)
    assert str(alice_model.path) not in generator.loaded_adapters and str(bob.path) in generator.loaded_adapters


def test_a_style_file_replaced_under_the_same_name_is_the_one_drawn(base, alice_model, engine_store, engine_settings,
                                                                    tmp_path):
    """A server's style removed and added again under the same id keeps its path: the adapter cache goes by the
    file's content, so the new LoRA is drawn at once, not the one loaded before."""
    import os
    import shutil

    bob = engine_store.ready_face_model("bob") or train_user(engine_store, base, engine_settings, "bob", steps=5)
    path = tmp_path / "neon-look.safetensors"
    shutil.copy(alice_model.path / WEIGHTS_FILE, path)
    lora = StyleLora(reference=str(path), weight=0.8)
    generator = PortraitGenerator(base, max_adapters=4)
    first = draw(generator, None, lora=lora)[0]
    path.unlink()  # style-remove, then style-add under the same id: another file at the same path
    shutil.copy(bob.path / WEIGHTS_FILE, path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = draw(generator, None, lora=lora)[0]
    fresh = draw(PortraitGenerator(base, max_adapters=4), None, lora=lora)[0]
    assert np.abs(second - first).mean() > 0.5 and np.allclose(second, fresh, atol=1e-3)


def test_a_gpu_machine_draws_a_servers_style_only_from_the_file_it_was_sent(base, alice_model, tmp_path):
    """A cluster's GPU machine shares no disk with the store: a server's style LoRA (a path in the bot's data
    folder) is drawn there from the copy it was sent under the file's hash, never from that path, and the
    picture is the one the store's own machine draws."""
    import shutil

    from engine.generation.style_files import StyleFileCache, StyleFileMissing, file_digest, with_digests
    from engine.styles import StyleCatalogue

    path = tmp_path / "bot-data" / "neon-look.safetensors"
    path.parent.mkdir()
    shutil.copy(alice_model.path / WEIGHTS_FILE, path)
    hub = StyleLora(reference="someone/styles", weight_name="neon.safetensors")
    catalogue = with_digests(StyleCatalogue({"neon": style(lora=StyleLora(reference=str(path), weight=0.8)),
                                             "hub": style(id="hub", lora=hub)}, []))
    neon = catalogue.get("neon")
    assert neon.lora.digest == file_digest(path) and catalogue.get("hub").lora.digest is None

    def draw_neon(generator):
        request = PortraitRequest(style=neon, trigger="a handsome man", face_model=None, count=1, seed=5, size=64)
        return np.asarray(generator.generate(request)[0].image, dtype=np.int16)

    here = draw_neon(PortraitGenerator(base, max_adapters=4))
    cache = StyleFileCache(tmp_path / "actor-scratch" / "styles")
    on_actor = PortraitGenerator(base, max_adapters=4, style_cache=cache)
    with pytest.raises(StyleFileMissing) as missing:  # the path exists on this disk: it is not read
        draw_neon(on_actor)
    assert (missing.value.digest, missing.value.reference) == (neon.lora.digest, str(path))
    with pytest.raises(ValueError, match="other content"):
        cache.keep(neon.lora.digest, b"not the file")
    cache.keep(neon.lora.digest, path.read_bytes())
    path.unlink()  # drawn from the copy alone
    assert np.allclose(draw_neon(on_actor), here, atol=1e-3)
    assert f"style:sha256:{neon.lora.digest}" in on_actor.loaded_adapters


def test_a_gpu_machines_style_files_keep_within_their_size_dropping_the_least_recently_drawn(tmp_path):
    import hashlib
    import os

    from engine.generation.style_files import StyleFileCache, StyleFileMissing

    cache = StyleFileCache(tmp_path / "styles", max_bytes=2500)
    digests = []
    for index, data in enumerate([b"a" * 1000, b"b" * 1000]):
        digests.append(hashlib.sha256(data).hexdigest())
        os.utime(cache.keep(digests[-1], data), (index, index))
    cache.path(digests[0], "first")  # drawn again: now the most recent
    cache.keep(hashlib.sha256(b"c" * 1000).hexdigest(), b"c" * 1000)
    assert cache.path(digests[0], "first").is_file()
    with pytest.raises(StyleFileMissing):
        cache.path(digests[1], "second")


def test_training_reads_its_caption_without_a_style_lora_left_on_the_text_encoder(engine_settings):
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    base = load_base_pipeline(engine_settings)  # its own copy: the adapter below stays out of the shared one
    device = torch.device("cpu")
    plain = lora_training._encode_caption(base, "<fcsks>, a handsome man", device).hidden_states
    encoder = base.pipeline.text_encoder
    # As diffusers' load_lora_weights leaves a kohya style LoRA with text encoder layers: peft layers, active.
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False), encoder,
                            adapter_name="style")
    with torch.no_grad():
        ids = base.pipeline.tokenizer("<fcsks>, a handsome man", padding="max_length", max_length=77,
                                      truncation=True, return_tensors="pt").input_ids
        assert not torch.allclose(encoder(ids)[0], plain, atol=1e-4)  # the style layers are live
    assert torch.equal(lora_training._encode_caption(base, "<fcsks>, a handsome man", device).hidden_states, plain)
    with torch.no_grad():
        assert not torch.allclose(encoder(ids)[0], plain, atol=1e-4)  # and live again after


def test_an_interrupted_training_resumes_to_the_same_weights(base, engine_store, engine_settings, alice_model,
                                                              monkeypatch):
    # bob trained 5 steps above; carol is interrupted at step 13 of 20, then resumed. The loop looks for a cancel
    # once a block of steps (about a second); here every step, as on a slow CPU.
    monkeypatch.setattr(lora_training, "READ_EVERY", 1)
    calls = {"n": 0}

    def cancel_at_13():
        calls["n"] += 1
        return calls["n"] > 13

    with pytest.raises(TrainingCancelled, match="step 13 of 20"):
        train_user(engine_store, base, engine_settings, "carol", steps=20, should_cancel=cancel_at_13)
    unfinished = engine_store.face_models("carol")[0]
    assert unfinished.status == "training"
    assert (unfinished.path.with_name("v1.partial") / "checkpoint.pt").is_file()

    resumed = train_user(engine_store, base, engine_settings, "carol", steps=20)
    assert resumed.id == unfinished.id and resumed.meta["resumed_from_step"] == 13
    carol_weights = load_file(str(resumed.path / WEIGHTS_FILE))
    alice_weights = load_file(str(alice_model.path / WEIGHTS_FILE))  # same photos, caption and settings
    for key, value in alice_weights.items():
        np.testing.assert_allclose(carol_weights[key], value, rtol=1e-4, atol=1e-6)


def test_retraining_makes_a_new_version_and_supersedes_the_old(base, engine_store, engine_settings):
    first = engine_store.ready_face_model("bob") or train_user(engine_store, base, engine_settings, "bob", steps=5)
    second = train_user(engine_store, base, engine_settings, "bob", steps=5)
    assert second.version == first.version + 1
    statuses = {m.version: m.status for m in engine_store.face_models("bob")}
    assert statuses[second.version] == "ready" and statuses[first.version] == "superseded"


def test_a_failed_training_keeps_the_previous_model(base, engine_store, engine_settings, monkeypatch):
    before = engine_store.ready_face_model("bob") or train_user(engine_store, base, engine_settings, "bob", steps=5)

    def explode(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(lora_training, "_loop", explode)
    with pytest.raises(RuntimeError):
        train_user(engine_store, base, engine_settings, "bob", steps=5)
    failed = engine_store.face_models("bob")[0]
    assert failed.status == "failed" and "CUDA out of memory" in failed.meta["error"]
    assert engine_store.ready_face_model("bob").id == before.id
    assert lora_training.ADAPTER not in getattr(base.pipeline.unet, "peft_config", {})  # the adapter was removed


def test_training_without_selfies_says_to_enroll(base, engine_store, engine_settings):
    with pytest.raises(FaceChainError, match="no enrolled selfies: run `facechain enroll --user nobody`"):
        train_user(engine_store, base, engine_settings, "nobody")


def test_a_face_model_without_weights_is_a_clear_error(base, tmp_path):
    with pytest.raises(ModelMissing, match="train it again"):
        draw(PortraitGenerator(base), tmp_path)


def test_prompts_follow_facechain_and_always_exclude_nsfw():
    anime = load_styles().get("anime")
    assert build_prompt("a beautiful woman", anime).startswith("<fcsks>, a beautiful woman, anime style portrait")
    assert build_negative_prompt(anime).startswith("nsfw, nude")
    oil = load_styles().get("oil-painting")
    assert build_negative_prompt(oil).endswith(oil.negative_prompt)  # the style's own words come last
    assert NEGATIVE_PROMPT.startswith("nsfw")


def test_train_cli(capsys, engine_settings, engine_store, monkeypatch):
    for name in ("data_dir", "base_model", "train_resolution", "device"):
        monkeypatch.setenv(f"FACECHAIN_{name.upper()}", str(getattr(engine_settings, name)))
    assert main(["train", "--user", "carol", "--steps", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["user"] == "carol" and summary["status"] == "ready" and summary["steps"] == 3
    assert summary["version"] == 2
    assert main(["train", "--user", "nobody", "--json"]) == 2
    assert "no enrolled selfies" in capsys.readouterr().err


def test_a_members_own_words_join_the_prompt_within_limits():
    from engine.errors import FaceChainError
    from engine.generation.requests import check_prompt_words

    anime = load_styles().get("anime")
    assert check_prompt_words("  holding   a guitar ") == "holding a guitar"
    prompt = build_prompt("a man", anime, "holding a guitar")
    assert prompt.startswith("<fcsks>, a man, anime style portrait") and ", holding a guitar, upper body" in prompt
    assert build_negative_prompt(anime).startswith("nsfw, nude, naked")  # whatever the member writes
    with pytest.raises(FaceChainError, match="Keep your own words to 200 characters"):
        check_prompt_words("x" * 201)
    with pytest.raises(FaceChainError, match="The word 'naked' is not allowed"):
        check_prompt_words("naked in the rain")
    with pytest.raises(FaceChainError, match="The word 'guitar' is not allowed"):
        check_prompt_words("a Guitar!", blocked=["guitar"])
    assert check_prompt_words("guitarist", blocked=["guitar"]) == "guitarist"  # whole words only
