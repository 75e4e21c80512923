"""Running the real bot against the fake Discord: a subprocess, its settings, and helpers to look
at the database it writes. Shared by the end-to-end test modules."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.store import Store
from engine.store.store import utc_now
from tests.conftest import DATA, TEST_MODEL_SETTINGS
from tests.fake_discord import FakeDiscord, Message

ROOT = Path(__file__).parent.parent
ACK_LIMIT = 3.0
TOKEN = "test.token.value"  # must never show in a log
STYLE = '''name = "{name}"
description = "{name} test style."
prompt = "{id} portrait"
tags = ["test"]
[sampler]
steps = 4
'''


class BotProcess:
    def __init__(self, env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.env, self.cwd, self.log_path = env, cwd, log_path
        self.process: subprocess.Popen | None = None

    def start(self, fake: FakeDiscord) -> None:
        connections = fake.gateway_connections
        readies = self._readies()
        log = self.log_path.open("a")
        self.process = subprocess.Popen([sys.executable, "-m", "tests.run_bot"], cwd=self.cwd, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT)
        fake.wait_for(lambda: fake.gateway_connections > connections and fake._sockets, 60, "the bot to connect")
        fake.wait_for(lambda: self._readies() > readies, 30, "the bot to be ready")

    def _readies(self) -> int:
        """How often the bot said it is ready (on_ready), in its log so far."""
        return self.log_path.read_text().count('"connected as ') if self.log_path.exists() else 0

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(60)

    def log(self) -> str:
        return self.log_path.read_text()


@dataclass
class Deployment:
    """Two servers on the fake Discord: Club (#general, #gallery, forum #showcase; alice is its admin,
    bob and carol are members) and Elsewhere (#general, #gallery; bob is its admin)."""

    fake: FakeDiscord
    bot: BotProcess
    data_dir: Path
    guild: str
    channels: dict[str, str]
    alice: str
    bob: str
    carol: str
    other_guild: str
    other_channels: dict[str, str]

    @property
    def general(self) -> str:
        return self.channels["general"]

    @property
    def gallery(self) -> str:
        return self.channels["gallery"]

    @property
    def other_general(self) -> str:
        return self.other_channels["general"]

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.data_dir / "facechain.db")

    def rows(self, sql: str, *params) -> list[tuple]:
        with self.db() as connection:
            return connection.execute(sql, params).fetchall()

    def upload(self, *relative: str) -> dict[str, dict]:
        return {f"photo{index}": self.fake.host_attachment(Path(path).name, (DATA / path).read_bytes())
                for index, path in enumerate(relative, start=1)}

    def result_of(self, interaction, timeout: float = 120) -> Message:
        """The response message once it shows portraits (files attached)."""
        message = self.fake.response(interaction)
        self.fake.wait_for(lambda: message.files or "⚠️" in message.text(), timeout, "portraits")
        return message

    def job_state(self, job_id: int) -> str:
        return self.rows("select state from jobs where id = ?", job_id)[0][0]




def write_styles(folder: Path) -> Path:
    """Small test styles (4 sampler steps; 'slow' has 150, for progress tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    for style_id, name in (("cyberpunk", "Cyberpunk"), ("anime", "Anime"), ("oil", "Oil Painting")):
        (folder / f"{style_id}.toml").write_text(STYLE.format(id=style_id, name=name))
    (folder / "slow.toml").write_text(STYLE.format(id="slow", name="Slow").replace("steps = 4", "steps = 150"))
    return folder


def bot_environment(fake: FakeDiscord, settings: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECHAIN_")}
    env.update({f"FACECHAIN_{k}": str(v) for k, v in {**TEST_MODEL_SETTINGS, **settings}.items()})
    env.update({"FAKE_DISCORD_URL": fake.url, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    return env


@contextmanager
def running_bot(root: Path, settings: dict, more_members: int = 0) -> Iterator[Deployment]:
    """The fake Discord with the two servers, and the real bot connected to it with `settings`.
    `more_members` adds that many plain members to Club (their ids are in `deployment.crowd`)."""
    fake = FakeDiscord().start()
    alice, bob, carol = fake.add_user("alice"), fake.add_user("bob"), fake.add_user("carol")
    crowd = [fake.add_user(f"member{index}") for index in range(more_members)]
    guild, channels = fake.add_guild("Club", ["general", "gallery", "after-dark"],
                                     {alice: True, bob: False, carol: False, **dict.fromkeys(crowd, False)},
                                     forums=("showcase",), age_restricted=("after-dark",))
    other_guild, other_channels = fake.add_guild("Elsewhere", ["general", "gallery"], {bob: True, carol: False})
    env = bot_environment(fake, {"DISCORD_TOKEN": TOKEN, "DATA_DIR": root / "data",
                                 "STYLES_DIR": write_styles(root / "styles"), **settings})
    bot = BotProcess(env, root, root / "bot.log")
    bot.start(fake)
    try:
        deployment = Deployment(fake, bot, root / "data", guild, channels, alice, bob, carol, other_guild,
                                other_channels)
        deployment.crowd = crowd
        yield deployment
    finally:
        if bot.process.poll() is None:
            bot.stop()
        fake.stop()


def add_finished_request(d: Deployment, user: str, style: str, colours: list[tuple[int, int, int]],
                         guild: str | None = None, channel: str | None = None, flagged: tuple[int, ...] = (),
                         result: dict | None = None) -> int:
    """A portrait request as the worker leaves it when done (plain-coloured 64 px portraits; those at the
    `flagged` positions marked by the safety check), so the bot delivers it like any result, with no
    worker needed. Returns the job id."""
    store = Store(d.data_dir)
    try:
        store.touch_user(user)
        folder = store.private_dir(user, "portraits")
        with store.transaction():
            job = store.db["jobs"].insert({
                "kind": "generate", "user_id": user, "guild_id": guild or d.guild, "channel_id": channel or d.general,
                "state": "done", "params": json.dumps({"style": style, "count": len(colours)}), "attempts": 1,
                "progress": 1.0, "result": json.dumps(result or {"portraits": [], "notice": None}),
                "created_at": utc_now(), "finished_at": utc_now()}).last_pk
            for seed, colour in enumerate(colours):
                path = folder / f"{style}-{seed}-job{job}.png"
                Image.new("RGB", (64, 64), colour).save(path)
                store.db["portraits"].insert({"user_id": user, "job_id": job, "style": style, "seed": seed,
                                              "similarity": 0.9 - seed / 10, "path": store.relative(path),
                                              "nsfw": int(seed in flagged), "created_at": utc_now()})
    finally:
        store.close()
    return job


def agree_to_consent(fake: FakeDiscord, member: str, prompt: Message, subject: str = "man") -> None:
    """On the first enrollment's consent: choose how portraits describe the member, then *I agree*."""
    menu, agree, _ = prompt.custom_ids()
    fake.wait_acked(fake.click(member, prompt, menu, values=[subject]))
    fake.click(member, prompt, agree)


def soak(d: Deployment, interactions: int = 300, pace_seconds: float = 0.1, enrollers: int = 3, seed: int = 7) -> list:
    """Members use the bot at once: `enrollers` of them enroll (so the worker trains) while random
    members send `interactions` commands mixed over status, help, styles, gallery and portrait.
    Returns the sent interactions, each acknowledged."""
    import itertools
    import random

    fake, members = d.fake, [d.alice, d.bob, d.carol, *getattr(d, "crowd", [])]
    chooser = random.Random(seed)
    for member in members[:enrollers]:  # consent, then photos
        prompt = fake.response(fake.command(member, d.general, d.guild, "enroll",
                                            attachments=d.upload("obama/obama1.jpg", "obama/obama2.jpg",
                                                                 "obama/obama3.jpg")))
        agree_to_consent(fake, member, prompt)
    kinds = itertools.cycle(["status", "help", "styles", "gallery", "portrait", "status", "portrait"])
    sent = []
    for _ in range(interactions):
        member, kind = chooser.choice(members), next(kinds)
        options = {"style": chooser.choice(["anime", "oil", "cyberpunk"]), "count": 1} if kind == "portrait" else {}
        sent.append(fake.command(member, d.general, d.guild, kind, options))
        time.sleep(pace_seconds)
    for interaction in sent:
        fake.wait_acked(interaction, timeout=30)
    return sent


SOAK_SETTINGS = {"DEVICE": "cpu", "TRAIN_RESOLUTION": 64, "TRAIN_STEPS_PER_PHOTO": 30, "PORTRAIT_SIZE": 64,
                 "PORTRAIT_CANDIDATES": 2, "ATTACHMENT_HOSTS": "http://127.0.0.1", "JOB_RETRY_SECONDS": 0,
                 "ONE_FACE_PER_MEMBER": "false"}  # the crowd's enrollers share the test photos of one face
