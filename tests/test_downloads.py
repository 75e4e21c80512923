"""Hub downloads against a local stand-in for Hugging Face (tests/fake_hub.py): only the files
loading reads arrive, the disk is checked first, progress is reported, and an unreachable hub is
a clear message for the owner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import load_settings
from engine.errors import ModelUnavailable
from engine.models.references import check_disk_space, select_files
from tests.fake_hub import REALISTIC_VISION_CHECKPOINTS, FakeHub, realistic_vision_layout

ROOT = Path(__file__).parent.parent
BASE = "SG161222/Realistic_Vision_V5.1_noVAE"
VAE = "stabilityai/sd-vae-ft-mse"
FAST = "latent-consistency/lcm-lora-sdv1-5"
STYLE_REPO = "someone/hub-style-lora"
PARSER = "jonathandinu/face-parsing"
OPENPOSE = "lllyasviel/control_v11p_sd15_openpose"
DWPOSE = "yzd-v/DWPose"
ANNOTATORS = "lllyasviel/Annotators"  # Upscale x4's Real-ESRGAN file, among the repository's many
# A diffusers SD1.5 pipeline's files (those the loader reads).
REAL_PIPELINE_FILES = {
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
}


def pipeline_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub(tmp_path, tiny_model, tiny_controlnet, tiny_pose_detector):
    import torch
    from safetensors.torch import save_file

    from engine.models.random_models import make_random_rrdb

    served = FakeHub(tmp_path / "hub")
    realistic_vision_layout(served, tiny_model, BASE)
    served.add_folder(VAE, tiny_model / "vae")
    served.add_file(VAE, "diffusion_pytorch_model.bin", sparse_bytes=10**6)
    served.add_file(VAE, "README.md", b"# sd-vae-ft-mse (stand-in)\n")
    lora = tmp_path / "lcm.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, lora)
    served.add_file(FAST, "pytorch_lora_weights.safetensors", lora.read_bytes())
    served.add_file(STYLE_REPO, "style.safetensors", lora.read_bytes())
    served.add_file(STYLE_REPO, "other-style.safetensors", sparse_bytes=10**8)  # never fetched
    served.add_folder(PARSER, face_parser(tmp_path))
    served.add_file(PARSER, "onnx/model.onnx", sparse_bytes=10**6)  # the web export beside it: never fetched
    served.add_file(PARSER, "pytorch_model.bin", sparse_bytes=10**6)  # a .bin twin: never fetched
    served.add_folder(OPENPOSE, tiny_controlnet)
    served.add_file(OPENPOSE, "diffusion_pytorch_model.bin", sparse_bytes=10**6)  # never fetched
    served.add_folder(DWPOSE, tiny_pose_detector)
    served.add_file(DWPOSE, "dw-mm_ucoco.onnx", sparse_bytes=10**6)  # another of its models: never fetched
    served.add_file(ANNOTATORS, "RealESRGAN_x4plus.pth", make_random_rrdb(tmp_path / "rrdb.pth").read_bytes())
    served.add_file(ANNOTATORS, "ControlNetHED.pth", sparse_bytes=10**6)  # the other annotators: never fetched
    served.start()
    yield served
    served.stop()


def face_parser(tmp_path: Path) -> Path:
    from engine.models.random_models import make_tiny_face_parser

    return make_tiny_face_parser(tmp_path / "face-parsing")


def hub_env(hub: FakeHub, cache: Path, **settings: str) -> dict[str, str]:
    """The stand-in hub for every Hugging Face call, and one style whose LoRA is a file there (the
    shipped styles' LoRAs are on ModelScope, which no test reaches)."""
    styles = cache.parent / "styles"
    styles.mkdir(parents=True, exist_ok=True)
    (styles / "hub-style.toml").write_text(
        'name = "Hub"\ndescription = "d"\nprompt = "p"\n'
        f'[lora]\nreference = "{STYLE_REPO}"\nweight_name = "style.safetensors"\nweight = 0.3\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACECHAIN_", "HF_"))}
    env.update({"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_XET": "1",
                "PYTHONPATH": str(ROOT), "FACECHAIN_DEVICE": "cpu", "FACECHAIN_BASE_MODEL": BASE,
                "FACECHAIN_VAE": VAE, "FACECHAIN_FAST_LORA": FAST, "FACECHAIN_STYLES_DIR": str(styles)})
    env.update({f"FACECHAIN_{k}": v for k, v in settings.items()})
    return env


def facechain(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_models_pull_fetches_only_what_loading_reads(hub, tmp_path, tiny_model):
    env = hub_env(hub, tmp_path / "cache")
    pulled = facechain(env, tmp_path, "models", "pull", "--json")
    assert pulled.returncode == 0, pulled.stderr
    rows = {row["name"]: row for row in json.loads(pulled.stdout)}
    assert [rows[name]["status"] for name in ("base model", "VAE", "face parser", "fast-mode LoRA",
                                              "style hub-style LoRA", "pose ControlNet", "pose detector (people)",
                                              "pose detector (body points)", "upscaler (Upscale x4)")] == [
        "downloaded"] * 9
    assert set(hub.fetched(BASE)) == pipeline_files(tiny_model)  # no .bin twins, checkpoints, safety checker
    assert not set(hub.fetched(BASE)) & set(REALISTIC_VISION_CHECKPOINTS)
    assert set(hub.fetched(VAE)) == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert hub.fetched(FAST) == ["pytorch_lora_weights.safetensors"]
    assert hub.fetched(STYLE_REPO) == ["style.safetensors"]  # one file per style LoRA
    assert set(hub.fetched(PARSER)) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert set(hub.fetched(OPENPOSE)) == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert set(hub.fetched(DWPOSE)) == {"yolox_l.onnx", "dw-ll_ucoco_384.onnx"}
    assert hub.fetched(ANNOTATORS) == ["RealESRGAN_x4plus.pth"]
    cache_bytes = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cache_bytes < 30 * 2**20 and rows["base model"]["bytes"] > 0

    again = facechain(env, tmp_path, "models", "pull")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already here") == 9
    assert len(hub.fetched()) == len(pipeline_files(tiny_model)) + 12  # nothing fetched twice
    # Enrollment then finds the parser in the hub's cache and loads it, with no network.
    script = ("from engine.config import load_settings\nfrom engine.preprocess.face_parser import get_face_parser\n"
              "print(type(get_face_parser(load_settings(_env_file=None))).__name__)")
    found = subprocess.run([sys.executable, "-c", script], env={**env, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert found.stdout.strip() == "FaceParser", found.stderr


def test_the_base_model_loads_from_the_hub_with_download_progress(hub, tmp_path, tiny_model):
    """The production loader against the hub: the VAE is the separate one, the listed feature extractor
    (whose folder is never fetched) does not stop it, and progress reaches the callback in bytes."""
    script = (
        "import json\n"
        "from engine.config import load_settings\n"
        "from engine.models.base_model import load_base_pipeline\n"
        "seen = []\n"
        "base = load_base_pipeline(load_settings(_env_file=None), on_progress=lambda *a: seen.append(a))\n"
        "print(json.dumps({'seen': seen, 'vae': base.vae_reference,"
        " 'scheduler': type(base.pipeline.scheduler).__name__,"
        " 'feature_extractor': base.pipeline.feature_extractor is None}))\n"
    )
    env = hub_env(hub, tmp_path / "cache")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert loaded["vae"] == VAE and loaded["feature_extractor"]
    whats = {what for what, _, _ in loaded["seen"]}
    assert whats == {"the base model", "the VAE"}
    last = {what: (done_bytes, total) for what, done_bytes, total in loaded["seen"]}
    assert all(done_bytes == total > 0 for done_bytes, total in last.values())
    assert set(hub.fetched(BASE)) == pipeline_files(tiny_model)


def test_the_documented_safety_checker_id_downloads_and_loads(hub, tmp_path, safety_checkers):
    """FACECHAIN_SAFETY_CHECKER=CompVis/stable-diffusion-safety-checker, as README and .env.example name it: its
    repository holds the checker's own files (no model_index.json), and the worker loads it from there."""
    checker = "CompVis/stable-diffusion-safety-checker"
    hub.add_folder(checker, safety_checkers["flags_all"])
    hub.add_file(checker, "pytorch_model.bin", sparse_bytes=10**6)  # the pickle twin: never fetched
    env = hub_env(hub, tmp_path / "cache", SAFETY_CHECKER=checker)
    script = ("from PIL import Image\nfrom engine.config import load_settings\n"
              "from engine.models.safety import load_safety_checker\n"
              "print(load_safety_checker(load_settings(_env_file=None)).flags([Image.new('RGB', (64, 64))]))")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[True]"
    assert "pytorch_model.bin" not in hub.fetched(checker)


def test_a_servers_style_is_checked_where_only_the_models_index_is_on_the_machine(hub, tmp_path, tiny_model):
    """A bot machine beside a cluster of GPU machines holds only the base model's model_index.json: checking an
    admin's style LoRA fetches the UNet's config.json alone, never a weight."""
    from diffusers import UNet2DConditionModel

    from engine.models.random_models import make_random_lora

    lora = make_random_lora(UNet2DConditionModel.from_pretrained(tiny_model / "unet"), tmp_path / "neon.safetensors",
                            kohya=True)
    env = hub_env(hub, tmp_path / "cache")
    script = ("from pathlib import Path\nfrom engine.config import load_settings\n"
              "from engine.generation.guild_styles import add_guild_style\n"
              "from engine.models.family import base_family\n"
              "settings = load_settings(_env_file=None, data_dir=Path('data'))\n"
              "print(base_family(settings.base_model).name)\n"
              f"print(add_guild_style(settings, '1', 'neon-look', Path(r'{lora}'), 'neon portrait').id)")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sd15", "neon-look"]
    assert set(hub.fetched(BASE)) == {"model_index.json", "unet/config.json"}


def test_an_sdxl_base_pulls_its_own_extras_on_the_first_pull(hub, tmp_path, tiny_sdxl):
    """Before the base model is on the machine, its family comes from its model_index.json: the first pull fetches
    SDXL's fp16-safe VAE and LCM-LoRA, never SD1.5's pose ControlNet or LCM-LoRA."""
    sdxl = "stabilityai/stable-diffusion-xl-base-1.0"
    hub.add_folder(sdxl, tiny_sdxl)
    env = hub_env(hub, tmp_path / "cache", BASE_MODEL=sdxl)
    for unset in ("FACECHAIN_VAE", "FACECHAIN_FAST_LORA"):  # the documented defaults, as an owner has them
        env.pop(unset)
    pulled = facechain(env, tmp_path, "models", "pull", "--json")
    rows = {row["name"]: row for row in json.loads(pulled.stdout)}
    assert rows["base model"]["status"] == "downloaded", pulled.stderr
    assert rows["VAE"]["reference"] == "madebyollin/sdxl-vae-fp16-fix"
    assert rows["fast-mode LoRA"]["reference"] == "latent-consistency/lcm-lora-sdxl"
    assert "pose ControlNet" not in rows and not hub.fetched(OPENPOSE) and not hub.fetched(FAST)


def test_an_unreachable_hub_is_the_owners_problem_in_one_line(hub, tmp_path):
    (tmp_path / "no-styles").mkdir()
    env = hub_env(hub, tmp_path / "cache", VAE="", FAST_LORA="", FACE_PARSER="", POSE_CONTROLNET="", POSE_DETECTOR="",
                  UPSCALER="", STYLES_DIR=str(tmp_path / "no-styles"))
    env["HF_ENDPOINT"] = hub.url  # the hub answers, but not for this model: the loader's own message
    env["FACECHAIN_BASE_MODEL"] = "someone/not-on-this-hub"
    pulled = facechain(env, tmp_path, "models", "pull")
    assert pulled.returncode == 1
    lines = [line for line in pulled.stdout.splitlines() if line.startswith("base model")]
    assert len(lines) == 1 and "Could not get someone/not-on-this-hub from Hugging Face" in lines[0]
    assert "FACECHAIN_BASE_MODEL" in lines[0] and "Traceback" not in pulled.stderr
    assert pulled.stderr.strip() == "error: not fetched: base model."


def test_models_pull_with_no_network_says_so_within_seconds_and_names_what_was_not_fetched(hub, tmp_path):
    """No hub answers (no network): each is asked once, what comes from it is skipped, and the owner
    reads which models are missing, instead of minutes of the clients' own retries."""
    env = hub_env(hub, tmp_path / "cache")  # base, VAE and fast LoRA on Hugging Face
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: connection refused
    env["MODELSCOPE_DOMAIN"] = "127.0.0.1:9"
    env["FACECHAIN_STYLES_DIR"] = str(ROOT / "styles")  # the shipped styles: their LoRAs are on ModelScope
    started = time.monotonic()
    pulled = facechain(env, tmp_path, "models", "pull")
    took = time.monotonic() - started
    assert pulled.returncode == 1 and took < 60, took
    assert pulled.stdout.count("Hugging Face (127.0.0.1) does not answer") == 1 + 8  # said once, then per model
    assert pulled.stdout.count("ModelScope (127.0.0.1) does not answer") >= 2
    not_fetched = pulled.stderr.strip()
    assert not_fetched.startswith("error: not fetched: base model, VAE, face parser, pose ControlNet, pose detector "
                                  "(people), pose detector (body points), upscaler (Upscale x4), fast-mode LoRA, "
                                  "style ")
    assert "Traceback" not in pulled.stderr


def test_a_style_lora_that_cannot_be_had_names_the_file_to_edit(tmp_path, monkeypatch):
    from importlib import import_module

    from engine.models.files import fetch, named_models
    from engine.styles import load_styles

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(import_module("modelscope.hub.file_download"), "model_file_download", unreachable)
    style = load_styles(None).get("fantasy-elf")
    assert style.lora_setting == f"the `reference` under [lora] in {ROOT / 'styles' / 'fantasy-elf.toml'}"
    settings = load_settings(_env_file=None, vae="", fast_lora="", base_model=str(tmp_path))
    [model] = [m for m in named_models(settings) if m.name == "style fantasy-elf LoRA"]
    with pytest.raises(ModelUnavailable) as refused:
        fetch(model, half=False)
    message = str(refused.value)
    assert "set the `reference` under [lora] in" in message and "fantasy-elf.toml to the downloaded" in message
    assert "set style fantasy-elf" not in message


def test_selection_prefers_safetensors_and_takes_fp16_only_when_every_part_has_it():
    listing = [*REAL_PIPELINE_FILES, "unet/diffusion_pytorch_model.bin",
               "unet/diffusion_pytorch_model.fp16.safetensors",
               "text_encoder/pytorch_model.bin", "text_encoder/model.fp16.safetensors",
               "vae/diffusion_pytorch_model.fp16.safetensors", *REALISTIC_VISION_CHECKPOINTS,
               "safety_checker/model.safetensors", "feature_extractor/preprocessor_config.json"]
    full = select_files(listing, "pipeline", half=False)
    assert set(full) == REAL_PIPELINE_FILES
    half = select_files(listing, "pipeline", half=True)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in half and "unet/diffusion_pytorch_model.safetensors" \
        not in half
    assert "vae/diffusion_pytorch_model.fp16.safetensors" in half
    no_vae_fp16 = [f for f in listing if f != "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert set(select_files(no_vae_fp16, "pipeline", half=True)) == REAL_PIPELINE_FILES  # one variant for all
    only_bin = [f.replace("model.safetensors", "model.bin") for f in REAL_PIPELINE_FILES]
    assert "unet/diffusion_pytorch_model.bin" in select_files(only_bin, "pipeline", half=False)


def test_a_download_that_would_not_fit_names_needed_and_free_space(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100 * 10**9, 99 * 10**9, 10**9))
    with pytest.raises(ModelUnavailable, match=r"Not enough disk space for the base model: it needs 2\.1 GB and "
                                               r"1\.0 GB are free"):
        check_disk_space(tmp_path / "cache", int(2.1 * 10**9), "the base model")


def test_a_copy_fetched_before_serves_when_the_hub_is_out_of_reach(hub, tmp_path):
    env = hub_env(hub, tmp_path / "cache", VAE="", FAST_LORA="", FACE_PARSER="")
    assert facechain(env, tmp_path, "models", "pull").returncode == 0
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # later, offline (HF_HUB_OFFLINE not set)
    script = ("from engine.config import load_settings\nfrom engine.models.base_model import load_base_pipeline\n"
              "print(load_base_pipeline(load_settings(_env_file=None)).folder)")
    loaded = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert str(tmp_path / "cache") in loaded.stdout
