"""Sharing portraits to a server's gallery channel, and taking gallery posts down."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.messages import COLOUR
from bot.replies import reply
from engine.errors import FaceChainError
from engine.store.community import add_gallery_entry, portrait_gallery_posts, remove_gallery_entry, set_gallery_message

if TYPE_CHECKING:
    from bot.client import FaceChainBot

log = logging.getLogger("bot")


async def share(interaction: discord.Interaction, portrait: dict) -> None:
    """Post one of the member's portraits in the server's gallery channel, once."""
    bot: FaceChainBot = interaction.client  # type: ignore[assignment]
    if interaction.guild_id is None:
        raise FaceChainError("Sharing works in a server: ask for the portrait there to share it to its gallery.")
    settings = await bot.backend.run(bot.backend.guild, interaction.guild_id)
    if not settings.gallery_channel_id:
        raise FaceChainError("This server has no gallery channel yet: an admin can set one with "
                             "`/facechain-admin settings gallery_channel:`.")
    entry = await bot.backend.run(add_gallery_entry, bot.backend.store, str(interaction.guild_id), portrait["id"],
                                  str(interaction.user.id), settings.gallery_channel_id)
    style = bot.backend.styles.catalogue().get(portrait["style"])
    link = f" · [original]({interaction.message.jump_url})" if interaction.message else ""
    embed = discord.Embed(title=style.name if style else portrait["style"], colour=COLOUR,
                          description=f"by <@{portrait['user_id']}>{link}")
    embed.set_image(url="attachment://portrait.png")
    embed.set_footer(text="Made with /facechain portrait")
    path = bot.backend.store.absolute(portrait["path"])
    try:
        channel = bot.get_partial_messageable(int(settings.gallery_channel_id), guild_id=interaction.guild_id)
        posted = await channel.send(embed=embed, file=discord.File(path, "portrait.png"),
                                    allowed_mentions=discord.AllowedMentions.none())
    except (discord.HTTPException, OSError) as error:
        await bot.backend.run(remove_gallery_entry, bot.backend.store, entry["id"])
        log.warning("gallery post failed: %s", error)
        raise FaceChainError("I could not post in the gallery channel: ask an admin to check that it exists and "
                             "that I may send messages and attach files there.") from None
    await bot.backend.run(set_gallery_message, bot.backend.store, entry["id"], str(posted.id))
    await reply(interaction, f"Shared to <#{settings.gallery_channel_id}>.")


async def delete_posts(bot: FaceChainBot, posts: list[dict]) -> int:
    """Delete gallery messages; one already gone counts as deleted."""
    deleted = 0
    for post in posts:
        channel = bot.get_partial_messageable(int(post["channel_id"]))
        try:
            await channel.get_partial_message(int(post["message_id"])).delete()
        except discord.NotFound:
            pass
        except discord.HTTPException as error:
            log.warning("could not delete gallery post %s: %s", post["message_id"], error)
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
