"""The Discord client: wires the commands, the delivery loop, the worker process and maintenance."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import discord
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from discord import app_commands

from bot import gallery
from bot.backend import Backend
from bot.commands import install
from bot.components import DYNAMIC_ITEMS
from bot.delivery import Deliveries
from bot.downloads import allowed_sources, download_session
from bot.loop_lag import LoopLag
from bot.reports import ReportButton, ReportDecision
from bot.setup_notices import notify_owner_forever
from bot.together import TogetherAnswer, TogetherAsks
from bot.web import WebGallery
from engine.config import Settings
from engine.jobs.worker_process import WorkerProcess
from engine.memory import peak_rss_mb
from engine.store.maintenance import build_scheduler

log = logging.getLogger("bot")
WORKER_CHECK_SECONDS = 1  # a look at a child process: a dead worker is back within a second or two


class FaceChainBot(discord.Client):
    def __init__(self, settings: Settings) -> None:
        super().__init__(intents=discord.Intents.default())
        self.settings = settings
        self.tree = app_commands.CommandTree(self)
        self.backend = Backend(settings)
        self.deliveries = Deliveries(self)
        self.together = TogetherAsks(self)
        self.worker = WorkerProcess() if settings.bot_runs_worker else None
        self.http_session: aiohttp.ClientSession | None = None
        self.scheduler = None  # maintenance, in a thread
        self.highlights = AsyncIOScheduler(timezone="UTC")  # weekly highlights, on the event loop
        self._background: list[asyncio.Task] = []
        self.web = WebGallery(self) if settings.web_gallery else None
        self.loop_lag = LoopLag()

    async def setup_hook(self) -> None:
        install(self.tree, self.settings)
        self.add_dynamic_items(*DYNAMIC_ITEMS, gallery.GalleryButton, TogetherAnswer, ReportButton, ReportDecision)
        self.http_session = download_session(allowed_sources(self.settings.attachment_hosts))
        await self.backend.run(self.backend.sync_family)
        await self._sync_commands()
        self.scheduler = build_scheduler(self.settings)
        self.scheduler.start()
        self.highlights.start()
        await gallery.schedule_all_highlights(self)
        if self.web is not None:
            await self.web.start()
        self._background.append(asyncio.create_task(self.deliveries.run_forever()))
        self._background.append(asyncio.create_task(self.loop_lag.run()))
        self._background.append(asyncio.create_task(self.together.expire_forever()))
        self._background.append(asyncio.create_task(notify_owner_forever(self)))
        if self.worker is not None:
            self._background.append(asyncio.create_task(self._supervise_worker()))

    async def _sync_commands(self) -> None:
        if self.settings.dev_guild_id:
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %s commands (%s)", len(synced), f"guild {self.settings.dev_guild_id}"
                 if self.settings.dev_guild_id else "global")

    async def _supervise_worker(self) -> None:
        while True:
            if self.worker.ensure_running():
                log.info("worker process running", extra={"job": None})
            await asyncio.sleep(WORKER_CHECK_SECONDS)

    async def on_ready(self) -> None:
        log.info("connected as %s to %s servers", self.user, len(self.guilds))

    async def close(self) -> None:
        self.loop_lag.report()
        log.info("store thread busy", extra={"busy_share": round(self.backend.busy_share(), 4),
                                             "busy_seconds": round(self.backend.busy_seconds, 2)})
        log.info("bot stopping", extra={"peak_rss_mb": peak_rss_mb()})
        for task in self._background:
            task.cancel()
        for scheduler in (self.scheduler, self.highlights):
            if scheduler is not None and scheduler.running:
                scheduler.shutdown(wait=False)
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)  # SIGTERM: a training checkpoints first
        if self.web is not None:
            await self.web.stop()
        if self.http_session is not None:
            await self.http_session.close()
        await super().close()
        self.backend.close()
