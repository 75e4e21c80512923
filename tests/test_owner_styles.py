"""Styles a server owner adds without code: `facechain styles add`, `remove` and `import`, kept in the
data folder; a damaged or hostile LoRA is refused in one line and nothing of it is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.styles import load_catalogue
from tests.conftest import files_under

ROOT = Path(__file__).parent.parent


@pytest.fixture
def owner(tmp_path, tiny_model, monkeypatch):
    data = tmp_path / "data"
    for name, value in {"DATA_DIR": data, "BASE_MODEL": tiny_model, "DEVICE": "cpu"}.items():
        monkeypatch.setenv(f"FACECHAIN_{name}", str(value))
    return data


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_model):
    """A LoRA for the tiny base (kohya's format, as published), and one for another UNet's shapes."""
    from diffusers import UNet2DConditionModel

    from engine.models.random_models import make_random_lora

    folder = tmp_path_factory.mktemp("loras")
    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    fits = make_random_lora(unet, folder / "fits.safetensors", kohya=True)
    other = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                 out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                 attention_head_dim=4, norm_num_groups=8)
    wrong = make_random_lora(other, folder / "wrong-shapes.safetensors", kohya=True)
    return {"fits": fits, "wrong": wrong}


def run_json(capsys, *argv: str):
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_an_added_style_lives_in_the_data_folder_and_members_can_pick_it(owner, loras, capsys, tiny_model):
    code, added = run_json(capsys, "styles", "add", "neon-noir", "--prompt", "neon noir portrait, rain, city lights",
                           "--lora", str(loras["fits"]), "--weight", "0.4", "--family", "photo")
    assert code == 0, added
    style_file = owner / "styles" / "neon-noir.toml"
    assert Path(added["path"]) == style_file and (owner / "styles" / "loras" / "neon-noir.safetensors").is_file()
    assert not (ROOT / "styles" / "neon-noir.toml").exists()  # never in the project's own styles/
    from engine.config import load_settings

    style = load_catalogue(load_settings(_env_file=None)).get("neon-noir")
    assert style is not None and style.lora.weight == 0.4 and style.file == style_file
    assert Path(style.lora.reference).is_file()  # the copy in the data folder, not the file it came from
    code, shown = run_json(capsys, "styles", "show", "neon-noir")
    assert code == 0 and "neon noir portrait" in shown["prompt"] and shown["loras"][1]["downloaded"]
    code, checked = run_json(capsys, "styles", "check")
    assert code == 0 and checked["problems"] == []

    # Taken ids, bad ids and words that fight their family are refused before anything is written.
    for argv, said in ((["anime", "--prompt", "x"], "taken (a shipped style)"),
                       (["neon-noir", "--prompt", "x"], "taken (one you added)"),
                       (["Bad Id!", "--prompt", "x"], "is not a style id"),
                       (["inky", "--prompt", "ink sketch, photorealistic, 35mm photo", "--family", "illustration"],
                        "an illustration style with photo terms"),
                       (["odd", "--prompt", "x", "--family", "sculpture"], "Unknown family 'sculpture'")):
        assert main(["styles", "add", *argv]) == 2
        assert said in capsys.readouterr().err, argv

    code, removed = run_json(capsys, "styles", "remove", "neon-noir")
    assert code == 0 and not style_file.exists() and files_under(owner / "styles") == []
    assert main(["styles", "remove", "anime"]) == 2
    assert "is a shipped style" in capsys.readouterr().err


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_damaged_or_hostile_lora_is_refused_in_one_line_and_nothing_is_kept(owner, loras, tmp_path, capsys):
    import torch

    pickled = tmp_path / "pickled.safetensors"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, pickled)  # a pickle named like safetensors
    huge = tmp_path / "huge.safetensors"
    with huge.open("wb") as file:
        file.truncate(1100 * 2**20)  # sparse: 1.1 GB on paper
    not_lora = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, not_lora)
    cases = {
        pickled: "not a .safetensors file (a pickle or another format",
        write(tmp_path / "noise.safetensors", bytes(range(256)) * 40): "not a .safetensors file",
        write(tmp_path / "short.safetensors", b"abc"): "too short",
        huge: "a style LoRA is at most 1024 MB",
        not_lora: "holds no LoRA weights",
        loras["wrong"]: "does not fit this bot's base model",
        tmp_path / "missing.safetensors": "does not exist",
    }
    for path, said in cases.items():
        assert main(["styles", "add", "evil", "--prompt", "x", "--lora", str(path)]) == 2, path
        error = capsys.readouterr().err.strip()
        assert said in error and len(error.splitlines()) == 1 and "Traceback" not in error, (path, error)
    assert files_under(owner / "styles") == []  # nothing of any of them was kept


FACECHAIN_POLAROID = {  # FaceChain's styles/<base model>/*.json fields, values of our own
    "name": "拍立得风(Polaroid style)", "img": "./style_image/Polaroid_style.jpg",
    "model_id": "someone/polaroid_lora", "revision": "v1.0.0", "bin_file": "polaroid.safetensors",
    "multiplier_style": 0.4, "multiplier_human": 0.95,
    "add_prompt_style": "close-up, front view, film grain, flash, polaroid, instant photo, realistic face",
}
FACECHAIN_PLAIN = {"name": "Sunny park", "img": "./style_image/park.jpg",
                   "add_prompt_style": "in a sunny park, soft light, bokeh"}


def test_facechain_style_files_are_imported_and_other_files_refused_by_name(owner, tmp_path, capsys):
    polaroid = write(tmp_path / "Polaroid_style.json", json.dumps(FACECHAIN_POLAROID, ensure_ascii=False).encode())
    plain = write(tmp_path / "Sunny_park.json", json.dumps(FACECHAIN_PLAIN).encode())
    code, imported = run_json(capsys, "styles", "import", str(polaroid), str(plain))
    assert code == 0, imported
    assert [s["id"] for s in imported] == ["polaroid-style", "sunny-park"]
    from engine.config import load_settings

    catalogue = load_catalogue(load_settings(_env_file=None))
    style = catalogue.get("polaroid-style")
    assert style.name == "Polaroid style" and style.face_weight == 0.95 and "instant photo" in style.prompt
    assert (style.lora.reference, style.lora.weight_name, style.lora.revision, style.lora.weight) == (
        "modelscope:someone/polaroid_lora", "polaroid.safetensors", "v1.0.0", 0.4)
    assert catalogue.get("sunny-park").lora is None

    comfy = write(tmp_path / "comfy.json", json.dumps([{"name": "x", "prompt": "{prompt}"}]).encode())
    broken = write(tmp_path / "broken.json", b"{not json")
    for path, said in ((comfy, "is not a FaceChain style file: it has no name and add_prompt_style"),
                       (broken, "is not a FaceChain style file: not readable JSON")):
        assert main(["styles", "import", str(path)]) == 2
        error = capsys.readouterr().err
        assert str(path) in error and said in error
    other = write(tmp_path / "Other.json", json.dumps({**FACECHAIN_PLAIN, "name": "Other"}).encode())
    assert main(["styles", "import", str(other), str(polaroid)]) == 2  # polaroid is there now: nothing imported
    assert "Style id(s) taken: polaroid-style" in capsys.readouterr().err
    assert load_catalogue(load_settings(_env_file=None)).get("other") is None
