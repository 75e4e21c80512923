"""Taking pictures down from Discord: gallery posts, a result's pictures, and every message that showed them
(both members' copies of a picture together), for un-sharing, Delete, moderators and forgetting."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from engine.jobs.queue import Job
from engine.store.community import forget_result_messages, portrait_gallery_posts, result_messages

if TYPE_CHECKING:
    from bot.client import FaceChainBot

log = logging.getLogger("bot")


async def delete_posts(bot: FaceChainBot, posts: list[dict]) -> int:
    """Delete gallery posts; one already gone counts as deleted."""
    deleted = 0
    for item in posts:
        try:
            if item["channel_id"] == item["message_id"]:  # a forum post: its first message id is the thread's id
                await bot.http.delete_channel(int(item["channel_id"]), reason="FaceChain: portrait un-shared")
            else:
                channel = bot.get_partial_messageable(int(item["channel_id"]))
                await channel.get_partial_message(int(item["message_id"])).delete()
        except discord.NotFound:
            pass
        except discord.HTTPException as error:
            log.warning("could not delete gallery post %s: %s", item["message_id"], error)
            continue
        deleted += 1
    return deleted


async def delete_job_portraits(bot: FaceChainBot, job_id: int) -> int:
    """Delete a request's portraits, their files and gallery posts; returns how many portraits."""
    store = bot.backend.store
    portraits = await bot.backend.run(store.job_portraits, job_id)
    ids = [portrait["id"] for portrait in portraits]
    await delete_posts(bot, await bot.backend.run(portrait_gallery_posts, store, ids))
    return await bot.backend.run(store.delete_portraits, ids)


async def clear_result_messages(bot: FaceChainBot, job: Job, text: str, keep: int | None = None) -> int:
    """Edit every message that showed a job's pictures (both members' copies of a picture together) to `text`,
    without the pictures or buttons; `keep`: a message already edited. Returns how many were edited."""
    shown = [m for m in await bot.backend.run(result_messages, bot.backend.store, job.id)
             if keep is None or int(m["message_id"]) != keep]
    edited = await clear_messages(bot, shown, text)
    await bot.backend.run(forget_result_messages, bot.backend.store, job.id)
    return edited


async def clear_messages(bot: FaceChainBot, messages: list[dict], text: str) -> int:
    """Edit messages (rows with channel_id and message_id) to `text`, without pictures or buttons."""
    edited = 0
    for shown in messages:
        message = bot.get_partial_messageable(int(shown["channel_id"])).get_partial_message(int(shown["message_id"]))
        try:
            await message.edit(content=text, attachments=[], embeds=[], view=None,
                               allowed_mentions=discord.AllowedMentions.none())
            edited += 1
        except discord.HTTPException as error:  # gone, or ephemeral: nothing left to show there
            log.info("could not clear message %s: %s", shown["message_id"], error)
    return edited
