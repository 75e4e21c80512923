"""An owner's first hour, rehearsed with every model README.md and .env.example name.

The hub stand-in (tests/fake_hub.py) serves each documented repository under its own id with its real file
names (recorded below), random weights in the files loading reads and empty stand-ins for the rest. Each
documented setup then runs as an owner runs it: `facechain models pull`, `facechain doctor`, and with the hub
out of reach a worker that does one job of every kind the setup offers. A documented id that is not rehearsed
here must be named in NOT_REHEARSED with the reason, or the first test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import load_settings
from engine.jobs.queue import SqliteJobQueue
from engine.store import Store
from engine.store.together import set_together
from tests.conftest import DATA
from tests.fake_hub import FakeHub, realistic_vision_layout

pytestmark = pytest.mark.slow  # pulls, doctors and worker processes: minutes

ROOT = Path(__file__).parent.parent
SD15_BASE, SDXL_BASE, REALVIS_XL = ("SG161222/Realistic_Vision_V5.1_noVAE", "stabilityai/stable-diffusion-xl-base-1.0",
                                    "SG161222/RealVisXL_V4.0")
SAFETY_CHECKER = "CompVis/stable-diffusion-safety-checker"
# Each documented repository's files besides those loading reads (which come from the random models): their real
# names, served empty, so a loader that took more than it needs would be seen fetching them.
OTHER_FILES = {
    "stabilityai/sd-vae-ft-mse": ["diffusion_pytorch_model.bin", "README.md", ".gitattributes"],
    "madebyollin/sdxl-vae-fp16-fix": ["diffusion_pytorch_model.bin", "sdxl.vae.safetensors", "sdxl_vae.safetensors",
                                      "README.md", "images/vae-fp16-fix.png"],
    "latent-consistency/lcm-lora-sdv1-5": ["README.md", "image.png"],
    "latent-consistency/lcm-lora-sdxl": ["README.md", "image.png"],
    "lllyasviel/control_v11p_sd15_openpose": [
        "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.fp16.safetensors",
        "README.md", "images/control.png", "images/image_out.png", "images/input.png"],
    "lllyasviel/control_v11f1p_sd15_depth": [
        "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.fp16.safetensors",
        "README.md", "images/control.png", "images/image_out.png", "images/input.png"],
    "yzd-v/DWPose": ["dw-ll_ucoco.onnx", "dw-mm_ucoco.onnx", "dw-ss_ucoco.onnx", "dw-tt_ucoco.onnx", "README.md"],
    "Intel/dpt-hybrid-midas": ["pytorch_model.bin", "README.md"],
    "jonathandinu/face-parsing": ["pytorch_model.bin", "onnx/model.onnx", "onnx/model_quantized.onnx", "README.md",
                                  "demo.png"],
    SAFETY_CHECKER: ["pytorch_model.bin", "README.md"],
    "lllyasviel/Annotators": ["ControlNetHED.pth", "body_pose_model.pth", "hand_pose_model.pth", "dpt_hybrid-midas-"
                              "501f0c75.pt", "network-bsds500.pth", "res101.pth", "upernet_global_small.pth",
                              "RealESRGAN_x4plus_anime_6B.pth"],
    SDXL_BASE: ["sd_xl_base_1.0.safetensors", "sd_xl_base_1.0_0.9vae.safetensors",
                "sd_xl_offset_example-lora_1.0.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                "vae_1_0/diffusion_pytorch_model.safetensors", "README.md"],
    REALVIS_XL: ["RealVisXL_V4.0.safetensors", "RealVisXL_V4.0_inpainting.safetensors", "README.md"],
    "h94/IP-Adapter-FaceID": ["ip-adapter-faceid_sd15.bin", "ip-adapter-faceid_sd15_lora.safetensors",
                              "ip-adapter-faceid-plus_sd15.bin", "ip-adapter-faceid-plusv2_sd15_lora.safetensors",
                              "ip-adapter-faceid-plusv2_sdxl.bin", "ip-adapter-faceid-portrait_sd15.bin", "README.md"],
    "h94/IP-Adapter": ["models/ip-adapter_sd15.safetensors", "models/ip-adapter-plus-face_sd15.safetensors",
                       "models/image_encoder/pytorch_model.bin", "sdxl_models/image_encoder/model.safetensors",
                       "README.md"],
}
# Documented ids this rehearsal does not serve, and why (none now: an id added to the docs fails the first test
# until it is rehearsed or named here).
NOT_REHEARSED: dict[str, str] = {}


def documented_ids() -> set[str]:
    """Every hub id README.md names in backticks and .env.example names (as a value or in its comments)."""
    pattern = r"(?:modelscope:)?[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]+"
    readme = set(re.findall(rf"`({pattern})`", (ROOT / "README.md").read_text()))
    example = set(re.findall(rf"(?<![\w/~.-])({pattern})", (ROOT / ".env.example").read_text()))
    # Paths and words, not models (models/image_encoder: a folder in h94/IP-Adapter, rehearsed with it).
    prose = {"true/false", "srv/facechain", "home/me", "insightface/models", "models/image_encoder"}
    return {ref for ref in readme | example if ref not in prose and not re.search(r"\.(py|md|toml|json)$", ref)}


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_model, tiny_sdxl, tiny_controlnet, tiny_pose_detector, safety_checkers):
    from diffusers import UNet2DConditionModel

    from engine.models import random_models as make
    from engine.models.random_instant import make_tiny_instant_models

    folder = tmp_path_factory.mktemp("rehearsal-models")
    served = FakeHub(folder / "hub")
    realistic_vision_layout(served, tiny_model, SD15_BASE)
    for sdxl in (SDXL_BASE, REALVIS_XL):
        served.add_folder(sdxl, tiny_sdxl)
    served.add_folder("stabilityai/sd-vae-ft-mse", tiny_model / "vae")
    served.add_folder("madebyollin/sdxl-vae-fp16-fix", tiny_sdxl / "vae")
    for repo, base in (("latent-consistency/lcm-lora-sdv1-5", tiny_model), ("latent-consistency/lcm-lora-sdxl",
                                                                              tiny_sdxl)):
        lora = make.make_random_lora(UNet2DConditionModel.from_pretrained(base / "unet"), folder / repo / "l.st",
                                     kohya=True)
        served.add_file(repo, "pytorch_lora_weights.safetensors", lora.read_bytes())
    served.add_folder("lllyasviel/control_v11p_sd15_openpose", tiny_controlnet)
    served.add_folder("lllyasviel/control_v11f1p_sd15_depth",
                      make.make_random_controlnet(folder / "depth-controlnet", tiny_model, seed=1))
    served.add_folder("yzd-v/DWPose", tiny_pose_detector)
    served.add_folder("Intel/dpt-hybrid-midas", make.make_tiny_depth_estimator(folder / "depth"))
    served.add_folder("jonathandinu/face-parsing", make.make_tiny_face_parser(folder / "parser"))
    served.add_folder(SAFETY_CHECKER, safety_checkers["flags_none"])
    served.add_file("lllyasviel/Annotators", "RealESRGAN_x4plus.pth",
                    make.make_random_rrdb(folder / "rrdb.pth", passthrough=True).read_bytes())
    instant = make_tiny_instant_models(folder / "instant", tiny_model)
    served.add_file("h94/IP-Adapter-FaceID", "ip-adapter-faceid-plusv2_sd15.bin",
                    Path(instant["FACECHAIN_INSTANT_ADAPTER"]).read_bytes())
    for name in ("config.json", "model.safetensors"):
        served.add_file("h94/IP-Adapter", f"models/image_encoder/{name}",
                        (Path(instant["FACECHAIN_INSTANT_IMAGE_ENCODER"]) / name).read_bytes())
    served.arcface = instant["FACECHAIN_INSIGHTFACE_MODEL_DIR"]  # insightface's pack comes from no hub
    for repo, names in OTHER_FILES.items():
        for name in names:
            served.add_file(repo, name, sparse_bytes=10**5)
    served.start()
    yield served
    served.stop()


def test_every_documented_model_id_is_rehearsed_or_named_with_why(hub):
    served = {path.relative_to(hub.root).as_posix() for path in hub.root.glob("*/*")}
    documented = documented_ids()
    assert documented == (served & documented) | set(NOT_REHEARSED), (
        f"documented but not rehearsed: {sorted(documented - served - set(NOT_REHEARSED))}")
    assert len(documented) >= 16  # the 16 named today


def owner_env(hub: FakeHub, tmp_path: Path, **settings: str) -> dict[str, str]:
    """An owner's environment: the documented defaults (nothing set but what a setup changes), the hub stand-in for
    Hugging Face, styles without ModelScope LoRAs (no stand-in for ModelScope: the shipped styles that carry one are
    left out), and the tiny models' small sizes."""
    styles = tmp_path / "styles"
    styles.mkdir(exist_ok=True)
    for path in (ROOT / "styles").glob("*.toml"):
        if "[lora]" not in path.read_text():
            shutil.copy(path, styles / path.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACECHAIN_", "HF_"))}
    env.update({"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_HUB_DISABLE_XET": "1",
                "PYTHONPATH": str(ROOT)})
    (tmp_path / "data").mkdir(exist_ok=True)
    values = {"DATA_DIR": tmp_path / "data", "STYLES_DIR": styles, "DEVICE": "cpu", "TRAIN_RESOLUTION": 64,
              "TRAIN_STEPS_PER_PHOTO": 2, "PORTRAIT_SIZE": 64, "SDXL_SIZE": 64, "PORTRAIT_CANDIDATES": 2,
              "JOB_RETRY_SECONDS": 0, "MAX_QUEUED_PORTRAITS_PER_USER": 20, **settings}
    env.update({f"FACECHAIN_{name}": str(value) for name, value in values.items()})
    return env


def facechain(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, cwd=env["FACECHAIN_DATA_DIR"],
                          capture_output=True, text=True, timeout=600)


def pull_and_doctor(hub: FakeHub, env: dict[str, str]) -> list[str]:
    """`models pull` fetches every model the setup names, then `doctor` finds each of them here; the names."""
    pulled = facechain(env, "models", "pull", "--json")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    rows = json.loads(pulled.stdout)
    assert all(row["status"] == "downloaded" for row in rows), rows
    doctor = facechain({**env, "HF_HUB_OFFLINE": "1"}, "doctor", "--json")
    checks = {check["name"]: check for check in json.loads(doctor.stdout)}
    assert all(checks[row["name"]]["status"] == "ok" for row in rows), [checks[row["name"]] for row in rows]
    return [row["name"] for row in rows]


def first_portrait(worker) -> int:
    return worker.queue.store.db.execute("select id from portraits where style = 'cyberpunk' limit 1").fetchone()[0]


class OfflineWorker:
    """`facechain worker` with the hub out of reach (HF_HUB_OFFLINE): everything comes from what was pulled."""

    def __init__(self, env: dict[str, str]) -> None:
        settings = load_settings(_env_file=None, **{name.removeprefix("FACECHAIN_").lower(): value
                                                    for name, value in env.items() if name.startswith("FACECHAIN_")})
        self.data = settings.data_dir
        self.queue = SqliteJobQueue(Store(self.data), settings)
        self.process = subprocess.Popen([sys.executable, "-m", "engine.cli", "worker"], cwd=self.data,
                                        env={**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def upload(self, name: str) -> str:
        target = self.data / "tmp" / "uploads" / f"{time.monotonic_ns()}-{Path(name).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / name, target)
        return str(target)

    def enroll(self, user: str, photos: list[str]) -> None:
        uploads = [{"name": Path(p).name, "path": self.upload(p)} for p in photos]
        self.queue.enqueue("enroll", user, {"uploads": uploads, "train_after": True, "subject": "man"})

    def run(self, *jobs: tuple[str, str, dict], timeout: float = 400) -> list:
        """Queue these (kind, member, params) and wait until the queue is empty; every job must be done."""
        for kind, user, params in jobs:
            self.queue.enqueue(kind, user, params)
        deadline = time.monotonic() + timeout
        while self.queue.active_jobs():
            assert self.process.poll() is None and time.monotonic() < deadline, self.stop()
            time.sleep(0.3)
        finished = self.queue.jobs(limit=1000)
        assert all(job.state == "done" for job in finished), [(j.kind, j.state, j.error) for j in finished]
        return finished

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.communicate(timeout=120)[0]


def test_the_default_setup_with_its_documented_extras_pulls_checks_and_runs_every_kind_offline(hub, tmp_path):
    env = owner_env(hub, tmp_path, POSE_DEPTH="true", SAFETY_CHECKER=SAFETY_CHECKER, INSTANT="true",
                    INSIGHTFACE_MODEL_DIR=hub.arcface)
    pulled = pull_and_doctor(hub, env)
    assert {"base model", "VAE", "safety checker", "pose ControlNet", "depth ControlNet", "depth estimator",
            "face parser", "fast-mode LoRA", "upscaler (Upscale x4)", "instant portraits adapter",
            "instant portraits image encoder (weights)"} <= set(pulled)
    worker = OfflineWorker(env)
    try:
        worker.enroll("ann", ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg"])
        worker.enroll("ben", ["rose_leslie/rose1.jpg", "rose_leslie/rose2.jpg"])
        worker.run()  # the enrollments, their previews and trainings
        set_together(worker.queue.store, "ben", "always")
        portrait = {"style": "cyberpunk", "count": 1}
        done = worker.run(
            ("generate", "ann", portrait), ("generate", "ann", {**portrait, "fast": True}),
            ("generate", "ann", {**portrait, "pose": "waving"}), ("generate", "ann", {**portrait, "instant": True}),
            ("generate", "ann", {**portrait, "pose_upload": worker.upload("biden/biden1.jpg")}),
            ("redraw", "ann", {"upload": worker.upload("biden/biden2.jpg"), "name": "photo.jpg"}),
            ("swap", "ann", {"upload": worker.upload("biden/biden2.jpg"), "name": "photo.jpg"}),
            ("together", "ann", {"with": "ben", "upload": worker.upload("group/two_people.jpg"), "name": "us.jpg",
                                 "faces": [1, 2]}),
            ("preview", "ann", {"style": "cyberpunk"}))
        drawn = first_portrait(worker)
        done = worker.run(("upscale", "ann", {"portrait_id": drawn}), ("upscale", "ann", {"portrait_id": drawn,
                                                                                         "x4": True}))
    finally:
        log = worker.stop()
    kinds = {job.kind for job in done}
    assert kinds >= {"enroll", "instant", "train", "teaser", "generate", "redraw", "swap", "together", "preview",
                     "upscale"}, log
    assert "Traceback" not in log


@pytest.mark.parametrize("base", [SDXL_BASE, REALVIS_XL])
def test_an_sdxl_base_pulls_its_own_extras_and_draws_offline(hub, tmp_path, base):
    env = owner_env(hub, tmp_path, BASE_MODEL=base)
    pulled = pull_and_doctor(hub, env)
    assert "pose ControlNet" not in pulled and "upscaler (Upscale x4)" in pulled
    worker = OfflineWorker(env)
    try:
        worker.enroll("ann", ["obama/obama1.jpg", "obama/obama2.jpg"])
        worker.run()
        portrait = {"style": "cyberpunk", "count": 1}
        worker.run(("generate", "ann", portrait), ("generate", "ann", {**portrait, "fast": True}))
        drawn = first_portrait(worker)
        done = worker.run(("upscale", "ann", {"portrait_id": drawn, "x4": True}))
    finally:
        log = worker.stop()
    assert {job.kind for job in done} >= {"enroll", "train", "generate", "upscale"} and "Traceback" not in log
