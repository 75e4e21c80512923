"""Styles a server's admins add (/facechain-admin style-add): checked by the file's header alone (the bot
never loads a model), kept for that server only, drawn by the worker for that server's requests."""

from __future__ import annotations

import pickle

import pytest

from engine.config import load_settings
from engine.errors import FaceChainError
from engine.generation.guild_styles import add_guild_style, remove_guild_style
from engine.styles import guild_styles_folder, load_catalogue
from tests.conftest import files_under

GUILD, OTHER = "111", "222"


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_model, tiny_sdxl):
    """A LoRA for the tiny SD1.5 base and one for the tiny SDXL base (kohya's format, as published)."""
    from diffusers import UNet2DConditionModel

    from engine.models.random_models import make_random_lora

    folder = tmp_path_factory.mktemp("guild-loras")
    return {"sd15": make_random_lora(UNet2DConditionModel.from_pretrained(tiny_model / "unet"),
                                     folder / "sd15.safetensors", kohya=True),
            "sdxl": make_random_lora(UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet"),
                                     folder / "sdxl.safetensors", kohya=True)}


def settings_for(tmp_path, base):
    return load_settings(_env_file=None, data_dir=tmp_path / "data", base_model=str(base), device="cpu",
                         portrait_size=64, portrait_candidates=1, training_previews=False, face_parser="")


def test_a_servers_style_is_that_servers_alone_and_the_worker_draws_it(tmp_path, tiny_model, loras, analyzer):
    from engine.jobs.worker import Worker
    from engine.preprocess.enroll import enroll_user
    from tests.conftest import photo

    settings = settings_for(tmp_path, tiny_model)
    style = add_guild_style(settings, GUILD, "Neon-Look", loras["sd15"], "neon portrait, city lights", weight=0.5)
    assert (style.id, style.lora.weight, style.lora.bases) == ("neon-look", 0.5, ["sd15"])
    folder = guild_styles_folder(settings, GUILD)
    assert (folder / "neon-look.toml").is_file() and (folder / "loras" / "neon-look.safetensors").is_file()
    assert loras["sd15"].is_file()  # the upload is copied, the caller removes it
    assert load_catalogue(settings, GUILD).get("neon-look") is not None
    assert load_catalogue(settings, OTHER).get("neon-look") is None and load_catalogue(settings).get("neon-look") is None
    with pytest.raises(FaceChainError, match="taken by this server's styles"):
        add_guild_style(settings, GUILD, "neon-look", loras["sd15"], "neon portrait")
    with pytest.raises(FaceChainError, match="taken by one of the bot's styles"):
        add_guild_style(settings, GUILD, "anime", loras["sd15"], "neon portrait")

    worker = Worker(settings, "guild-styles")
    enroll_user(worker.store, analyzer, settings, "7", [photo("obama/obama1.jpg"), photo("obama/obama2.jpg")])
    worker.queue.enqueue("train", "7", {"steps": 2})
    here = worker.queue.enqueue("generate", "7", {"style": "neon-look", "count": 1, "seed": 1}, guild_id=GUILD)
    there = worker.queue.enqueue("generate", "7", {"style": "neon-look", "count": 1, "seed": 1}, guild_id=OTHER)
    worker.run(exit_when_idle=0)
    assert worker.queue.get(here.id).state == "done", worker.queue.get(here.id).error
    assert any(key.startswith("style:") for key in worker.models.generator.loaded_adapters)
    assert "Unknown style 'neon-look'" in worker.queue.get(there.id).error

    with pytest.raises(FaceChainError, match="This server added no style 'anime'"):
        remove_guild_style(settings, GUILD, "anime")
    remove_guild_style(settings, GUILD, "neon-look")
    assert files_under(folder) == [] and load_catalogue(settings, GUILD).get("neon-look") is None


def raw_safetensors(path, header: dict | str, data: bytes = b"") -> None:
    """A file with a safetensors frame around any header, as a hostile or broken upload could be."""
    import json
    import struct

    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


LORA_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"


@pytest.mark.parametrize("case", ["pickle", "huge", "not-lora", "other-family", "bad-words", "float-shape",
                                  "deep-json", "outside"])
def test_a_damaged_hostile_or_unfitting_file_is_refused_in_one_line_and_nothing_is_kept(case, tmp_path, tiny_sdxl,
                                                                                        loras, monkeypatch):
    settings = settings_for(tmp_path, tiny_sdxl)
    upload = tmp_path / "upload.safetensors"
    prompt = "neon portrait"
    if case == "pickle":
        upload.write_bytes(pickle.dumps({"lora_down": [1, 2, 3]}))
    elif case == "huge":
        monkeypatch.setattr("engine.generation.guild_styles.MAX_GUILD_LORA_MB", 0.001)
        upload.write_bytes(loras["sdxl"].read_bytes())
    elif case == "not-lora":
        import torch
        from safetensors.torch import save_file

        save_file({"weight": torch.zeros(2, 2)}, str(upload))
    elif case == "other-family":
        upload.write_bytes(loras["sd15"].read_bytes())  # an SD1.5 LoRA on an SDXL bot
    elif case == "float-shape":
        raw_safetensors(upload, {LORA_KEY: {"dtype": "F32", "shape": [4.5, 8], "data_offsets": [0, 16]}}, bytes(16))
    elif case == "deep-json":
        raw_safetensors(upload, "[" * 100_000 + "]" * 100_000)
    elif case == "outside":
        raw_safetensors(upload, {LORA_KEY: {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 10**9]}}, bytes(128))
    else:
        upload.write_bytes(loras["sdxl"].read_bytes())
        prompt = "nude portrait"
    expected = {"pickle": "not a .safetensors file", "huge": "a style LoRA is at most", "not-lora": "no LoRA weights",
                "other-family": "this bot draws with SDXL", "bad-words": "'nude' is not allowed",
                "float-shape": "its shape is not a list of whole numbers",
                "deep-json": "its header is not a tensor index",
                "outside": "its data lies outside the file"}[case]
    with pytest.raises(FaceChainError) as refused:
        add_guild_style(settings, GUILD, "new-look", upload, prompt)
    assert expected in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    assert files_under(settings.data_dir / "styles") == []


def test_a_server_keeps_within_its_style_count_size_and_the_disk(tmp_path, tiny_model, loras, monkeypatch):
    import shutil
    from collections import namedtuple

    settings = settings_for(tmp_path, tiny_model).model_copy(update={"guild_styles_max": 2})
    add_guild_style(settings, GUILD, "one", loras["sd15"], "neon portrait")
    add_guild_style(settings, GUILD, "two", loras["sd15"], "neon portrait")
    with pytest.raises(FaceChainError, match=r"^This server has 2 styles of its own, the most it may have: remove one "
                                             r"with `/facechain-admin style-remove` first\.$"):
        add_guild_style(settings, GUILD, "three", loras["sd15"], "neon portrait")
    add_guild_style(settings, OTHER, "three", loras["sd15"], "neon portrait")  # another server's own count

    big = tmp_path / "big.safetensors"  # the sizes are checked before the file is read
    big.write_bytes(bytes(2**20))
    small = settings.model_copy(update={"guild_styles_max": 20, "guild_styles_max_mb": 1})
    with pytest.raises(FaceChainError, match=r"^This server's styles would take 1\.\d MB, more than the 1 MB it "
                                             r"may use"):
        add_guild_style(small, GUILD, "three", big, "neon portrait")

    roomy = settings.model_copy(update={"guild_styles_max": 20})
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**8, 10**8))
    with pytest.raises(FaceChainError, match="^The bot's disk is nearly full, so no style can be added now"):
        add_guild_style(roomy, GUILD, "three", loras["sd15"], "neon portrait")
    assert sorted(p.name for p in (settings.data_dir / "styles" / "guilds" / GUILD / "loras").iterdir()) == [
        "one.safetensors", "two.safetensors"]  # nothing of a refused style is kept


def test_a_style_added_by_admins_joins_the_servers_allowed_list(store):
    from engine.store.community import allow_style, guild_settings, update_guild_settings

    assert not allow_style(store, GUILD, "neon")  # no list kept: every style is allowed already
    update_guild_settings(store, GUILD, allowed_styles=["anime"])
    assert allow_style(store, GUILD, "neon") and guild_settings(store, GUILD).allowed_styles == ["anime", "neon"]
    assert not allow_style(store, GUILD, "neon")
