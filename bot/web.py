"""The optional read-only web gallery (FACECHAIN_WEB_GALLERY=1), served from the bot process.

Each guild's gallery lives at /g/<token>/, a secret address an admin gets (and can rotate) with
`/facechain-admin gallery-link`. Only shared portraits are reachable, by entry id: no route takes
a path, so no selfie, face model or database file can be asked for.
"""

from __future__ import annotations

import asyncio
import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import web
from PIL import Image

from engine.nsfw_policy import may_show_flagged
from engine.provenance import mark
from engine.store.community import GalleryItem, browse_gallery, gallery_item, gallery_styles, guild_for_web_token

if TYPE_CHECKING:
    from bot.client import FaceChainBot

log = logging.getLogger("bot")
PER_PAGE = 24
THUMB_PX = 384
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 0; font: 16px system-ui, sans-serif; background: #18191c; color: #eee; }}
header {{ display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; padding: 1rem 1.5rem; }}
h1 {{ font-size: 1.3rem; margin: 0; flex: 1; }}
select {{ font-size: 1rem; padding: .3rem; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 1rem; padding: 0 1.5rem; }}
figure {{ margin: 0; background: #232428; border-radius: 8px; overflow: hidden; }}
figure img {{ width: 100%; aspect-ratio: 1; object-fit: cover; display: block; }}
figcaption {{ padding: .5rem; font-size: .85rem; color: #bbb; }}
nav {{ padding: 1.5rem; display: flex; gap: 1rem; }} a {{ color: #8ea1e1; }}
</style></head>
<body><header><h1>{title}</h1>
<form method="get"><label>Style <select name="style" onchange="this.form.submit()">{options}</select></label>
<noscript><button>Show</button></noscript></form></header>
<main>{figures}</main>
<nav>{pages}</nav></body></html>
"""


class WebGallery:
    def __init__(self, bot: FaceChainBot) -> None:
        self.bot = bot
        self.runner: web.AppRunner | None = None

    def address(self, token: str) -> str:
        settings = self.bot.settings
        base = settings.web_base_url or f"http://{settings.web_host}:{settings.web_port}"
        return f"{base.rstrip('/')}/g/{token}/"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/g/{token}/", self.page)
        app.router.add_get(r"/g/{token}/thumb/{entry:\d+}.jpg", self.thumbnail)
        app.router.add_get(r"/g/{token}/image/{entry:\d+}.png", self.image)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.bot.settings.web_host, self.bot.settings.web_port).start()
        log.info("web gallery on %s:%s", self.bot.settings.web_host, self.bot.settings.web_port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _guild(self, request: web.Request) -> str:
        guild_id = await self.bot.backend.run(guild_for_web_token, self.bot.backend.store, request.match_info["token"])
        if guild_id is None:
            raise web.HTTPNotFound()
        return guild_id

    async def page(self, request: web.Request) -> web.Response:
        guild_id = await self._guild(request)
        store = self.bot.backend.store
        styles = await self.bot.backend.run(gallery_styles, store, guild_id)
        style = request.query.get("style") or None
        style = style if style in styles else None
        try:
            page = max(int(request.query.get("page", "1")), 1)
        except ValueError:
            raise web.HTTPNotFound() from None
        items, total = await self.bot.backend.run(browse_gallery, store, guild_id, style, None, "new",
                                                  (page - 1) * PER_PAGE, PER_PAGE, await self._shows_flagged(guild_id))
        guild = self.bot.get_guild(int(guild_id))
        title = f"{guild.name if guild else 'Server'} gallery"
        options = [f'<option value=""{"" if style else " selected"}>All styles</option>']
        options += [f'<option value="{html.escape(s)}"{" selected" if s == style else ""}>'
                    f'{html.escape(self._style_name(s))}</option>' for s in styles]
        figures = "".join(self._figure(item) for item in items) or "<p>No shared portraits yet.</p>"
        pages = []
        if page > 1:
            pages.append(f'<a href="?{self._query(style, page - 1)}">← Newer</a>')
        if page * PER_PAGE < total:
            pages.append(f'<a href="?{self._query(style, page + 1)}">Older →</a>')
        body = PAGE.format(title=html.escape(title), options="".join(options), figures=figures, pages=" ".join(pages))
        return web.Response(text=body, content_type="text/html",
                            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                     "X-Robots-Tag": "noindex"})

    def _figure(self, item: GalleryItem) -> str:
        who = html.escape(item.display_name or "a member")
        return (f'<figure><a href="image/{item.entry_id}.png"><img src="thumb/{item.entry_id}.jpg" loading="lazy" '
                f'alt="{html.escape(self._style_name(item.style))} portrait"></a>'
                f'<figcaption>{html.escape(self._style_name(item.style))} · by {who} · ❤ {item.likes}</figcaption>'
                '</figure>')

    def _style_name(self, style_id: str) -> str:
        style = self.bot.backend.styles.catalogue().get(style_id)
        return style.name if style else style_id

    @staticmethod
    def _query(style: str | None, page: int) -> str:
        return html.escape(urlencode({"style": style or "", "page": page}))

    async def _shows_flagged(self, guild_id: str) -> bool:
        """The web page is not age-gated: flagged portraits show only where the server allows them anywhere."""
        settings = await self.bot.backend.run(self.bot.backend.guild, int(guild_id))
        return may_show_flagged(settings.nsfw_policy, age_restricted=False)

    async def _item(self, request: web.Request) -> GalleryItem:
        guild_id = await self._guild(request)
        item = await self.bot.backend.run(gallery_item, self.bot.backend.store, int(request.match_info["entry"]))
        if item is None or item.message_id is None or item.guild_id != guild_id:
            raise web.HTTPNotFound()
        if item.nsfw and not await self._shows_flagged(guild_id):
            raise web.HTTPNotFound()
        return item

    async def thumbnail(self, request: web.Request) -> web.FileResponse:
        item = await self._item(request)
        cached = self.bot.backend.store.thumbnail_path(item.portrait_id)
        if not cached.exists():  # made once, then served from the cache
            await asyncio.to_thread(make_thumbnail, self.bot.backend.store.absolute(item.path), cached,
                                    self.bot.backend.store.data_dir)
        return web.FileResponse(cached, headers={"Cache-Control": "private, max-age=86400"})

    async def image(self, request: web.Request) -> web.FileResponse:
        item = await self._item(request)
        return web.FileResponse(self.bot.backend.store.absolute(item.path))


def make_thumbnail(source: Path, destination: Path, data_dir: Path) -> None:
    """A small JPEG of a portrait, marked as made by AI like the portrait (a resize loses its metadata)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        thumb = image.convert("RGB")
        thumb.thumbnail((THUMB_PX, THUMB_PX))
    partial = destination.with_suffix(".partial")
    partial.write_bytes(mark(thumb, "JPEG", data_dir, "thumbnail", quality=85))
    partial.replace(destination)
