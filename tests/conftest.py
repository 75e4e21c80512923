from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

# Tests never reach a model hub: set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
# One math thread a process (set before torch is imported; the bots, workers and actors the tests start
# inherit it): the suite runs a worker per core, and two threads each on two cores spin against each
# other (the quick lane took 450 s so, 115 s with one thread each, 188 s in one process).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from PIL import Image

from engine.config import Settings, load_settings
from engine.faces import Face, FaceAnalyzer, get_analyzer
from engine.preprocess import UploadedPhoto
from engine.store import Store

DATA = Path(__file__).parent / "data"
# Photos of one person each (edge/rgba_32bit.png is obama2 with an alpha channel).
IDENTITIES = {
    "obama": ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg", "obama/obama4_small.jpg", "edge/rgba_32bit.png"],
    "biden": ["biden/biden1.jpg", "biden/biden2.jpg"],
    "rose": ["rose_leslie/rose1.jpg", "rose_leslie/rose2.jpg"],
}


# Settings every test process starts from: no separate VAE (the hub's is out of reach in tests).
TEST_MODEL_SETTINGS = {"VAE": ""}


# pytest-xdist (`-n auto` in pyproject.toml): a worker per core, each given whole test files.
MOST_WORKERS = 4  # past four, the worker with the heavy files (five minutes) sets the pace anyway
# The Ray cluster's dozen processes and a full-size SDXL (18 GB on the CPU) at the same time would pass
# a 24 GB machine's memory: these files run one after the other, on one worker, while the others run
# the rest.
HEAVY_FILES = ("tests/test_cluster.py", "tests/test_sd15_contract.py", "tests/test_sdxl_contract.py")


def file_of_test(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """A worker per core, at most MOST_WORKERS; none when the command names single tests (they run in
    this process, where -s and --pdb work)."""
    if config.args and all("::" in arg for arg in config.args):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, MOST_WORKERS)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Whole files to a worker (a module's fixtures, such as the Ray cluster, are made once), the heavy
    ones together, in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class FilesInOrder(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = file_of_test(nodeid)
            return "heavy files" if file in HEAVY_FILES else file

    config.option.loadscopereorder = False  # xdist would put the files with the most tests first
    return FilesInOrder(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files in the order the workers should take them: the heavy ones (five minutes together), the
    other slow ones, then the quick ones, each kind the files with the most tests first. The short
    files come last and fill in, so the workers finish at about the same time."""
    file_of = {item.nodeid: file_of_test(item.nodeid) for item in items}
    tests_in = Counter(file_of.values())
    slow_files = {file_of[item.nodeid] for item in items if item.get_closest_marker("slow")}

    def order(item: pytest.Item) -> tuple:
        file = file_of[item.nodeid]
        return file not in HEAVY_FILES, file not in slow_files, -tests_in[file], file

    items.sort(key=order)


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    """No developer's FACECHAIN_* variables or .env may leak into a test."""
    for name in list(os.environ):
        if name.startswith("FACECHAIN_"):
            monkeypatch.delenv(name)
    for name, value in TEST_MODEL_SETTINGS.items():  # the random test models carry their own VAE
        monkeypatch.setenv(f"FACECHAIN_{name}", value)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session", autouse=True)
def faces_found_once():
    """dlib answers the same for the same pixels, and the tests show it the same few photos hundreds of
    times: each photo's faces and identity vectors are computed once per run, then handed out as copies.
    (Subprocesses, such as the bot's worker, still compute every one.)"""
    from engine.faces.dlib_backend import DlibAnalyzer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DlibAnalyzer, "detect", remembered(DlibAnalyzer.detect, copy_faces))
        patch.setattr(DlibAnalyzer, "embed", remembered(DlibAnalyzer.embed, np.copy))
        yield


def remembered(method, copy):
    answers: dict[tuple, object] = {}

    def answer(analyzer, image: np.ndarray, *face):
        pixels = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest()
        key = (pixels, image.shape, image.dtype.str, *((f.box, f.landmarks.tobytes()) for f in face))
        if key not in answers:
            answers[key] = method(analyzer, image, *face)
        return copy(answers[key])

    return answer


def copy_faces(faces: list[Face]) -> list[Face]:
    return [replace(face, landmarks=face.landmarks.copy(), left_eye=face.left_eye.copy(),
                    right_eye=face.right_eye.copy()) for face in faces]


@pytest.fixture
def settings(tmp_path) -> Settings:
    return load_settings(_env_file=None, data_dir=tmp_path / "data")


@pytest.fixture(scope="session")
def analyzer() -> FaceAnalyzer:
    return get_analyzer(load_settings(_env_file=None))


@pytest.fixture
def store(settings) -> Store:
    opened = Store(settings.data_dir)
    yield opened
    opened.close()


def photo(relative: str) -> UploadedPhoto:
    return UploadedPhoto(name=relative, data=(DATA / relative).read_bytes())


def image_array(relative: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / relative).convert("RGB"))


def encode(image: np.ndarray | Image.Image, format_name: str = "JPEG", **options) -> bytes:
    import io

    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    picture.save(buffer, format=format_name, **options)
    return buffer.getvalue()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random SD pipeline written once per test session."""
    from engine.models.random_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_model, tmp_path_factory) -> Path:
    """A random pose ControlNet shaped after the tiny model's UNet, as `facechain make-tiny-model` writes it."""
    from engine.models.random_models import make_random_controlnet

    return make_random_controlnet(tmp_path_factory.mktemp("controlnets") / "openpose", tiny_model)


@pytest.fixture(scope="session")
def tiny_pose_detector(tmp_path_factory) -> Path:
    """DWPose's two ONNX files with fixed answers: one person standing, arms out, in any photo."""
    import warnings

    from engine.models.random_models import make_tiny_pose_detector

    with warnings.catch_warnings():  # torch's legacy ONNX exporter's notices are not ours
        warnings.simplefilter("ignore")
        return make_tiny_pose_detector(tmp_path_factory.mktemp("dwpose") / "standing")


@pytest.fixture(scope="session")
def instant_models(tiny_model, tmp_path_factory) -> dict[str, str]:
    """Instant portraits' models for the tiny model, in their real formats, and the settings naming them."""
    import warnings

    from engine.models.random_instant import make_tiny_instant_models

    with warnings.catch_warnings():  # torch's legacy ONNX exporter's notices are not ours
        warnings.simplefilter("ignore")
        return make_tiny_instant_models(tmp_path_factory.mktemp("instant"), tiny_model)


@pytest.fixture(scope="session")
def safety_checkers(tmp_path_factory) -> dict[str, Path]:
    """Tiny random safety checkers saved like the real one: "flags_all" flags every image, "flags_none" none."""
    from engine.models.random_models import make_tiny_safety_checker

    folder = tmp_path_factory.mktemp("checkers")
    return {"flags_all": make_tiny_safety_checker(folder / "flags_all", flags_everything=True),
            "flags_none": make_tiny_safety_checker(folder / "flags_none", flags_everything=False)}


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A tiny random SDXL pipeline (two text encoders, time ids) written once per test session."""
    from engine.models.random_sdxl import make_tiny_sdxl_model

    return make_tiny_sdxl_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")
