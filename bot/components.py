"""Buttons and menus.

Buttons on results (Re-roll, More like, Share, Delete, Cancel) are DynamicItems: their custom id
carries the job, so they keep working after a restart. Each checks who pressed it. Dialogs are in
bot/views.py.
"""

from __future__ import annotations

import discord

from bot import gallery, takedown
from bot.replies import not_yours, reply
from bot.reports import ReportButton
from bot.views import client, guarded
from engine.errors import FaceChainError
from engine.jobs.queue import Job
from engine.store.moderation import audit


async def owned_job(interaction: discord.Interaction, job_id: int, partner_may: bool = False) -> Job | None:
    """The job, if the one who pressed is its owner (or, with `partner_may`, the other member of a picture
    together); otherwise tells them and returns None."""
    job = await client(interaction).backend.run(client(interaction).backend.queue.get, job_id)
    if job is None:
        await reply(interaction, "This request no longer exists.")
        return None
    pressed = str(interaction.user.id)
    if job.user_id != pressed and not (partner_may and job.kind == "together" and job.params.get("with") == pressed):
        await reply(interaction, not_yours(job.user_id))
        return None
    return job


async def queue_again(interaction: discord.Interaction, job: Job, heading: str, **changes) -> None:
    """Queue a new portrait request like `job` and show its progress in a new message."""
    bot = client(interaction)
    await interaction.response.defer(ephemeral=bool(job.params.get("private")), thinking=True)
    new_job = await bot.backend.run(bot.backend.reorder, job, **changes)
    await bot.deliveries.follow(new_job, interaction, heading)


async def queue_and_follow(interaction: discord.Interaction, job: Job, kind: str, params: dict, heading: str) -> None:
    """Queue a new `kind` job for `job`'s owner, where `job` was asked, and show its progress in a new message."""
    bot = client(interaction)
    await interaction.response.defer(ephemeral=bool(job.params.get("private")), thinking=True)
    new_job = await bot.backend.run(bot.backend.queue.enqueue, kind, job.user_id, params, guild_id=job.guild_id,
                                    channel_id=job.channel_id)
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
            job = await owned_job(interaction, self.job_id, partner_may=self.action == "delete")
            if job is None:
                return
            if self.action == "reroll":
                await queue_again(interaction, job, "Re-rolling", seed=None)
                return
            bot = client(interaction)
            removed = await takedown.delete_job_portraits(bot, self.job_id)
            await interaction.response.edit_message(
                content=f"🗑️ Deleted {removed} portrait{'s' if removed != 1 else ''}.", attachments=[],
                embed=None, view=None)
            pressed_on = interaction.message.id if interaction.message else None
            await takedown.clear_result_messages(bot, job, f"🗑️ <@{interaction.user.id}> deleted these pictures.",
                                                keep=pressed_on)
        await guarded(interaction, action)


class PortraitSelect(discord.ui.DynamicItem[discord.ui.Select],
                     template=r"fc:(?P<what>more|share|sharper|x4):(?P<job>[0-9]+)"):
    """'More like…', 'Sharper x2…', 'Upscale x4…' and 'Share to gallery…' menus: one option per portrait of the
    job."""

    PLACEHOLDERS = {"more": "More like…", "sharper": "Sharper x2…", "x4": "Upscale x4…",
                    "share": "Share to the server gallery…"}

    def __init__(self, what: str, job_id: int, options: list[discord.SelectOption] | None = None) -> None:
        super().__init__(discord.ui.Select(custom_id=f"fc:{what}:{job_id}", placeholder=self.PLACEHOLDERS[what],
                                           options=options or [discord.SelectOption(label="-")]))
        self.what, self.job_id = what, job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(match["what"], int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def action() -> None:
            job = await owned_job(interaction, self.job_id, partner_may=self.what == "share")
            if job is None:
                return
            bot = client(interaction)
            portrait_id = int(interaction.data["values"][0])  # type: ignore[index]
            portrait = await bot.backend.run(bot.backend.store.portrait, portrait_id)
            if portrait is None or portrait["job_id"] != job.id:
                raise FaceChainError("That portrait no longer exists.")
            if self.what == "more":
                await queue_again(interaction, job, "More like this", seed=None, variation_of=portrait["seed"])
            elif self.what in ("sharper", "x4"):
                params = {"portrait_id": portrait["id"], "style": portrait["style"], "count": 1,
                          "private": job.params.get("private"), "age_restricted": job.params.get("age_restricted"),
                          **({"x4": True} if self.what == "x4" else {})}
                await queue_and_follow(interaction, job, "upscale", params,
                                       "Upscale x4" if self.what == "x4" else "Sharper x2")
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
            if self.admin:
                await bot.backend.run(audit, bot.backend.store, job.guild_id, "cancel", str(interaction.user.id),
                                      job.user_id, f"job {job.id} ({job.kind})")
            done = "Cancelled" if cancelled.state == "cancelled" else "Stopping"
            await reply(interaction, f"{done}: job {job.id} ({job.kind}).")
        await guarded(interaction, action)


class SwapFaceButton(discord.ui.DynamicItem[discord.ui.Button],
                     template=r"fc:swapface:(?P<job>[0-9]+):(?P<face>[0-9]+)"):
    """One button per face of a photo sent to /facechain swap: swaps that face."""

    def __init__(self, job_id: int, face: int) -> None:
        super().__init__(discord.ui.Button(label=f"Face {face}", style=discord.ButtonStyle.primary,
                                           custom_id=f"fc:swapface:{job_id}:{face}"))
        self.job_id, self.face = job_id, face

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(int(match["job"]), int(match["face"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def action() -> None:
            job = await owned_job(interaction, self.job_id)
            if job is not None:
                await queue_and_follow(interaction, job, job.kind, {**job.params, "face": self.face},
                                       f"Your face on face {self.face}")
        await guarded(interaction, action)


class FacePairSelect(discord.ui.DynamicItem[discord.ui.Select], template=r"fc:pair:(?P<job>[0-9]+)"):
    """On a photo of more than two faces sent to /facechain together: which face is whose."""

    def __init__(self, job_id: int, options: list[discord.SelectOption] | None = None) -> None:
        super().__init__(discord.ui.Select(custom_id=f"fc:pair:{job_id}", placeholder="Which faces are the two of you…",
                                           options=options or [discord.SelectOption(label="-")]))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def action() -> None:
            job = await owned_job(interaction, self.job_id)
            if job is not None:
                mine, theirs = (int(n) for n in interaction.data["values"][0].split(","))  # type: ignore[index]
                await queue_and_follow(interaction, job, job.kind, {**job.params, "faces": [mine, theirs]},
                                       f"You on face {mine}, <@{job.params.get('with')}> on face {theirs}")
        await guarded(interaction, action)


DYNAMIC_ITEMS = (JobButton, PortraitSelect, CancelButton, SwapFaceButton, FacePairSelect)


def face_pairs(job: Job, count: int) -> discord.ui.View:
    """Every (you, them) pair of faces a select can hold (25: up to 5 faces; with more, the command's face_a and
    face_b choose)."""
    pairs = [(mine, theirs) for mine in range(1, count + 1) for theirs in range(1, count + 1) if mine != theirs][:25]
    view = discord.ui.View(timeout=None)
    view.add_item(FacePairSelect(job.id, [discord.SelectOption(label=f"You on face {mine}, them on face {theirs}",
                                                               value=f"{mine},{theirs}") for mine, theirs in pairs]))
    return view


def together_actions(job: Job, portraits: list[dict]) -> discord.ui.View:
    """Delete (by either member) and Share (once both have shared it) on a picture together; no Re-roll, which
    would draw the other member again without asking."""
    return swap_actions(job, portraits)


def face_choices(job: Job, count: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for face in range(1, min(count, 20) + 1):
        view.add_item(SwapFaceButton(job.id, face))
    return view


def swap_actions(job: Job, portraits: list[dict]) -> discord.ui.View:
    """Delete, and Share (of any of the results) where the result was asked for on a server."""
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("delete", job.id))
    add_report(view, job)
    if job.guild_id and portraits:
        options = [discord.SelectOption(label=f"Share #{index}" if len(portraits) > 1 else "Share",
                                        value=str(portrait["id"]))
                   for index, portrait in enumerate(portraits[:25], start=1)]
        view.add_item(PortraitSelect("share", job.id, options))
    return view


def add_report(view: discord.ui.View, job: Job) -> None:
    """Report, on a result others on the server can see."""
    if job.guild_id and not job.params.get("private"):
        view.add_item(ReportButton("j", job.id))


def portrait_actions(job: Job, portraits: list[dict]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("reroll", job.id))
    view.add_item(JobButton("delete", job.id))
    add_report(view, job)
    result = job.result or {}
    offered = {"more": True, "share": bool(job.guild_id),
               "sharper": result.get("sharper", True),  # SD1.5's img2img: the worker says whether it has it
               "x4": result.get("upscale_x4", False) and not result.get("x4")}  # once is enough
    for what, verb in (("more", "More like"), ("sharper", "Sharper x2"), ("x4", "Upscale x4"), ("share", "Share")):
        options = [discord.SelectOption(label=f"{verb} #{index}", value=str(portrait["id"]),
                                        description=f"seed {portrait['seed']}")
                   for index, portrait in enumerate(portraits[:25], start=1)]
        if options and offered[what]:
            view.add_item(PortraitSelect(what, job.id, options))
    return view
