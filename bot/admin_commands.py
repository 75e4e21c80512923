"""`/facechain-admin ...`: a server's settings, its queue, its highlights and its web gallery link, for
the server's admins (Manage Server)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot import gallery
from bot.components import CancelButton
from bot.messages import COLOUR, job_title, progress_line
from bot.replies import reply
from bot.views import client
from engine.errors import FaceChainError
from engine.nsfw_policy import NSFW_POLICIES, POLICY_MEANINGS
from engine.store.community import rotate_web_token, update_guild_settings
from engine.store.moderation import audit
from engine.store.setup_problems import open_setup_problems

if TYPE_CHECKING:
    from bot.client import FaceChainBot

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
admin = app_commands.Group(name="facechain-admin", description="FaceChain settings for this server",
                           default_permissions=discord.Permissions(manage_guild=True), guild_only=True,
                           allowed_installs=app_commands.AppInstallationType(guild=True, user=False))


def require_manage_guild(interaction: discord.Interaction) -> None:
    if interaction.guild_id is None or not interaction.permissions.manage_guild:
        raise FaceChainError("Only this server's admins (Manage Server permission) can do that.")


@admin.command(name="settings", description="Gallery channel, daily quota, allowed styles, NSFW policy")
@app_commands.describe(gallery_channel="Where shared portraits are posted", daily_quota="Jobs per day (0 = no limit)",
                       allowed_styles="Style ids, comma-separated, or 'all'",
                       nsfw_policy="What to do with NSFW results",
                       highlight_day="Weekly highlight of the most liked portraits (off by default)",
                       highlight_hour="Hour of the weekly highlight, UTC (default 18)",
                       blocked_words="Words refused in members' own prompt words, comma-separated ('none' clears)",
                       report_channel="Where members' reports of pictures go (default: the server owner's DMs)")
@app_commands.choices(nsfw_policy=[app_commands.Choice(name=f"{p}: {POLICY_MEANINGS[p]}", value=p)
                                   for p in NSFW_POLICIES],
                      highlight_day=[app_commands.Choice(name="off", value=-1)]
                      + [app_commands.Choice(name=day, value=index) for index, day in enumerate(WEEKDAYS)])
async def admin_settings(interaction: discord.Interaction,
                         gallery_channel: discord.TextChannel | discord.ForumChannel | None = None,
                         daily_quota: app_commands.Range[int, 0, 100_000] | None = None,
                         allowed_styles: str | None = None,
                         nsfw_policy: app_commands.Choice[str] | None = None,
                         highlight_day: app_commands.Choice[int] | None = None,
                         highlight_hour: app_commands.Range[int, 0, 23] | None = None,
                         blocked_words: app_commands.Range[str, 1, 1000] | None = None,
                         report_channel: discord.TextChannel | None = None) -> None:
    require_manage_guild(interaction)
    bot = client(interaction)
    changes: dict = {}
    if gallery_channel is not None:
        changes["gallery_channel_id"] = str(gallery_channel.id)
    if daily_quota is not None:
        changes["daily_quota"] = daily_quota
    if allowed_styles is not None:
        changes["allowed_styles"] = parse_style_list(bot, allowed_styles, interaction.guild_id)
    if nsfw_policy is not None:
        changes["nsfw_policy"] = nsfw_policy.value
    if highlight_day is not None:
        changes["highlight_day"] = None if highlight_day.value < 0 else highlight_day.value
    if highlight_hour is not None:
        changes["highlight_hour"] = highlight_hour
    if blocked_words is not None:
        words = [w.strip().lower() for w in blocked_words.split(",") if w.strip()]
        changes["blocked_words"] = [] if words == ["none"] else words[:100]
    if report_channel is not None:
        changes["report_channel_id"] = str(report_channel.id)
    current = await bot.backend.run(update_guild_settings, bot.backend.store, str(interaction.guild_id), **changes)
    if changes:
        await bot.backend.run(audit, bot.backend.store, str(interaction.guild_id), "settings",
                              str(interaction.user.id), None, ", ".join(sorted(changes)))
    gallery.schedule_highlight(bot, current)
    embed = discord.Embed(title="FaceChain settings for this server", colour=COLOUR)
    embed.add_field(name="Gallery channel", value=f"<#{current.gallery_channel_id}>" if current.gallery_channel_id
                    else "not set")
    quota = current.daily_quota if current.daily_quota is not None else bot.settings.guild_daily_quota
    embed.add_field(name="Daily quota", value=str(quota) if quota else "no limit")
    embed.add_field(name="Allowed styles", value=", ".join(current.allowed_styles)[:1000] or "all")
    check = ("safety check on" if bot.settings.safety_checker else "safety check off: only the negative prompt "
             "guards results (the bot owner sets FACECHAIN_SAFETY_CHECKER)")
    policy = current.nsfw_policy
    embed.add_field(name="NSFW policy", value=f"{policy}: {POLICY_MEANINGS[policy]} ({check})")
    embed.add_field(name="Weekly highlight", value="off" if current.highlight_day is None
                    else f"{WEEKDAYS[current.highlight_day]}s at {current.highlight_hour:02d}:00 UTC")
    embed.add_field(name="Reports go to", value=f"<#{current.report_channel_id}>" if current.report_channel_id
                    else "the server owner's DMs")
    embed.add_field(name="Blocked words", value=", ".join(current.blocked_words)[:1000] or
                    "none besides the always-blocked NSFW words")
    for problem in await bot.backend.run(open_setup_problems, bot.backend.store):
        embed.add_field(name=f"⚠️ Setup problem: {problem.key}", inline=False,
                        value=f"{problem.message[:900]} (the bot's owner has been told; members' requests wait)")
    await reply(interaction, "Saved." if changes else None, embed=embed)


def parse_style_list(bot: FaceChainBot, text: str, guild_id: int | None = None) -> list[str]:
    if text.strip().lower() in ("", "all"):
        return []
    catalogue = bot.backend.styles.catalogue(guild_id)
    wanted = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [style for style in wanted if catalogue.get(style) is None]
    if unknown:
        raise FaceChainError(f"Unknown style(s): {', '.join(unknown[:5])}. See `/facechain styles` for the ids.")
    return wanted


@admin.command(name="queue", description="This server's queued and running jobs")
async def admin_queue(interaction: discord.Interaction) -> None:
    require_manage_guild(interaction)
    bot = client(interaction)
    jobs = await bot.backend.run(bot.backend.active_with_positions, str(interaction.guild_id))
    view = discord.ui.View(timeout=None)
    lines = []
    for job, position in jobs:
        lines.append(f"`{job.id}` <@{job.user_id}> {job_title(job)}: {progress_line(job, position)}")
        if len(view.children) < 20:
            view.add_item(CancelButton(job.id, f"Cancel {job.id}", admin=True))
    text = "\n".join(lines)[:1900] if lines else "Nothing queued."
    await reply(interaction, text, view=view if jobs else None)


@admin.command(name="highlight", description="Post this week's most liked portraits now")
async def admin_highlight(interaction: discord.Interaction) -> None:
    require_manage_guild(interaction)
    await interaction.response.defer(ephemeral=True, thinking=True)
    posted = await gallery.post_highlight(client(interaction), str(interaction.guild_id))
    await reply(interaction, "Posted the highlights in the gallery channel." if posted
                else "Nothing was shared to the gallery in the last 7 days, so there is nothing to highlight.")


@admin.command(name="gallery-link", description="The secret address of this server's web gallery")
@app_commands.describe(rotate="Make a new address; the old one stops working")
async def admin_gallery_link(interaction: discord.Interaction, rotate: bool = False) -> None:
    require_manage_guild(interaction)
    bot = client(interaction)
    if bot.web is None:
        raise FaceChainError("The web gallery is off: the bot's owner can turn it on with FACECHAIN_WEB_GALLERY=true.")
    settings = await bot.backend.run(bot.backend.guild, interaction.guild_id)
    token = settings.web_token
    if rotate or not token:
        token = await bot.backend.run(rotate_web_token, bot.backend.store, str(interaction.guild_id))
    note = "A new address: the old one no longer works." if rotate else "Use `rotate:True` to replace it."
    await reply(interaction, f"This server's web gallery (only shared portraits): {bot.web.address(token)}\n{note}")
