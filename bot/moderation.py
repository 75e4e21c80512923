"""`/facechain-admin remove`, `bar`, `unbar` and `audit`: a server's moderators' commands (Report and its
decisions are in bot/reports.py). A bar is per server: the member can neither enroll, draw nor be asked there,
and other servers are not affected. The audit log keeps 90 days."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot import takedown
from bot.admin_commands import admin, require_manage_guild
from bot.messages import COLOUR
from bot.replies import reply
from bot.views import client
from engine.errors import FaceChainError
from engine.store.community import remove_gallery_entry
from engine.store.moderation import audit, audit_page, bar, unbar

if TYPE_CHECKING:
    from bot.client import FaceChainBot

ACTION_WORDS = {"bar": "barred", "unbar": "unbarred", "report": "a picture was reported",
                "report removed": "removed a reported picture", "report dismissed": "dismissed a report",
                "remove": "removed a gallery post", "settings": "changed settings",
                "enroll refused: face match": "enrollment refused: the photos look like another member",
                "enroll: face like another member": "enrolled photos resemble another member (not refused)",
                "style-add": "added a style", "style-remove": "removed a style", "cancel": "cancelled a request of"}


# --- /facechain-admin remove, bar, unbar, audit ----------------------------------------------------------

MESSAGE_ID = re.compile(r"(\d{15,22})\s*$")


@admin.command(name="remove", description="Take down a gallery post (its message link or id)")
@app_commands.describe(message="The gallery post's message link or id")
async def admin_remove(interaction: discord.Interaction, message: app_commands.Range[str, 1, 200]) -> None:
    require_manage_guild(interaction)
    bot = client(interaction)
    found = MESSAGE_ID.search(message.strip().rstrip("/"))
    if not found:
        raise FaceChainError("Give a gallery post's message link (Copy Message Link) or its id.")
    guild_id = str(interaction.guild_id)
    entry = await bot.backend.run(entry_by_message, bot, guild_id, found.group(1))
    if entry is None:
        raise FaceChainError("That is not a post in this server's gallery.")
    await takedown.delete_posts(bot, [{"channel_id": entry["channel_id"], "message_id": entry["message_id"]}])
    await bot.backend.run(remove_gallery_entry, bot.backend.store, entry["id"])
    await bot.backend.run(audit, bot.backend.store, guild_id, "remove", str(interaction.user.id), entry["user_id"],
                          f"picture {entry['portrait_id']}")
    await reply(interaction, "Removed from the gallery.")


def entry_by_message(bot: FaceChainBot, guild_id: str, message_id: str) -> dict | None:
    rows = list(bot.backend.store.db["gallery_entries"].rows_where("guild_id = ? and message_id = ?",
                                                                    [guild_id, message_id]))
    return rows[0] if rows else None


@admin.command(name="bar", description="Bar a member from FaceChain on this server")
@app_commands.describe(member="Who to bar", reason="Why (shown in the audit log)")
async def admin_bar(interaction: discord.Interaction, member: discord.User,
                    reason: app_commands.Range[str, 1, 300] | None = None) -> None:
    require_manage_guild(interaction)
    bot = client(interaction)
    if member.id == interaction.user.id:
        raise FaceChainError("You can't bar yourself.")
    cancelled = await bot.backend.run(bar_and_cancel, bot, str(interaction.guild_id), str(member.id),
                                      str(interaction.user.id), reason or "")
    if cancelled is None:
        await reply(interaction, f"{member.mention} is already barred here.")
        return
    await reply(interaction, f"Barred {member.mention} on this server: {cancelled} queued request"
                             f"{'s' if cancelled != 1 else ''} cancelled; they can't enroll, draw or be asked here. "
                             "Other servers are not affected.")


def bar_and_cancel(bot: FaceChainBot, guild_id: str, user_id: str, actor_id: str, reason: str) -> int | None:
    """Bar a member here and cancel their requests on this server (and pictures together of them asked here)."""
    if not bar(bot.backend.store, guild_id, user_id, actor_id, reason):
        return None
    queue = bot.backend.queue
    jobs = queue.active_jobs(user_id=user_id, guild_id=guild_id) + [
        job for job in queue.active_pictures_with(user_id) if job.guild_id == guild_id]
    for job in jobs:
        queue.cancel(job.id)
    return len(jobs)


@admin.command(name="unbar", description="Let a barred member use FaceChain on this server again")
@app_commands.describe(member="Who to unbar")
async def admin_unbar(interaction: discord.Interaction, member: discord.User) -> None:
    require_manage_guild(interaction)
    bot = client(interaction)
    lifted = await bot.backend.run(unbar, bot.backend.store, str(interaction.guild_id), str(member.id),
                                   str(interaction.user.id))
    await reply(interaction, f"{member.mention} can use FaceChain here again." if lifted
                else f"{member.mention} is not barred here.")


@admin.command(name="audit", description="This server's moderation log: admin actions, reports, bars, refusals")
@app_commands.describe(page="Page (1 is the newest)")
async def admin_audit(interaction: discord.Interaction, page: app_commands.Range[int, 1, 10_000] = 1) -> None:
    require_manage_guild(interaction)
    bot = client(interaction)
    entries, pages = await bot.backend.run(audit_page, bot.backend.store, str(interaction.guild_id), page - 1)
    lines = [f"`{entry.created_at[:16].replace('T', ' ')}` "
             + (f"<@{entry.actor_id}> " if entry.actor_id else "")
             + ACTION_WORDS.get(entry.action, entry.action)
             + (f" <@{entry.target_id}>" if entry.target_id else "")
             + (f": {entry.detail}" if entry.detail else "") for entry in entries]
    embed = discord.Embed(title="FaceChain audit log", colour=COLOUR,
                          description="\n".join(lines)[:4000] or "Nothing in the last 90 days.")
    embed.set_footer(text=f"page {min(page, pages)} of {pages} · kept 90 days")
    await reply(interaction, None, embed=embed)
