"""The optional web gallery, served by the real bot: secret per-guild links, pages, filters,
cached thumbnails, nothing private reachable; and the page as a real headless Chromium draws it."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.provenance import check
from engine.store import Store
from engine.store.community import add_gallery_entry, set_gallery_message
from engine.store.store import utc_now
from tests.bot_harness import Deployment, running_bot

# The real bot, worker processes, the cluster, the full-size model or the benchmarks: skipped by the
# edit loop's quick lane (`pytest -m "not slow"`), run by CI.
pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parent / "artifacts"
COLOURS = {"anime": (220, 30, 30), "oil": (30, 30, 220)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    port = free_port()
    with running_bot(tmp_path_factory.mktemp("web"), {"BOT_RUNS_WORKER": "false", "WEB_GALLERY": "true",
                                                      "WEB_PORT": port}) as deployment:
        deployment.port = port
        deployment.shared = share_portraits(deployment.data_dir, deployment.guild, deployment.alice,
                                            {"anime": 20, "oil": 10})
        share_portraits(deployment.data_dir, deployment.other_guild, deployment.bob, {"anime": 1})
        yield deployment


def share_portraits(data_dir: Path, guild: str, user: str, counts: dict[str, int], nsfw: bool = False) -> list[int]:
    """Shared (posted) portraits in plain colours, one colour per style; returns the entry ids."""
    store = Store(data_dir)
    entries = []
    try:
        store.touch_user(user)
        folder = store.private_dir(user, "portraits")
        for style, count in counts.items():
            for index in range(count):
                path = folder / f"{style}-{guild}-{index}{'-flagged' if nsfw else ''}.png"
                Image.new("RGB", (512, 512), COLOURS[style]).save(path)
                with store.transaction():
                    portrait = store.db["portraits"].insert({
                        "user_id": user, "style": style, "seed": index, "path": store.relative(path),
                        "nsfw": int(nsfw), "created_at": utc_now()}).last_pk
                entry = add_gallery_entry(store, guild, portrait, user, "1", display_name=f"Member {user[-3:]}")
                set_gallery_message(store, entry["id"], str(1000 + entry["id"]))
                entries.append(entry["id"])
    finally:
        store.close()
    return entries


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def gallery_link(d: Deployment, rotate: bool = False) -> str:
    options = {"rotate": True} if rotate else {}
    answer = d.fake.response(d.fake.command(d.alice, d.general, d.guild, "gallery-link", options,
                                            group="facechain-admin"))
    return re.search(r"(http://\S+/g/\S+/)", answer.text()).group(1)


def test_the_link_is_for_admins_and_serves_this_servers_pages(deployment):
    d = deployment
    refused = d.fake.response(d.fake.command(d.bob, d.general, d.guild, "gallery-link", group="facechain-admin"))
    assert "Only this server's admins" in refused.text()
    link = gallery_link(d)
    assert link.startswith(f"http://127.0.0.1:{d.port}/g/") and len(link.split("/g/")[1]) > 30
    status, page = fetch(link)
    html = page.decode()
    assert status == 200 and "Club gallery" in html and "Anime · by Member " in html
    assert html.count("<figure>") == 24 and "Older →" in html  # 30 shared: 24 on page 1
    status, second = fetch(link + "?page=2")
    assert second.decode().count("<figure>") == 6 and "← Newer" in second.decode()
    status, oil = fetch(link + "?style=oil")
    assert oil.decode().count("<figure>") == 10 and "Anime portrait" not in oil.decode()
    assert gallery_link(d) == link  # stable until rotated


def test_thumbnails_are_made_once_and_only_for_shared_portraits(deployment):
    d = deployment
    link = gallery_link(d)
    entry = d.shared[0]
    status, thumb = fetch(f"{link}thumb/{entry}.jpg")
    assert status == 200 and thumb[:2] == b"\xff\xd8"
    marks = check(thumb)  # a thumbnail says it was made by AI, like the portrait it shows
    assert marks.xmp and marks.c2pa == "Valid" and marks.c2pa_ai
    cached = list((d.data_dir / "cache" / "thumbs").glob("*.jpg"))
    assert len(cached) == 1 and Image.open(cached[0]).size == (384, 384)
    stamp = cached[0].stat().st_mtime_ns
    assert fetch(f"{link}thumb/{entry}.jpg")[0] == 200 and cached[0].stat().st_mtime_ns == stamp
    assert fetch(f"{link}image/{entry}.png")[0] == 200
    other_guilds_entry = max(d.shared) + 1
    assert fetch(f"{link}thumb/{other_guilds_entry}.jpg")[0] == 404  # Elsewhere's portrait, Club's link
    assert fetch(f"{link}thumb/999999.jpg")[0] == 404


def test_wrong_rotated_and_tricky_addresses_get_404(deployment):
    d = deployment
    old = gallery_link(d)
    new = gallery_link(d, rotate=True)
    assert new != old and fetch(old)[0] == 404 and fetch(new)[0] == 200
    base = f"http://127.0.0.1:{d.port}"
    token = new.split("/g/")[1].rstrip("/")
    for path in ("/g/nope/", "/g//", f"/g/{token}/../../facechain.db", f"/g/{token}/thumb/..%2F..%2Ffacechain.db",
                 f"/g/{token}%2F..%2F..%2Ffacechain.db", f"/g/{token}/image/1.png/../../../users",
                 "/facechain.db", "/users/", f"/g/{token}/selfies/1.jpg", f"/g/{token}/?page=x"):
        assert fetch(base + path)[0] == 404, path


def screenshot(url: str, out: Path) -> Image.Image:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            raise AssertionError("CI must install Chromium (.ci/run does with apt-get)")
        pytest.skip("Chromium is not installed on this machine (.ci/run installs it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1000,900", "--virtual-time-budget=5000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)
    return Image.open(out).convert("RGB")


def share_of(picture: Image.Image, colour: tuple[int, int, int]) -> float:
    """The fraction of the screen drawn in (about) this colour."""
    pixels = np.asarray(picture, dtype=np.int16)
    return float((np.abs(pixels - np.array(colour)).max(axis=2) < 40).mean())


def test_chromium_draws_the_thumbnails_and_the_filter_works(deployment):
    d = deployment
    link = gallery_link(d)
    everything = screenshot(link, ARTIFACTS / "web_gallery.png")
    # The newest 24 are the 10 oil (blue) and 14 anime (red) portraits: both drawn in the first screen.
    assert share_of(everything, COLOURS["oil"]) > 0.3 and share_of(everything, COLOURS["anime"]) > 0.05
    filtered = screenshot(link + "?style=oil", ARTIFACTS / "web_gallery_oil.png")
    assert share_of(filtered, COLOURS["oil"]) > 0.15 and share_of(filtered, COLOURS["anime"]) < 0.001


def test_flagged_portraits_stay_off_the_web_unless_the_policy_allows_them(deployment):
    d = deployment
    link = gallery_link(d)
    [flagged] = share_portraits(d.data_dir, d.guild, d.alice, {"oil": 1}, nsfw=True)
    assert fetch(link + "?page=2")[1].decode().count("<figure>") == 6  # as before: left out
    for kind in ("thumb", "image"):
        assert fetch(f"{link}{kind}/{flagged}.{'jpg' if kind == 'thumb' else 'png'}")[0] == 404
    for policy, shown in (("age_restricted_only", False), ("allow", True)):  # the web page is not age-gated
        d.fake.response(d.fake.command(d.alice, d.general, d.guild, "settings", {"nsfw_policy": policy},
                                       group="facechain-admin"))
        assert (fetch(f"{link}thumb/{flagged}.jpg")[0] == 200) is shown
        assert fetch(link + "?page=2")[1].decode().count("<figure>") == (7 if shown else 6)
