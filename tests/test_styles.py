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
        assert style.prompt and style.description and 0.8 <= style.face_weight <= 0.95  # FaceChain: 0.8-0.95


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


# What a member would see fight a style: photo words in an art style, its own medium negated.
PHOTO_WORDS = ["photo", "photograph", "photorealistic", "raw photo", "realistic"]
MEDIUM_WORDS = {"illustration": ["illustration", "sketches", "cartoon", "anime", "comic"],
                "painting": ["painting", "paintings", "brush", "watercolor"],
                "render3d": ["3d render", "3d", "clay"], "pixel": ["pixel", "pixel art"],
                "monochrome-photo": ["monochrome", "grayscale", "black and white"]}


def _has(text: str, word: str) -> bool:
    import re

    return re.search(rf"(?<![a-z0-9]){re.escape(word)}(?![a-z0-9])", text.lower()) is not None


def test_styles_show_proves_every_style_owns_its_look(capsys):
    shown = {}
    for style_id in load_styles().styles:
        assert main(["styles", "show", style_id, "--json"]) == 0
        shown[style_id] = json.loads(capsys.readouterr().out)
    art = [s for s in shown.values() if s["family"] not in ("photo", "monochrome-photo")]
    assert {s["id"] for s in art} >= {"anime", "watercolor", "oil-painting", "ink-wash", "pixel-art", "comic-book",
                                      "clay", "low-poly", "pop-art", "ghibli-like", "renaissance"}
    for recipe in shown.values():
        assert recipe["negative_prompt"].startswith("nsfw, nude, naked"), recipe["id"]
        assert recipe["prompt"].startswith("<fcsks>, {trigger}, "), recipe["id"]
        assert recipe["sampler"]["name"] == "dpmpp_2m_karras" and recipe["fast_mode"]["sampler"] == "lcm"
    for recipe in art:
        assert not [w for w in PHOTO_WORDS if _has(recipe["prompt"], w)], recipe["id"]
    for recipe in shown.values():
        negated = [w for w in MEDIUM_WORDS.get(recipe["family"], []) if _has(recipe["negative_prompt"], w)]
        assert negated == [], (recipe["id"], negated)
    assert _has(shown["film-noir"]["prompt"], "black and white") and not _has(shown["film-noir"]["negative_prompt"],
                                                                               "grayscale")
    assert _has(shown["studio-headshot"]["negative_prompt"], "paintings")  # photos still keep paint out


def test_styles_facechain_pairs_with_loras_carry_its_real_references(capsys):
    expected = {  # from modelscope/facechain styles/*/*.json: model_id, revision, bin_file, multiplier_style
        "polaroid": ("modelscope:YorickHe/polaroid_lora", "v1.0.0", "InstantPhotoX3.safetensors", 0.4, 0.95),
        "oil-painting": ("modelscope:JeffVan/Oil_Paint_Style_LORA", "v1.0.0", "OilPaint.safetensors", 0.35, 0.95),
        "fantasy-elf": ("modelscope:Rechycs/Wizard_lora", "v1.0.0", "Wizard_of_Oz.safetensors", 0.3, 0.8),
        "astronaut": ("modelscope:StigXI/zju_01_LoRA", "v1.0.0", "scific.safetensors", 0.35, 0.95),
        "vintage-1920s": ("modelscope:Licht000/retro_style_lora", "v1.0.0", "lijiaxin.safetensors", 0.3, 0.95),
        "ink-wash": ("modelscope:Tekhne/GuoFengchill", "v1.0.0", "GuoFeng_sd-000006.safetensors", 0.35, 0.95),
    }
    catalogue = load_styles()
    for style_id, (reference, revision, file, weight, face) in expected.items():
        style = catalogue.get(style_id)
        assert (style.lora.reference, style.lora.revision, style.lora.weight_name, style.lora.weight,
                style.face_weight) == (reference, revision, file, weight, face), style_id
        assert main(["styles", "show", style_id]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert f"style LoRA: {reference} {file} at {weight:g} (not downloaded yet)" in text
    # Every art style without a LoRA says in its file why it needs none.
    for style in catalogue.styles.values():
        if style.lora is None and style.family != "photo":
            assert "No style LoRA" in (catalogue.folder / f"{style.id}.toml").read_text(), style.id


def test_a_style_may_own_its_frame_and_a_look_that_fights_itself_is_refused(styles_copy, capsys, monkeypatch):
    (styles_copy / "own.toml").write_text('name = "Own"\ndescription = "d"\nprompt = "charcoal sketch"\n'
                                          'family = "illustration"\nframe = "bust, charcoal on paper"\n'
                                          'negative_frame = "colour"\n')
    (styles_copy / "fights.toml").write_text('name = "F"\ndescription = "d"\nprompt = "watercolor portrait"\n'
                                             'family = "painting"\nnegative_prompt = "paintings"\n')
    (styles_copy / "photo-art.toml").write_text('name = "P"\ndescription = "d"\nprompt = "anime, raw photo"\n'
                                                'family = "illustration"\n')
    (styles_copy / "lost.toml").write_text('name = "L"\ndescription = "d"\nprompt = "p"\nfamily = "sculpture"\n')
    catalogue = load_styles(styles_copy)
    own = catalogue.get("own")
    from engine.generation.generate import build_negative_prompt, build_prompt

    assert build_prompt("a man", own).endswith("charcoal sketch, bust, charcoal on paper")
    assert build_negative_prompt(own) == "nsfw, nude, naked, colour"
    problems = {p.path.name: f"{p.field}: {p.message}" for p in catalogue.problems}
    assert problems["fights.toml"] == "negative_prompt: negates its own medium (paintings)"
    assert problems["photo-art.toml"] == "prompt: an illustration style with photo terms (photo, raw photo)"
    assert problems["lost.toml"].startswith("family: unknown family 'sculpture'")
    monkeypatch.setenv("FACECHAIN_STYLES_DIR", str(styles_copy))
    assert main(["styles", "check"]) == 1
    assert "fights.toml: negative_prompt: negates its own medium" in capsys.readouterr().err


def test_a_style_file_is_parsed_once_yet_an_edit_is_read_at_once(styles_copy):
    """Every job reads the catalogue, so a style file is parsed once per content: an edit (even one of the same
    size in the same instant) is read by the next load, and what a caller notes on a loaded style's LoRA (its
    hash, its bases) does not stay on the next load's."""
    anime = styles_copy / "anime.toml"
    anime.write_text(anime.read_text() + '\n[lora]\nreference = "someone/anime-lora"\n'
                     'weight_name = "anime.safetensors"\n')
    first = load_styles(styles_copy).styles["anime"]
    first.lora.digest, first.lora.bases = "noted by a caller", ["sdxl"]
    again = load_styles(styles_copy).styles["anime"].lora
    assert again.digest is None and again.bases == ["sd15"]
    text = anime.read_text()
    anime.write_text(text.replace("anime", "anyme", 1))
    assert load_styles(styles_copy).styles["anime"] != first
    anime.write_text(text)
    assert load_styles(styles_copy).styles["anime"].prompt == first.prompt
    assert load_styles(styles_copy).styles["anime"].lora.reference == "someone/anime-lora"
