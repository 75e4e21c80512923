"""The bot's pieces that need no Discord: message text, logs, and what it may import."""

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import discord
import pytest
from aiohttp.abc import AbstractResolver

from bot.commands import SUBJECTS
from bot.downloads import (
    TIMEOUT,
    DownloadRefused,
    PublicAddressResolver,
    allowed_sources,
    check_source,
    download,
    download_timeout,
    looks_like_a_photo,
    what_it_is,
)
from bot.logs import JsonFormatter
from bot.messages import enroll_card, eta, portrait_lines, progress_line
from engine.jobs.queue import WAITING_FOR_SETUP, Job, QueuePosition
from engine.subjects import SUBJECTS as ENGINE_SUBJECTS
from tests.fake_discord import APP_ID, FakeDiscord

ROOT = Path(__file__).parent.parent


def job(**changes) -> Job:
    fields = dict(id=1, kind="generate", user_id="1", guild_id=None, channel_id="2", params={"style": "anime"},
                  state="queued", attempts=0, progress=0.0, progress_text="", error=None, result=None,
                  cancel_requested=False, created_at="", started_at=None, finished_at=None, delivered_at=None)
    return Job(**{**fields, **changes})


def test_the_subject_choices_are_the_engines():
    assert list(SUBJECTS) == list(ENGINE_SUBJECTS)


# Engine modules that load models or reach the cluster: the bot needs none of them.
HEAVY_ENGINE_MODULES = ("engine.models.safety", "engine.models.base_model", "engine.generation.generate",
                        "engine.jobs.runners", "engine.jobs.cluster.dispatcher", "engine.jobs.cluster.actor")


def test_the_bot_never_loads_the_heavy_libraries():
    code = ("import sys, bot.client, bot.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'diffusers', 'cv2', 'dlib', 'transformers', 'peft', 'accelerate', 'ray'))"
            f" + sorted(m for m in {HEAVY_ENGINE_MODULES} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_progress_lines_say_where_a_job_stands():
    assert eta(12) == "about 10 s" and eta(200) == "about 3 min"
    assert progress_line(job(), QueuePosition(3, 125)) == "queued #3, about 2 min"
    waiting = job(params={"wait_for_training": True})
    assert "waiting for your face model" in progress_line(waiting, QueuePosition(1, 10))
    assert progress_line(job(state="running", progress_text="generating 40%"), QueuePosition(0, 20)) \
        == "generating 40% (about 20 s left)"
    downloading = job(state="running", progress_text="getting the base model: 1.9 of 4.2 GB")
    assert progress_line(downloading, QueuePosition(0, 170)) == "getting the base model: 1.9 of 4.2 GB"
    setup = progress_line(job(progress_text=WAITING_FOR_SETUP), QueuePosition(1, 10))
    assert setup.startswith("waiting: the bot is not ready") and "Your photos are kept" in setup


def test_results_offer_sharper_x2_only_where_the_worker_can_draw_it():
    from bot.components import portrait_actions

    portraits = [{"id": 7, "seed": 1}]

    async def menus(result: dict) -> list[str]:
        view = portrait_actions(job(state="done", guild_id="3", result=result), portraits)
        return [item.item.placeholder for item in view.children if isinstance(item.item, discord.ui.Select)]

    assert "Sharper x2…" in asyncio.run(menus({}))  # results recorded before SDXL came
    assert "Sharper x2…" not in asyncio.run(menus({"sharper": False}))  # an SDXL bot
    rebuilt = job(params={"wait_for_training": True, "rebuilding": True})
    assert "rebuilt for the bot's new image model" in progress_line(rebuilt, QueuePosition(1, 10))


def test_result_text_ranks_and_explains_unranked_portraits():
    ranked = portrait_lines("7", "Anime", [{"similarity": 0.82, "seed": 5}, {"similarity": 0.7, "seed": 6}], None)
    assert "<@7> 2 portraits in **Anime**, most alike first" in ranked and "**#1** likeness 82% · seed 5" in ranked
    unranked = portrait_lines("7", "Anime", [{"similarity": None, "seed": 5}], "No clear face.")
    assert "not ranked" in unranked and "_No clear face._" in unranked


def test_the_enroll_card_lists_every_rejection_with_its_fix():
    card = enroll_card({"accepted": ["a.jpg"], "rejected": [{"path": "b.jpg", "reason": "multiple_faces",
                        "detail": "2 faces", "advice": "crop to just you"}], "enrolled_total": 4},
                       [{"name": "c.gif", "reason": "it is larger than 25 MB"}], "Training queued #2, about 3 min.")
    fields = {field.name: field.value for field in card.fields}
    assert "**1 accepted**, 2 rejected" in card.description
    assert "crop to just you" in fields["❌ b.jpg"] and "larger than 25 MB" in fields["❌ c.gif"]
    assert fields["Face model"].startswith("Training queued")


def test_logs_are_json_lines_with_context():
    record = logging.LogRecord("bot", logging.INFO, __file__, 1, "delivered job %s", (5,), None)
    record.job, record.user = 5, "7"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "delivered job 5" and entry["job"] == 5 and entry["user"] == "7"


def test_a_refused_token_is_explained_and_the_bot_exits(tmp_path):
    fake = FakeDiscord().start()
    fake.token = "the.right.token"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECHAIN_")}
    env.update({"FACECHAIN_DISCORD_TOKEN": "a.wrong.token", "FACECHAIN_DATA_DIR": str(tmp_path / "data"),
                "FACECHAIN_BOT_RUNS_WORKER": "false", "FAKE_DISCORD_URL": fake.url, "PYTHONPATH": str(ROOT)})
    try:
        run = subprocess.run([sys.executable, "-m", "tests.run_bot"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=60)
    finally:
        fake.stop()
    assert run.returncode == 2
    assert "Discord refused FACECHAIN_DISCORD_TOKEN" in run.stderr and "Traceback" not in run.stderr
    assert "a.wrong.token" not in run.stderr


def test_a_dev_guild_gets_the_commands_at_once(tmp_path):
    from tests.bot_harness import running_bot

    with running_bot(tmp_path, {"BOT_RUNS_WORKER": "false"}) as global_bot:
        synced = [c.path for c in global_bot.fake.calls if c.method == "PUT"]
        assert synced == [f"/applications/{APP_ID}/commands"]
        assert {c["name"] for c in global_bot.fake.commands} == {"facechain", "facechain-admin"}
    with running_bot(tmp_path / "dev", {"BOT_RUNS_WORKER": "false", "DEV_GUILD_ID": "123456789012345678"}) as dev:
        synced = [c.path for c in dev.fake.calls if c.method == "PUT"]
        assert synced == [f"/applications/{APP_ID}/guilds/123456789012345678/commands"]
        facechain = next(c for c in dev.fake.commands if c["name"] == "facechain")
        subcommands = {o["name"]: o for o in facechain["options"]}
        assert set(subcommands) == {"enroll", "portrait", "styles", "status", "forget", "help", "gallery", "swap",
                                    "together", "me"}
        enroll_options = [o for o in subcommands["enroll"]["options"] if o["type"] == 11]  # attachments
        assert [o["name"] for o in enroll_options] == [f"photo{i}" for i in range(1, 11)]
        style = next(o for o in subcommands["portrait"]["options"] if o["name"] == "style")
        assert style["autocomplete"] is True
        count = next(o for o in subcommands["portrait"]["options"] if o["name"] == "count")
        assert (count["min_value"], count["max_value"]) == (1, 8)  # what the engine accepts (8 candidates)


def test_the_count_offered_follows_the_candidates_drawn():
    from discord import app_commands

    from bot.commands import install, portrait
    from engine.config import load_settings

    def installed(**settings):
        install(app_commands.CommandTree(discord.Client(intents=discord.Intents.none())),
                load_settings(_env_file=None, **settings))
        return portrait._params["count"]

    count = installed(portrait_candidates=2)
    assert (count.min_value, count.max_value, count.default) == (1, 2, 2)
    assert count.description == "How many portraits (default 2)"
    count = installed()  # as the bot installs it by default
    assert (count.max_value, count.default) == (8, 4)


@pytest.mark.parametrize(("url", "refusal"), [
    ("http://cdn.discordapp.com/attachments/1/2/me.jpg", "not an https link"),
    ("https://evil.example/me.jpg", "not on Discord's CDN (evil.example)"),
    ("https://127.0.0.1/me.jpg", "private network address"),
    ("https://10.1.2.3/me.jpg", "private network address"),
    ("https://[::1]/me.jpg", "private network address"),
    ("https://169.254.169.254/latest/meta-data", "private network address"),
    ("https://8.8.8.8/me.jpg", None),
    ("http://localhost:9999/me.jpg", None),  # trusted exactly as configured
    ("http://localhost:9998/me.jpg", "not an https link"),
    ("file:///etc/passwd", "not an https link"),
])
def test_photos_come_only_from_allowed_https_hosts_with_public_addresses(url, refusal):
    sources = allowed_sources("cdn.discordapp.com, 127.0.0.1, 10.1.2.3, ::1, 169.254.169.254, 8.8.8.8,"
                              "http://localhost:9999")
    if refusal is None:  # (a host name would need DNS here: IP literals check the same rule)
        check_source(url, sources)
    else:
        with pytest.raises(DownloadRefused, match=re.escape(refusal)):
            check_source(url, sources)


def test_content_is_sniffed_from_the_bytes(tmp_path):
    from tests.conftest import DATA

    assert looks_like_a_photo((DATA / "obama/obama1.jpg").read_bytes()[:32])
    assert looks_like_a_photo((DATA / "edge/rgba_32bit.png").read_bytes()[:32])
    assert looks_like_a_photo((DATA / "formats/obama1.heic").read_bytes()[:32])  # iPhone photos
    assert looks_like_a_photo((DATA / "formats/obama3.avif").read_bytes()[:32])
    assert not looks_like_a_photo(b"<!DOCTYPE html><html>")
    assert what_it_is(b"<!DOCTYPE html><html>") == "an HTML page"
    assert what_it_is(b"PK\x03\x04rest") == "a zip archive"
    assert what_it_is(b"hello, this is text") == "text"


def test_the_style_catalogue_is_reread_after_a_change_but_not_on_every_call(tmp_path, monkeypatch):
    from bot.backend import Styles
    from tests.bot_harness import write_styles

    styles = Styles(write_styles(tmp_path / "styles"))
    assert styles.catalogue().get("anime") is not None
    (tmp_path / "styles" / "anime.toml").unlink()
    assert styles.catalogue().get("anime") is not None  # not looked at again yet
    monkeypatch.setattr(Styles, "CHECK_EVERY_SECONDS", 0.0)
    assert styles.catalogue().get("anime") is None and styles.catalogue().get("oil") is not None


def test_a_style_the_owner_adds_is_offered_at_once(tmp_path, monkeypatch):
    from bot.backend import Styles
    from engine.config import load_settings
    from engine.generation.owner_styles import add_style
    from engine.styles import owner_styles_folder

    settings = load_settings(_env_file=None, data_dir=tmp_path / "data")
    styles = Styles(None, owner_styles_folder(settings))
    assert styles.catalogue().get("harbour") is None
    monkeypatch.setattr(Styles, "CHECK_EVERY_SECONDS", 0.0)
    add_style(settings, "harbour", None, "portrait at a misty harbour, morning light")
    assert [s.id for s in styles.catalogue().search("harb")] == ["harbour"]


class StaticResolver(AbstractResolver):
    """Answers every lookup with one address, as a rebinding DNS server would on its second answer
    (None: the name does not resolve)."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    async def resolve(self, host, port=0, family=socket.AF_INET):
        if self.address is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [{"hostname": host, "host": self.address, "port": port, "family": family, "proto": 0, "flags": 0}]

    async def close(self):
        pass


def test_a_name_that_rebinds_to_a_private_address_after_the_check_is_refused(tmp_path):
    async def fetch(address: str | None) -> None:
        sources = allowed_sources("cdn.discordapp.com")
        connector = aiohttp.TCPConnector(resolver=PublicAddressResolver(sources, StaticResolver(address)))
        async with aiohttp.ClientSession(connector=connector) as session:
            await download(session, "https://cdn.discordapp.com/a/me.jpg", tmp_path / "me.jpg", 2**20, sources)

    for private in ("127.0.0.1", "10.0.0.7", "169.254.169.254"):
        with pytest.raises(DownloadRefused, match="private network address"):
            asyncio.run(fetch(private))
    with pytest.raises(DownloadRefused, match="cdn.discordapp.com could not be resolved; try again later"):
        asyncio.run(fetch(None))
    assert not (tmp_path / "me.jpg").exists()


def test_a_job_that_ends_while_its_queued_line_is_shown_still_ends_on_its_outcome():
    """The "queued" edit can be slow; a job that ends meanwhile is delivered after it, onto the same
    message, so the outcome replaces the progress line (not the other way round)."""
    from types import SimpleNamespace

    from bot.delivery import Deliveries

    edits: list[str] = []
    state = {"job": job(state="queued")}

    class SlowInteraction:
        async def edit_original_response(self, **changes):
            edits.append(changes.get("content") or "")
            await asyncio.sleep(0.3)  # Discord answers slowly

    async def run(function, *args):
        return function(*args)

    queue = SimpleNamespace(position=lambda job_id: QueuePosition(1, 10),
                            awaiting_delivery=lambda watched=None: [] if state.get("delivered") else [state["job"]],
                            mark_delivered=lambda job_id: state.update(delivered=True))
    deliveries = Deliveries(SimpleNamespace(backend=SimpleNamespace(run=run, queue=queue)))

    async def scenario() -> None:
        following = asyncio.create_task(deliveries.follow(state["job"], SlowInteraction(), "Portraits"))
        await asyncio.sleep(0.05)
        state["job"] = job(state="cancelled")  # it ends while the queued line is being shown
        await deliveries.tick()
        await following
        await deliveries.tick()
        await asyncio.gather(*deliveries._tasks)

    asyncio.run(scenario())
    assert edits[0].startswith("⏳ Portraits: queued #1") and edits[-1].startswith("✖️ Cancelled")


def test_me_marks_the_face_engines_reading_as_a_suggestion_only():
    import asyncio

    from bot.messages import SUBJECT_LABELS
    from bot.views import MeView

    async def options(subject: str, suggested: str | None) -> dict[str, tuple[bool, str | None]]:
        async def nothing(*args) -> None:
            return None

        view = MeView(1, [], nothing, nothing, SUBJECT_LABELS, subject, suggested, nothing)
        [menu] = [item for item in view.children if getattr(item, "placeholder", "") == "Portraits describe me as…"]
        return {o.value: (o.default, o.description) for o in menu.options}

    shown = asyncio.run(options("person", "woman"))
    assert shown["person"] == (True, None)  # what describes them is their own choice
    assert shown["woman"] == (False, "suggested from your photos")
    assert asyncio.run(options("woman", "woman"))["woman"] == (True, None)  # chosen: no note


def test_a_larger_allowed_file_gets_the_time_its_size_needs():
    assert download_timeout(25 * 2**20).total == TIMEOUT.total  # a photo: a minute
    assert download_timeout(256 * 2**20).total == 128  # a server's style LoRA at its largest, at 2 MB/s


def test_a_swaps_message_lists_redrawings_and_says_when_the_selfie_was_pasted_instead():
    from bot.messages import swap_lines

    four = [{"similarity": s} for s in (0.61, 0.58, 0.55, 0.4)]
    redrawn = swap_lines("7", {"method": "redrawn", "face": 1, "faces_found": 1}, four)
    assert "redrawn into face 1 of 1 by your face model, most alike first" in redrawn and "**#4** likeness 40%" in redrawn
    notice = "Your face model's redrawing didn't look enough like you on this photo, so ..."
    pasted = swap_lines("7", {"method": "pasted", "face": 2, "faces_found": 3, "notice": notice}, four[:1])
    assert pasted == f"<@7> your face on face 2 of 3 · likeness 61%\n_{notice}_"
