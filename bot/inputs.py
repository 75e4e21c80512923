"""What several commands take from members: a style or a pose typed with autocomplete, and a photo
downloaded for the worker."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.downloads import DownloadRefused, allowed_sources, download, not_a_photo, upload_dir
from bot.views import client
from engine.errors import FaceChainError

if TYPE_CHECKING:
    from bot.client import FaceChainBot


async def style_choices(interaction: discord.Interaction, typed: str) -> list[app_commands.Choice[str]]:
    bot = client(interaction)
    guild = await bot.backend.run(bot.backend.guild, interaction.guild_id)
    found = bot.backend.styles.catalogue(interaction.guild_id).search(typed, limit=100)
    styles = [s for s in found if not guild or guild.allows_style(s.id)]
    return [app_commands.Choice(name=f"{s.name} — {s.description}"[:100], value=s.id) for s in styles[:25]]


async def pose_choices(interaction: discord.Interaction, typed: str) -> list[app_commands.Choice[str]]:
    return _pose_choices(interaction, typed, people=1)


async def two_person_pose_choices(interaction: discord.Interaction, typed: str) -> list[app_commands.Choice[str]]:
    return _pose_choices(interaction, typed, people=2)


def _pose_choices(interaction: discord.Interaction, typed: str, people: int) -> list[app_commands.Choice[str]]:
    typed = typed.strip().lower()
    poses = [p for p in client(interaction).backend.poses.poses.values() if len(p.people) == people]
    found = [p for p in poses if typed in f"{p.id} {p.name} {p.description}".lower()]
    framing = {"upper": "upper body", "full": "full body"}
    return [app_commands.Choice(name=f"{p.name} ({framing[p.framing]}) — {p.description}"[:100], value=p.id)
            for p in found[:25]]


async def save_photo(bot: FaceChainBot, user_id: str, photo: discord.Attachment, what: str) -> Path:
    """The attachment downloaded into a fresh folder under <data>/tmp/ (the worker reads it from there);
    FaceChainError naming `what` when it can't be had."""
    return await save_attachment(bot, user_id, photo, what, bot.settings.max_upload_mb, "photo.upload")


async def save_attachment(bot: FaceChainBot, user_id: str, attachment: discord.Attachment, what: str,
                          max_mb: float, name: str, refuse: Callable[[bytes], str | None] = not_a_photo) -> Path:
    """`attachment` downloaded as `name` into a fresh folder under <data>/tmp/ (the caller removes the
    folder once it is read); FaceChainError naming `what` when it can't be had (`refuse`: what is wrong
    with its first bytes)."""
    folder = upload_dir(bot.settings.data_dir, user_id)
    destination = folder / name
    max_bytes = int(max_mb * 2**20)
    try:
        if attachment.size > max_bytes:
            raise DownloadRefused(f"it is larger than {max_mb:g} MB")
        sources = allowed_sources(bot.settings.attachment_hosts)
        await download(bot.http_session, attachment.url, destination, max_bytes, sources, refuse)
    except DownloadRefused as reason:
        shutil.rmtree(folder, ignore_errors=True)
        raise FaceChainError(f"{what} could not be used: {reason}.") from None
    return destination
