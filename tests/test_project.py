"""The README's promises about the project itself."""

import re
from pathlib import Path

from engine.config import Settings

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.+?)\n```", README)
    assert len(commands) == 2, "the README has exactly two copy-paste commands"
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_documents_every_setting():
    for name in Settings.model_fields:
        assert f"`FACECHAIN_{name.upper()}`" in README, name


def test_the_bot_never_imports_engine_heavyweights():
    heavy = re.compile(r"^\s*(import|from)\s+(torch|diffusers|peft|accelerate|dlib|cv2|transformers)\b", re.MULTILINE)
    for path in (ROOT / "bot").rglob("*.py"):
        assert not heavy.search(path.read_text()), path
    for path in (ROOT / "engine").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+discord\b", path.read_text(), re.MULTILINE), path
