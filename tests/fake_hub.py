"""A local stand-in for the Hugging Face hub's file API, as tests/fake_discord.py is for Discord.

`huggingface_hub` reads its endpoint from HF_ENDPOINT; pointed here, the real client lists a
repository (`/api/models/<id>/revision/<rev>`, `/api/models/<id>/tree/<rev>`) and fetches files
(`HEAD`/`GET /<id>/resolve/<rev>/<path>`). Every file request is recorded, so a test can say
exactly which files a download took. Big files can be sparse (`os.truncate`): they cost no disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"
GB = 10**9

# The default base model's repository (SG161222/Realistic_Vision_V5.1_noVAE): the diffusers folders
# and, beside them, eight single-file checkpoints (4 x 4.27 GB, 4 x 2.13 GB) that loading never reads.
REALISTIC_VISION_CHECKPOINTS = {
    "Realistic_Vision_V5.1.ckpt": 4.27, "Realistic_Vision_V5.1.safetensors": 4.27,
    "Realistic_Vision_V5.1-inpainting.ckpt": 4.27, "Realistic_Vision_V5.1-inpainting.safetensors": 4.27,
    "Realistic_Vision_V5.1_fp16-no-ema.ckpt": 2.13, "Realistic_Vision_V5.1_fp16-no-ema.safetensors": 2.13,
    "Realistic_Vision_V5.1_fp16-no-ema-inpainting.ckpt": 2.13,
    "Realistic_Vision_V5.1_fp16-no-ema-inpainting.safetensors": 2.13,
}


@dataclass
class Request:
    method: str
    repo: str
    path: str


@dataclass
class FakeHub:
    root: Path  # where the repositories' files live: root/<org>/<name>/<path>
    requests: list[Request] = field(default_factory=list)
    offline: bool = False  # every API call answers 503

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- repositories ---------------------------------------------------------------------------

    def add_folder(self, repo: str, folder: Path) -> Path:
        """A repository holding a copy of `folder`'s files (hard links: no extra disk)."""
        target = self.root / repo
        for source in folder.rglob("*"):
            if source.is_file():
                destination = target / source.relative_to(folder)
                destination.parent.mkdir(parents=True, exist_ok=True)
                if not destination.exists():
                    os.link(source, destination)
        return target

    def add_file(self, repo: str, path: str, data: bytes | None = None, sparse_bytes: int = 0) -> Path:
        file = self.root / repo / path
        file.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            file.write_bytes(data)
        else:
            with file.open("wb") as handle:
                os.truncate(handle.fileno(), sparse_bytes)  # a decoy of that size, with no blocks on disk
        return file

    def files(self, repo: str) -> dict[str, Path]:
        base = self.root / repo
        return {str(p.relative_to(base)): p for p in sorted(base.rglob("*")) if p.is_file()}

    def fetched(self, repo: str | None = None) -> list[str]:
        """Paths whose content was downloaded (GET)."""
        return [r.path for r in self.requests if r.method == "GET" and (repo is None or r.repo == repo)]

    # --- the server -------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        threading.Thread(target=self._loop.run_forever, name="fake-hub", daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/models/{org}/{name}/revision/{revision}", self._info)
        app.router.add_get("/api/models/{org}/{name}", self._info)
        app.router.add_get("/api/models/{org}/{name}/tree/{revision}", self._tree)
        app.router.add_get("/{org}/{name}/resolve/{revision}/{path:.+}", self._file)  # HEAD too
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def _repo(self, request: web.Request) -> str:
        return f"{request.match_info['org']}/{request.match_info['name']}"

    def _answer(self, data: object, status: int = 200) -> web.Response:
        return web.Response(status=status, body=json.dumps(data), headers={"Content-Type": "application/json"})

    def _missing(self, request: web.Request) -> web.Response | None:
        if self.offline:
            return web.Response(status=503, text="hub is down")
        if not (self.root / self._repo(request)).is_dir():
            return web.Response(status=404, headers={"X-Error-Code": "RepoNotFound"}, text="Repository not found")
        return None

    async def _info(self, request: web.Request) -> web.Response:
        if (refused := self._missing(request)) is not None:
            return refused
        repo = self._repo(request)
        self.requests.append(Request("INFO", repo, ""))
        return self._answer({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                             "siblings": [{"rfilename": path} for path in self.files(repo)]})

    async def _tree(self, request: web.Request) -> web.Response:
        if (refused := self._missing(request)) is not None:
            return refused
        repo = self._repo(request)
        self.requests.append(Request("TREE", repo, ""))
        return self._answer([{"type": "file", "oid": _etag(path), "size": file.stat().st_size, "path": path}
                             for path, file in self.files(repo).items()])

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._missing(request)) is not None:
            return refused
        repo, path = self._repo(request), request.match_info["path"]
        file = self.files(repo).get(path)
        self.requests.append(Request(request.method, repo, path))
        if file is None:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"}, text="Entry not found")
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{_etag(path)}"', "Content-Length": str(file.stat().st_size),
                   "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        return web.FileResponse(file, headers={"ETag": headers["ETag"], "X-Repo-Commit": COMMIT})


def _etag(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()


def realistic_vision_layout(hub: FakeHub, pipeline_folder: Path, repo: str = "SG161222/Realistic_Vision_V5.1_noVAE",
                            with_bin: bool = True) -> str:
    """The default base model's repository file list, holding `pipeline_folder`'s diffusers files
    (and a .bin twin of each safetensors file), a model_index.json that also lists a feature
    extractor and a safety checker, and the eight big checkpoints as sparse decoys."""
    hub.add_folder(repo, pipeline_folder)
    index = json.loads((pipeline_folder / "model_index.json").read_text())
    index.update({"feature_extractor": ["transformers", "CLIPImageProcessor"],
                  "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]})
    (hub.root / repo / "model_index.json").unlink()
    hub.add_file(repo, "model_index.json", json.dumps(index).encode())
    if with_bin:
        for path in list(hub.files(repo)):
            if path.endswith(".safetensors"):
                folder, _, name = path.rpartition("/")
                unet_like = name.startswith("diffusion_pytorch_model")
                twin = "diffusion_pytorch_model.bin" if unet_like else "pytorch_model.bin"
                hub.add_file(repo, f"{folder}/{twin}", sparse_bytes=(hub.root / repo / path).stat().st_size)
    for name, gigabytes in REALISTIC_VISION_CHECKPOINTS.items():
        hub.add_file(repo, name, sparse_bytes=int(gigabytes * GB))
    hub.add_file(repo, "README.md", b"# Realistic Vision V5.1 (stand-in)\n")
    hub.add_file(repo, ".gitattributes", b"*.safetensors filter=lfs\n")
    return repo
