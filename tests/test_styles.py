import json
import shutil

import pytest

from engine.cli import main
from engine.styles import STYLES_DIR, load_styles

REQUESTED = ["cyberpunk", "anime", "oil-painting", "watercolor", "pixel-art", "film-noir", "studio-headshot",
             "business-suit", "wedding", "renaissance", "fantasy-elf", "astronaut", "vintage-1920s", "ghibli-like",
             "comic-book", "pop-art", "clay", "low-poly", "steampunk", "winter", "beach", "graduation", "superhero",
             "ink-wash"]


def test_the_curated_styles_all_load():
    catalogue = load_styles()
    assert catalogue.problems == []
    assert set(REQUESTED) <= set(catalogue.styles)
    assert len(catalogue.styles) >= 24
    for style in catalogue.styles.values():
        assert style.prompt and style.description and 0.85 <= style.face_weight <= 0.95


def test_search_filters_by_what_was_typed_and_caps_at_25():
    catalogue = load_styles()
    assert [s.id for s in catalogue.search("cyber")] == ["cyberpunk"]
    assert "oil-painting" in [s.id for s in catalogue.search("paint")]  # by tag
    assert len(catalogue.search("")) == min(25, len(catalogue.styles))
    assert catalogue.search("zzz-nothing") == []


@pytest.fixture
def styles_copy(tmp_path):
    folder = tmp_path / "styles"
    shutil.copytree(STYLES_DIR, folder)
    return folder


def test_a_broken_style_is_reported_with_path_and_field_and_others_still_load(styles_copy):
    (styles_copy / "broken.toml").write_text('name = "Broken"\ndescription = "x"\nprompt = ""\n')
    (styles_copy / "typo.toml").write_text('name = "Typo"\ndescription = "x"\nprompt = "y"\nface_wieght = 0.9\n')
    (styles_copy / "heavy.toml").write_text('name = "H"\ndescription = "x"\nprompt = "y"\n[lora]\nreference = "a/b"\nweight = 9\n')
    (styles_copy / "not-toml.toml").write_text("name = \n")
    (styles_copy / "no-preview.toml").write_text('name = "N"\ndescription = "x"\nprompt = "y"\npreview = "gone.png"\n')
    catalogue = load_styles(styles_copy)
    found = {(p.path.name, p.field) for p in catalogue.problems}
    assert found == {("broken.toml", "prompt"), ("typo.toml", "face_wieght"), ("heavy.toml", "lora.weight"),
                     ("not-toml.toml", "file"), ("no-preview.toml", "preview")}
    assert len(catalogue.styles) == len(load_styles().styles)
    assert "broken.toml: prompt: String should have at least 1 character" in str(
        next(p for p in catalogue.problems if p.path.name == "broken.toml"))


def test_a_style_with_a_lora_and_sampler_hints(styles_copy):
    (styles_copy / "previews").mkdir()
    (styles_copy / "previews" / "x.png").write_bytes(b"png")
    (styles_copy / "lora-style.toml").write_text(
        'name = "L"\ndescription = "d"\nprompt = "p"\npreview = "previews/x.png"\n'
        '[lora]\nreference = "modelscope:someone/style"\nweight_name = "style.safetensors"\nweight = 0.3\n'
        '[sampler]\nname = "euler_a"\nsteps = 8\nguidance = 2\n')
    style = load_styles(styles_copy).get("lora-style")
    assert style.lora.reference == "modelscope:someone/style" and style.lora.weight == 0.3
    assert style.lora.weight_name == "style.safetensors"
    assert (style.sampler.name, style.sampler.steps) == ("euler_a", 8)
    assert load_styles(styles_copy).get("anime").sampler.name == "dpmpp_2m_karras"  # the default


def test_styles_cli(capsys, monkeypatch, styles_copy):
    assert main(["styles", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"id", "name", "description", "prompt", "lora", "face_weight"} <= set(listed[0])
    assert main(["styles", "check"]) == 0
    capsys.readouterr()
    (styles_copy / "broken.toml").write_text('name = "B"\n')
    monkeypatch.setenv("FACECHAIN_STYLES_DIR", str(styles_copy))
    assert main(["styles", "check"]) == 1
    assert "broken.toml: description: Field required" in capsys.readouterr().err
