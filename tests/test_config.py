import re
from pathlib import Path

import pytest

from engine.config import Settings, load_settings
from engine.errors import SettingsError

ROOT = Path(__file__).parent.parent


def test_defaults_are_usable_without_any_configuration():
    settings = load_settings(_env_file=None)
    assert settings.data_dir == Path("data")
    assert settings.device == "auto"
    assert settings.face_backend == "dlib"
    assert settings.discord_token is None
    assert settings.db_path == Path("data/facechain.db")


def test_environment_and_dotenv_are_read(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("FACECHAIN_DEVICE=cpu\nFACECHAIN_DISCORD_TOKEN=abc.def.ghi\n")
    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(tmp_path / "elsewhere"))
    settings = load_settings()
    assert settings.device == "cpu"
    assert settings.discord_token.get_secret_value() == "abc.def.ghi"
    assert settings.data_dir == tmp_path / "elsewhere"
    assert "abc.def.ghi" not in repr(settings)  # secrets never print


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("FACECHAIN_DEVICE", "tpu", "FACECHAIN_DEVICE: Input should be 'auto', 'cuda', 'mps' or 'cpu' (got 'tpu')"),
        ("FACECHAIN_MAX_PHOTO_MEGAPIXELS", "-3", "FACECHAIN_MAX_PHOTO_MEGAPIXELS: Input should be greater than 0"),
        ("FACECHAIN_DEV_GUILD_ID", "my-server", "FACECHAIN_DEV_GUILD_ID: Input should be a valid integer"),
        ("FACECHAIN_FACE_BACKEND", "opencv", "FACECHAIN_FACE_BACKEND: Input should be 'dlib' or 'insightface'"),
    ],
)
def test_a_wrong_value_gives_one_line_naming_the_setting(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message


def test_env_example_lists_every_setting_with_a_comment():
    text = (ROOT / ".env.example").read_text()
    listed = re.findall(r"^#?\s*(FACECHAIN_[A-Z_]+)=", text, flags=re.MULTILINE)
    expected = {f"FACECHAIN_{name.upper()}" for name in Settings.model_fields}
    assert set(listed) == expected
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^#?\s*FACECHAIN_", line):
            assert lines[index - 1].startswith("#") and not re.match(r"^#\s*FACECHAIN_", lines[index - 1]), line


def test_the_vae_follows_the_base_model_unless_set(monkeypatch):
    from engine.config import DEFAULT_BASE_VAE

    monkeypatch.delenv("FACECHAIN_VAE", raising=False)  # the tests' default; here, as a fresh .env leaves it
    assert load_settings(_env_file=None).vae_reference == DEFAULT_BASE_VAE  # the default base's card asks for it
    assert load_settings(_env_file=None, base_model="/models/tiny-sd").vae_reference == ""  # its own
    assert load_settings(_env_file=None, base_model="/models/tiny-sd", vae="org/vae").vae_reference == "org/vae"
    assert load_settings(_env_file=None, vae="").vae_reference == ""  # empty: the base model's own


def test_a_tiny_model_loads_with_only_the_base_model_set(monkeypatch, tiny_model):
    """`facechain make-tiny-model` says to set FACECHAIN_BASE_MODEL: that alone must do (no hub VAE)."""
    from engine.models.base_model import load_base_pipeline

    monkeypatch.delenv("FACECHAIN_VAE", raising=False)
    monkeypatch.setenv("FACECHAIN_BASE_MODEL", str(tiny_model))
    monkeypatch.setenv("FACECHAIN_DEVICE", "cpu")
    base = load_base_pipeline(load_settings(_env_file=None))
    assert base.vae_reference == ""
