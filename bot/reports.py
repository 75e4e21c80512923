"""Report, on every gallery post and every result shown on a server: anyone can press it, and the server's admins
get the picture with Remove and Dismiss. A report names its reporter only to the admins: it goes to the server's
report channel (a setting) or, without one, to the server owner's DMs. Reports live in the database
(engine/store/moderation.py), so the buttons work after a restart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot import takedown
from bot.messages import COLOUR
from bot.replies import reply
from bot.views import client, guarded
from engine.errors import FaceChainError
from engine.store.community import gallery_item, remove_gallery_entry
from engine.store.moderation import Report, get_report, handle_report, report, set_report_message

if TYPE_CHECKING:
    from bot.client import FaceChainBot

log = logging.getLogger("bot")


# --- reporting ---------------------------------------------------------------------------------------

class ReportButton(discord.ui.DynamicItem[discord.ui.Button], template=r"fc:report:(?P<kind>[ej])(?P<id>[0-9]+)"):
    """Report, on a gallery post (`e`: its entry) or a result shown on a server (`j`: its job): anyone may press
    it; the server's admins get the picture with Remove and Dismiss."""

    def __init__(self, kind: str, target_id: int) -> None:
        super().__init__(discord.ui.Button(label="Report", emoji="🚩", style=discord.ButtonStyle.secondary,
                                           custom_id=f"fc:report:{kind}{target_id}"))
        self.kind, self.target_id = kind, target_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(match["kind"], int(match["id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def action() -> None:
            bot = client(interaction)
            if interaction.guild_id is None:
                raise FaceChainError("Reports go to a server's moderators: this picture is not on a server.")
            portrait_id, entry_id = await self._picture(bot)
            made = await bot.backend.run(report, bot.backend.store, str(interaction.guild_id), portrait_id,
                                         str(interaction.user.id), entry_id)
            await reply(interaction, "Reported to this server's moderators. Thank you: only they see who reported it.")
            await send_report(bot, made, interaction.user, interaction.message)
        await guarded(interaction, action)

    async def _picture(self, bot: FaceChainBot) -> tuple[int, int | None]:
        if self.kind == "e":
            item = await bot.backend.run(gallery_item, bot.backend.store, self.target_id)
            if item is None:
                raise FaceChainError("This picture is no longer in the gallery.")
            return item.portrait_id, item.entry_id
        portraits = await bot.backend.run(bot.backend.store.job_portraits, self.target_id)
        if not portraits:
            raise FaceChainError("These pictures no longer exist.")
        return portraits[0]["id"], None


async def send_report(bot: FaceChainBot, made: Report, reporter: discord.abc.User,
                      message: discord.Message | None) -> None:
    """The report, with the picture and Remove / Dismiss, in the report channel or the server owner's DMs."""
    settings = await bot.backend.run(bot.backend.guild, int(made.guild_id))
    portrait = await bot.backend.run(bot.backend.store.portrait, made.portrait_id)
    where = f" ([the message]({message.jump_url}))" if message is not None else ""
    embed = discord.Embed(title="🚩 A picture was reported", colour=COLOUR,
                          description=f"Reported by {reporter.mention}{where}. Picture of <@{portrait['user_id']}>"
                                      + (f" and <@{portrait['partner_id']}>" if portrait.get("partner_id") else "")
                                      + ". **Remove** takes it down; **Dismiss** keeps it.")
    embed.set_image(url="attachment://reported.png")
    message_kwargs = {"embed": embed, "view": report_buttons(made.id),
                      "file": discord.File(bot.backend.store.absolute(portrait["path"]), "reported.png"),
                      "allowed_mentions": discord.AllowedMentions.none()}
    try:
        if settings.report_channel_id:
            sent = await bot.get_partial_messageable(int(settings.report_channel_id)).send(**message_kwargs)
        else:
            guild = bot.get_guild(int(made.guild_id))
            owner = await bot.fetch_user(guild.owner_id) if guild is not None and guild.owner_id else None
            if owner is None:
                raise FaceChainError("no owner")
            sent = await owner.send(**message_kwargs)
    except (discord.HTTPException, FaceChainError, OSError) as error:  # kept: /facechain-admin audit shows it
        log.warning("could not deliver report %s: %s", made.id, error)
        return
    await bot.backend.run(set_report_message, bot.backend.store, made.id, str(sent.channel.id), str(sent.id))


def report_buttons(report_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ReportDecision("remove", report_id))
    view.add_item(ReportDecision("dismiss", report_id))
    return view


class ReportDecision(discord.ui.DynamicItem[discord.ui.Button],
                     template=r"fc:mod:(?P<choice>remove|dismiss):(?P<report>[0-9]+)"):
    """Remove (the gallery post, or the result's pictures) or Dismiss, on a report: the server's admins only."""

    LOOK = {"remove": ("Remove", discord.ButtonStyle.danger), "dismiss": ("Dismiss", discord.ButtonStyle.secondary)}

    def __init__(self, choice: str, report_id: int) -> None:
        label, style = self.LOOK[choice]
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=f"fc:mod:{choice}:{report_id}"))
        self.choice, self.report_id = choice, report_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(match["choice"], int(match["report"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def action() -> None:
            bot = client(interaction)
            found = await bot.backend.run(get_report, bot.backend.store, self.report_id)
            if found is None:
                raise FaceChainError("This report no longer exists.")
            if not is_admin_of(bot, interaction, found.guild_id):
                raise FaceChainError("Only that server's admins (Manage Server) can decide reports.")
            outcome = "removed" if self.choice == "remove" else "dismissed"
            handled = await bot.backend.run(handle_report, bot.backend.store, found.id, str(interaction.user.id),
                                            outcome)
            if outcome == "removed":
                await take_down(bot, handled)
            await interaction.response.edit_message(
                content=f"{'Removed' if outcome == 'removed' else 'Dismissed'} by {interaction.user.mention}.",
                attachments=[], embed=None, view=None, allowed_mentions=discord.AllowedMentions.none())
        await guarded(interaction, action)


def is_admin_of(bot: FaceChainBot, interaction: discord.Interaction, guild_id: str) -> bool:
    """Manage Server on that server (pressed there), or its owner (pressed in their DMs)."""
    if interaction.guild_id is not None:
        return str(interaction.guild_id) == guild_id and interaction.permissions.manage_guild
    guild = bot.get_guild(int(guild_id))
    return guild is not None and guild.owner_id == interaction.user.id


async def take_down(bot: FaceChainBot, handled: Report) -> None:
    """A reported gallery post comes down; a reported result's pictures are deleted and their messages cleared."""
    store = bot.backend.store
    if handled.entry_id is not None:
        item = await bot.backend.run(gallery_item, store, handled.entry_id)
        if item is not None:
            await takedown.delete_posts(bot, [{"channel_id": item.channel_id, "message_id": item.message_id}])
            await bot.backend.run(remove_gallery_entry, store, item.entry_id)
        return
    portrait = await bot.backend.run(store.portrait, handled.portrait_id)
    job = await bot.backend.run(bot.backend.queue.get, portrait["job_id"]) if portrait else None
    if job is not None:
        await takedown.delete_job_portraits(bot, job.id)
        await takedown.clear_result_messages(bot, job, "🗑️ A moderator removed these pictures.")
