"""Buttons and menus.

Buttons on results (Re-roll, More like, Share, Delete, Cancel) are DynamicItems: their custom id
carries the job, so they keep working after a restart. Each checks who pressed it. Short-lived
dialogs (consent, forget, the style browser) are plain views that only their owner can use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord

from bot import gallery
from bot.replies import not_yours, reply, report_error
from engine.errors import FaceChainError
from engine.queue import Job

if TYPE_CHECKING:
    from bot.client import FaceChainBot


def client(interaction: discord.Interaction) -> FaceChainBot:
    return interaction.client  # type: ignore[return-value]


async def owned_job(interaction: discord.Interaction, job_id: int) -> Job | None:
    """The job, if the one who pressed is its owner; otherwise tells them and returns None."""
    job = await client(interaction).backend.run(client(interaction).backend.queue.get, job_id)
    if job is None:
        await reply(interaction, "This request no longer exists.")
        return None
    if job.user_id != str(interaction.user.id):
        await reply(interaction, not_yours(job.user_id))
        return None
    return job


async def guarded(interaction: discord.Interaction, action: Callable[[], Awaitable[None]]) -> None:
    try:
        await action()
    except Exception as error:  # noqa: BLE001 - every failure becomes a friendly message and a log line
        await report_error(interaction, error)


async def queue_again(interaction: discord.Interaction, job: Job, heading: str, **changes) -> None:
    """Queue a new portrait request like `job` and show its progress in a new message."""
    bot = client(interaction)
    await interaction.response.defer(ephemeral=bool(job.params.get("private")), thinking=True)
    new_job = await bot.backend.run(bot.backend.reorder, job, **changes)
    await bot.deliveries.follow(new_job, interaction, heading)


class JobButton(discord.ui.DynamicItem[discord.ui.Button], template=r"fc:(?P<action>reroll|delete):(?P<job>[0-9]+)"):
    """Re-roll (the same request on new seeds) and Delete (the request's portraits) on a result."""

    LOOK = {"reroll": ("Re-roll", "🎲", discord.ButtonStyle.primary),
            "delete": ("Delete", "🗑️", discord.ButtonStyle.danger)}

    def __init__(self, action: str, job_id: int) -> None:
        label, emoji, style = self.LOOK[action]
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"fc:{action}:{job_id}"))
        self.action, self.job_id = action, job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(match["action"], int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def action() -> None:
            job = await owned_job(interaction, self.job_id)
            if job is None:
                return
            if self.action == "reroll":
                await queue_again(interaction, job, "Re-rolling", seed=None)
                return
            removed = await gallery.delete_job_portraits(client(interaction), self.job_id)
            await interaction.response.edit_message(
                content=f"🗑️ Deleted {removed} portrait{'s' if removed != 1 else ''}.", attachments=[],
                embed=None, view=None)
        await guarded(interaction, action)


class PortraitSelect(discord.ui.DynamicItem[discord.ui.Select], template=r"fc:(?P<what>more|share):(?P<job>[0-9]+)"):
    """'More like…' and 'Share to gallery…' menus: one option per portrait of the job."""

    PLACEHOLDERS = {"more": "More like…", "share": "Share to the server gallery…"}

    def __init__(self, what: str, job_id: int, options: list[discord.SelectOption] | None = None) -> None:
        super().__init__(discord.ui.Select(custom_id=f"fc:{what}:{job_id}", placeholder=self.PLACEHOLDERS[what],
                                           options=options or [discord.SelectOption(label="-")]))
        self.what, self.job_id = what, job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(match["what"], int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def action() -> None:
            job = await owned_job(interaction, self.job_id)
            if job is None:
                return
            bot = client(interaction)
            portrait_id = int(interaction.data["values"][0])  # type: ignore[index]
            portrait = await bot.backend.run(bot.backend.store.portrait, portrait_id)
            if portrait is None or portrait["job_id"] != job.id:
                raise FaceChainError("That portrait no longer exists.")
            if self.what == "more":
                await queue_again(interaction, job, "More like this", seed=None, variation_of=portrait["seed"])
            else:
                await gallery.share(interaction, portrait)
        await guarded(interaction, action)


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=r"fc:cancel:(?P<admin>a?)(?P<job>[0-9]+)"):
    """Cancel a queued or running job: its owner from /facechain status, an admin from the queue view."""

    def __init__(self, job_id: int, label: str, admin: bool = False) -> None:
        super().__init__(discord.ui.Button(label=label[:80], style=discord.ButtonStyle.secondary, emoji="✖️",
                                           custom_id=f"fc:cancel:{'a' if admin else ''}{job_id}"))
        self.job_id, self.admin = job_id, admin

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(int(match["job"]), item.label or "Cancel", admin=bool(match["admin"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def action() -> None:
            bot = client(interaction)
            if self.admin:
                job = await bot.backend.run(bot.backend.queue.get, self.job_id)
                if not interaction.permissions.manage_guild or job is None or job.guild_id != str(interaction.guild_id):
                    await reply(interaction, "Only this server's admins (Manage Server) can cancel its jobs.")
                    return
            elif (job := await owned_job(interaction, self.job_id)) is None:
                return
            cancelled = await bot.backend.run(bot.backend.queue.cancel, job.id)
            done = "Cancelled" if cancelled.state == "cancelled" else "Stopping"
            await reply(interaction, f"{done}: job {job.id} ({job.kind}).")
        await guarded(interaction, action)


DYNAMIC_ITEMS = (JobButton, PortraitSelect, CancelButton)


def portrait_actions(job: Job, portraits: list[dict]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("reroll", job.id))
    view.add_item(JobButton("delete", job.id))
    for what, verb in (("more", "More like"), ("share", "Share")):
        options = [discord.SelectOption(label=f"{verb} #{index}", value=str(portrait["id"]),
                                        description=f"seed {portrait['seed']}")
                   for index, portrait in enumerate(portraits[:25], start=1)]
        if options and (what == "more" or job.guild_id):
            view.add_item(PortraitSelect(what, job.id, options))
    return view


class OwnerView(discord.ui.View):
    """A short-lived dialog only `owner_id` can press."""

    def __init__(self, owner_id: int, timeout: float = 600) -> None:
        super().__init__(timeout=timeout)
        self.owner_id = owner_id

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.owner_id:
            await reply(interaction, not_yours(str(self.owner_id)))
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: Exception, item) -> None:
        await report_error(interaction, error)


class ConfirmView(OwnerView):
    """Two buttons; `on_confirm(interaction)` runs on the first, the second says `declined`."""

    def __init__(self, owner_id: int, confirm: str, decline: str, declined: str,
                 on_confirm: Callable[[discord.Interaction], Awaitable[None]], danger: bool = False) -> None:
        super().__init__(owner_id)
        self.on_confirm, self.declined = on_confirm, declined
        style = discord.ButtonStyle.danger if danger else discord.ButtonStyle.success
        yes = discord.ui.Button(label=confirm, style=style)
        no = discord.ui.Button(label=decline, style=discord.ButtonStyle.secondary)
        yes.callback, no.callback = self._yes, self._no
        self.add_item(yes)
        self.add_item(no)

    async def _yes(self, interaction: discord.Interaction) -> None:
        self.stop()
        await self.on_confirm(interaction)

    async def _no(self, interaction: discord.Interaction) -> None:
        self.stop()
        await interaction.response.edit_message(content=self.declined, embed=None, view=None)


class PagerView(OwnerView):
    """Previous/next through pages built by `render(page) -> (embed, files)`."""

    def __init__(self, owner_id: int, pages: int, render: Callable[[int], tuple[discord.Embed, list[discord.File]]]):
        super().__init__(owner_id)
        self.page, self.pages, self.render = 0, pages, render
        self.previous = discord.ui.Button(label="◀ Previous", style=discord.ButtonStyle.secondary)
        self.next = discord.ui.Button(label="Next ▶", style=discord.ButtonStyle.secondary)
        self.previous.callback = lambda interaction: self._turn(interaction, -1)
        self.next.callback = lambda interaction: self._turn(interaction, +1)
        self.add_item(self.previous)
        self.add_item(self.next)
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.previous.disabled = self.page == 0
        self.next.disabled = self.page >= self.pages - 1

    async def _turn(self, interaction: discord.Interaction, step: int) -> None:
        self.page = min(max(self.page + step, 0), self.pages - 1)
        self._update_buttons()
        embed, files = self.render(self.page)
        await interaction.response.edit_message(embed=embed, attachments=files, view=self)
