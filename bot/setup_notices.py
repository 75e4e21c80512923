"""Tells the bot's owner, once per incident, about problems only they can fix.

The worker records them (a model that cannot be had, a style's LoRA that does not load); members'
jobs wait meanwhile and members are told in plain words. Here the application owner (the team
owner for a team app) gets one DM per incident with the fix.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord

from engine.store.setup_problems import SetupProblem, mark_setup_problem_notified, open_setup_problems

if TYPE_CHECKING:
    from bot.client import FaceChainBot

log = logging.getLogger("bot")
CHECK_EVERY_SECONDS = 2.0  # one small query; the owner hears of a problem within seconds


def owner_message(problem: SetupProblem) -> str:
    return (f"⚠️ **FaceChain needs you** ({problem.key}): {problem.message}\n"
            "Members' requests wait meanwhile and start by themselves once it works; "
            "`facechain doctor` shows the state.")


async def notify_owner_forever(bot: FaceChainBot, every: float = CHECK_EVERY_SECONDS) -> None:
    while True:
        try:
            await notify_owner(bot)
        except Exception:  # noqa: BLE001 - try again at the next round
            log.exception("could not tell the owner about a setup problem")
        await asyncio.sleep(every)


async def notify_owner(bot: FaceChainBot) -> None:
    backend = bot.backend
    problems = [p for p in await backend.run(open_setup_problems, backend.store) if p.notified_at is None]
    if not problems:
        return
    info = await bot.application_info()
    owner = info.team.owner if info.team and info.team.owner else info.owner
    for problem in problems:
        log.error("setup problem (%s): %s", problem.key, problem.message)
        try:
            await owner.send(owner_message(problem))
        except discord.HTTPException as error:  # DMs closed: the log and doctor still say it
            log.warning("could not DM the bot's owner about %s: %s", problem.key, error)
        await backend.run(mark_setup_problem_notified, backend.store, problem.id)
