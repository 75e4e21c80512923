"""A server's gallery: sharing portraits to its channel (text or forum), likes, un-sharing,
browsing with /facechain gallery, and the weekly highlight."""

from __future__ import annotations

import asyncio
import io
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import discord

from bot import takedown
from bot.messages import COLOUR
from bot.replies import reply
from bot.reports import ReportButton
from bot.views import OwnerView, age_restricted, client, guarded
from engine.errors import FaceChainError
from engine.nsfw_policy import may_show_flagged
from engine.store.collage import render_collage
from engine.store.community import (
    GalleryItem,
    GuildSettings,
    add_gallery_entry,
    browse_gallery,
    gallery_item,
    gallery_styles,
    highlight_guilds,
    record_highlight_post,
    remove_gallery_entry,
    set_gallery_message,
    toggle_like,
    update_guild_settings,
    week_winners,
)
from engine.store.together import approve_share

if TYPE_CHECKING:
    from bot.client import FaceChainBot

log = logging.getLogger("bot")
CANNOT_POST = ("I could not post in the gallery channel: ask an admin to check that it exists and that I may "
               "send messages and attach files there.")


# --- posting ---------------------------------------------------------------------------------------

async def post(bot: FaceChainBot, channel_id: str, title: str, **message) -> tuple[str, str]:
    """Post in a gallery channel; in a forum channel, as a new post (thread). Returns (channel, message) ids."""
    channel = bot.get_channel(int(channel_id))
    if isinstance(channel, discord.ForumChannel):
        created = await channel.create_thread(name=title[:100], **message)
        return str(created.thread.id), str(created.message.id)
    target = channel if isinstance(channel, discord.abc.Messageable) else bot.get_partial_messageable(int(channel_id))
    sent = await target.send(**message)
    return str(sent.channel.id), str(sent.id)


def style_name(bot: FaceChainBot, style_id: str) -> str:
    style = bot.backend.styles.catalogue().get(style_id)
    return style.name if style else style_id


# --- sharing -------------------------------------------------------------------------------------

async def share(interaction: discord.Interaction, portrait: dict) -> None:
    """Post one of the member's portraits in the server's gallery channel, once."""
    bot = client(interaction)
    if interaction.guild_id is None:
        raise FaceChainError("Sharing works in a server: ask for the portrait there to share it to its gallery.")
    settings = await bot.backend.run(bot.backend.guild, interaction.guild_id)
    if not settings.gallery_channel_id:
        raise FaceChainError("This server has no gallery channel yet: an admin can set one with "
                             "`/facechain-admin settings gallery_channel:`.")
    if portrait["nsfw"] and not may_show_flagged(settings.nsfw_policy, gallery_age_restricted(bot, settings)):
        raise FaceChainError("The safety filter flagged this portrait, and this server's gallery channel is not "
                             "age-restricted: it can't be shared there.")
    if portrait.get("partner_id"):  # a picture of two members goes up once both have shared it
        members = {portrait["user_id"], portrait["partner_id"]}
        waiting = members - await bot.backend.run(approve_share, bot.backend.store, portrait["id"], str(interaction.user.id))
        if waiting:
            await reply(interaction, f"It goes to the gallery once <@{waiting.pop()}> shares it too (Share, on the "
                                     "same picture).")
            return
    entry = await bot.backend.run(add_gallery_entry, bot.backend.store, str(interaction.guild_id), portrait["id"],
                                  str(interaction.user.id), settings.gallery_channel_id, interaction.user.display_name)
    name = style_name(bot, portrait["style"])
    link = f" · [original]({interaction.message.jump_url})" if interaction.message else ""
    credit = f"<@{portrait['user_id']}>" + (f" and <@{portrait['partner_id']}>" if portrait.get("partner_id") else "")
    embed = discord.Embed(title=name, colour=COLOUR, description=f"by {credit}{link}")
    embed.set_image(url="attachment://portrait.png")
    embed.set_footer(text="Made with /facechain portrait")
    try:
        channel_id, message_id = await post(
            bot, settings.gallery_channel_id, f"{name} by {interaction.user.display_name}", embed=embed,
            file=discord.File(bot.backend.store.absolute(portrait["path"]), "portrait.png"),
            view=post_view(entry["id"], 0), allowed_mentions=discord.AllowedMentions.none())
    except (discord.HTTPException, OSError) as error:
        await bot.backend.run(remove_gallery_entry, bot.backend.store, entry["id"])
        log.warning("gallery post failed: %s", error)
        raise FaceChainError(CANNOT_POST) from None
    await bot.backend.run(set_gallery_message, bot.backend.store, entry["id"], message_id, channel_id)
    await reply(interaction, f"Shared to <#{settings.gallery_channel_id}>. Un-share it there at any time.")


def gallery_age_restricted(bot: FaceChainBot, settings) -> bool:
    return age_restricted(bot.get_channel(int(settings.gallery_channel_id))) if settings.gallery_channel_id else False


def post_view(entry_id: int, likes: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(GalleryButton("like", entry_id, likes))
    view.add_item(GalleryButton("unshare", entry_id))
    view.add_item(ReportButton("e", entry_id))
    return view


class GalleryButton(discord.ui.DynamicItem[discord.ui.Button],
                    template=r"fc:(?P<action>like|unshare):(?P<entry>[0-9]+)"):
    """On a gallery post: anyone can like it (pressing again takes the like back); its owner can un-share it."""

    def __init__(self, action: str, entry_id: int, likes: int = 0) -> None:
        if action == "like":
            button = discord.ui.Button(label=str(likes), emoji="❤️", style=discord.ButtonStyle.secondary,
                                       custom_id=f"fc:like:{entry_id}")
        else:
            button = discord.ui.Button(label="Un-share", style=discord.ButtonStyle.secondary,
                                       custom_id=f"fc:unshare:{entry_id}")
        super().__init__(button)
        self.action, self.entry_id = action, entry_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(match["action"], int(match["entry"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def action() -> None:
            bot = client(interaction)
            item = await bot.backend.run(gallery_item, bot.backend.store, self.entry_id)
            if item is None:
                await reply(interaction, "This portrait is no longer in the gallery.")
                return
            if self.action == "like":
                user_id = str(interaction.user.id)
                _, likes = await bot.backend.run(toggle_like, bot.backend.store, item.entry_id, user_id)
                await interaction.response.edit_message(view=post_view(item.entry_id, likes))
                return
            if str(interaction.user.id) not in {item.user_id, *item.members}:  # either member of a picture of two
                await reply(interaction, "Only the member who shared this portrait can un-share it.")
                return
            await reply(interaction, "Removed from the gallery.")
            await takedown.delete_posts(bot, [{"channel_id": item.channel_id, "message_id": item.message_id}])
            await bot.backend.run(remove_gallery_entry, bot.backend.store, item.entry_id)
        await guarded(interaction, action)


# --- browsing --------------------------------------------------------------------------------------

class GalleryBrowser(OwnerView):
    """One shared portrait per page: first/previous/next/last, and a style menu."""

    def __init__(self, bot: FaceChainBot, owner_id: int, guild_id: int, style: str | None, member_id: str | None,
                 sort: str, styles: list[str], include_flagged: bool = False) -> None:
        super().__init__(owner_id)
        self.bot, self.guild_id, self.style, self.member_id, self.sort = bot, str(guild_id), style, member_id, sort
        self.include_flagged = include_flagged
        self.page, self.total = 0, 0
        self.buttons = {}
        for key, label in (("first", "⏮"), ("previous", "◀"), ("next", "▶"), ("last", "⏭"), ("jump", "Go to…")):
            button = discord.ui.Button(label=label, style=discord.ButtonStyle.secondary)
            button.callback = lambda interaction, key=key: self._turn(interaction, key)
            self.buttons[key] = button
            self.add_item(button)
        if styles:
            options = [discord.SelectOption(label="All styles", value="*", default=style is None)]
            options += [discord.SelectOption(label=style_name(bot, s)[:100], value=s, default=s == style)
                        for s in styles[:24]]
            menu = discord.ui.Select(placeholder="Style", options=options, row=1)
            menu.callback = lambda interaction: self._pick_style(interaction, menu.values[0])
            self.add_item(menu)

    async def page_message(self) -> tuple[discord.Embed, list[discord.File]]:
        items, self.total = await self.bot.backend.run(
            browse_gallery, self.bot.backend.store, self.guild_id, self.style, self.member_id, self.sort, self.page,
            include_flagged=self.include_flagged)
        at_start, at_end = self.page == 0, self.page >= self.total - 1
        for key, button in self.buttons.items():
            button.disabled = {"first": at_start, "previous": at_start, "jump": self.total < 3}.get(key, at_end)
        if not items:
            who = " of this member" if self.member_id else ""
            embed = discord.Embed(title="Gallery", colour=COLOUR,
                                  description=f"No shared portraits{who} here yet: share one from a "
                                              "`/facechain portrait` result.")
            return embed, []
        return gallery_embed(self.bot, items[0], f"{self.page + 1} of {self.total} · sorted by {self.sort}"), [
            discord.File(self.bot.backend.store.absolute(items[0].path), "portrait.png")]

    async def _turn(self, interaction: discord.Interaction, key: str) -> None:
        if key == "jump":
            await interaction.response.send_modal(PageModal(self))
            return
        last = max(self.total - 1, 0)
        self.page = {"first": 0, "previous": max(self.page - 1, 0), "next": min(self.page + 1, last), "last": last}[key]
        await self._show(interaction)

    async def _pick_style(self, interaction: discord.Interaction, value: str) -> None:
        self.style, self.page = (None if value == "*" else value), 0
        for option in self.children[-1].options:  # keep the chosen style shown in the menu
            option.default = option.value == value
        await self._show(interaction)

    async def _show(self, interaction: discord.Interaction) -> None:
        embed, files = await self.page_message()
        await interaction.response.edit_message(embed=embed, attachments=files, view=self)


class PageModal(discord.ui.Modal, title="Go to page"):
    def __init__(self, browser: GalleryBrowser) -> None:
        super().__init__()
        self.browser = browser
        self.number = discord.ui.TextInput(label=f"Page (1 to {browser.total})", max_length=6,
                                           custom_id="page", placeholder=str(browser.page + 1))
        self.add_item(self.number)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        text = self.number.value.strip()
        if not text.isdigit() or not 1 <= int(text) <= self.browser.total:
            await reply(interaction, f"Pick a page from 1 to {self.browser.total} (got {text[:10]!r}).")
            return
        self.browser.page = int(text) - 1
        await self.browser._show(interaction)


def gallery_embed(bot: FaceChainBot, item: GalleryItem, footer: str) -> discord.Embed:
    embed = discord.Embed(title=style_name(bot, item.style), colour=COLOUR,
                          description=f"by {' and '.join(f'<@{m}>' for m in item.members)} · ❤️ {item.likes} · "
                                      f"shared {item.created_at[:10]}")
    embed.set_image(url="attachment://portrait.png")
    embed.set_footer(text=footer)
    return embed


async def browse(interaction: discord.Interaction, style: str | None, member: discord.abc.User | None, sort: str,
                 public: bool) -> None:
    bot = client(interaction)
    if interaction.guild_id is None:
        raise FaceChainError("Galleries belong to servers: use `/facechain gallery` in one.")
    styles = await bot.backend.run(gallery_styles, bot.backend.store, str(interaction.guild_id))
    settings = await bot.backend.run(bot.backend.guild, interaction.guild_id)
    browser = GalleryBrowser(bot, interaction.user.id, interaction.guild_id, style or None,
                             str(member.id) if member else None, sort, styles,
                             may_show_flagged(settings.nsfw_policy, age_restricted(interaction.channel)))
    embed, files = await browser.page_message()
    await interaction.response.send_message(embed=embed, files=files, view=browser, ephemeral=not public,
                                            allowed_mentions=discord.AllowedMentions.none())


# --- weekly highlight --------------------------------------------------------------------------------

async def post_highlight(bot: FaceChainBot, guild_id: str) -> bool:
    """Post the week's most liked portraits as one collage in the gallery channel; False if none."""
    settings = await bot.backend.run(bot.backend.guild, int(guild_id))
    if not settings.gallery_channel_id:
        raise FaceChainError("Set a gallery channel first: `/facechain-admin settings gallery_channel:`.")
    winners = await bot.backend.run(week_winners, bot.backend.store, guild_id,
                                    include_flagged=may_show_flagged(settings.nsfw_policy,
                                                                     gallery_age_restricted(bot, settings)))
    if not winners:
        return False
    store = bot.backend.store
    tiles = [(store.absolute(w.path), f"#{rank} · {w.likes} like{'s' if w.likes != 1 else ''}")
             for rank, w in enumerate(winners, start=1)]
    picture = await asyncio.to_thread(render_collage, tiles, store.data_dir)
    credits = "\n".join(f"**#{rank}** {' and '.join(f'<@{m}>' for m in w.members)} · {style_name(bot, w.style)} · "
                        f"❤️ {w.likes}" for rank, w in enumerate(winners, start=1))
    embed = discord.Embed(title="🏆 Highlights of the week", description=credits, colour=COLOUR)
    embed.set_image(url="attachment://highlights.png")
    try:
        channel_id, message_id = await post(bot, settings.gallery_channel_id, "Highlights of the week", embed=embed,
                                             file=discord.File(io.BytesIO(picture), "highlights.png"),
                                             allowed_mentions=discord.AllowedMentions.none())
    except discord.HTTPException as error:
        log.warning("highlight post failed in guild %s: %s", guild_id, error)
        raise FaceChainError(CANNOT_POST) from None
    await bot.backend.run(record_highlight_post, store, guild_id, channel_id, message_id,
                          [w.portrait_id for w in winners])
    await bot.backend.run(update_guild_settings, store, guild_id,
                          last_highlight_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return True



def schedule_highlight(bot: FaceChainBot, settings: GuildSettings) -> None:
    """(Re)schedule a guild's weekly highlight as its own cron job, or remove it when turned off."""
    from apscheduler.triggers.cron import CronTrigger

    job_id = f"highlight-{settings.guild_id}"
    if settings.highlight_day is None:
        if bot.highlights.get_job(job_id):
            bot.highlights.remove_job(job_id)
        return
    trigger = CronTrigger(day_of_week=settings.highlight_day, hour=settings.highlight_hour, timezone="UTC")
    job = bot.highlights.add_job(scheduled_highlight, trigger, args=[bot, settings.guild_id], id=job_id,
                                 replace_existing=True, misfire_grace_time=3600, coalesce=True)
    log.info("weekly highlight for guild %s: next run %s", settings.guild_id, job.next_run_time)


async def schedule_all_highlights(bot: FaceChainBot) -> None:
    for settings in await bot.backend.run(highlight_guilds, bot.backend.store):
        schedule_highlight(bot, settings)


async def scheduled_highlight(bot: FaceChainBot, guild_id: str) -> None:
    try:
        posted = await post_highlight(bot, guild_id)
        log.info("weekly highlight for guild %s: %s", guild_id, "posted" if posted else "nothing shared this week")
    except Exception:  # noqa: BLE001 - a failed highlight must not stop the scheduler
        log.exception("weekly highlight for guild %s failed", guild_id)
