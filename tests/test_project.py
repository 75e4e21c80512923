"""The README's promises about the project itself."""

import re
from pathlib import Path

from engine.config import Settings
from tests.import_graph import circles, import_graph, reachable

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


# What loads models or reaches the cluster: the bot's process needs none of it, even in a function it may call.
HEAVY_LIBRARIES = {"torch", "diffusers", "peft", "accelerate", "dlib", "cv2", "transformers", "ray", "onnxruntime"}


def test_no_import_circles_counting_imports_inside_functions():
    graph, _ = import_graph()
    assert circles(graph) == []


def test_nothing_the_bot_can_reach_imports_a_heavy_library():
    graph, third_party = import_graph()
    bot_modules = [name for name in graph if name.split(".")[0] == "bot"]
    reached = set(bot_modules).union(*(reachable(graph, name) for name in bot_modules))
    heavy = {name: sorted(third_party[name] & HEAVY_LIBRARIES) for name in sorted(reached)
             if third_party[name] & HEAVY_LIBRARIES}
    assert heavy == {}


def test_the_engine_root_holds_only_light_shared_modules():
    """Each part has its folder; the root keeps what every part and the bot share."""
    root_modules = {p.stem for p in (ROOT / "engine").glob("*.py")}
    assert root_modules == {"__init__", "config", "errors", "styles", "nsfw_policy", "memory", "subjects"}
    for folder in (ROOT / "engine").iterdir():
        if folder.is_dir() and folder.name != "__pycache__":
            opening = (folder / "__init__.py").read_text().lstrip()
            assert opening.startswith('"""'), f"{folder.name}/__init__.py opens with what the part does"


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for package in ("engine", "bot") for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
