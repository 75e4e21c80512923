"""`/facechain-admin style-add` and `style-remove`: a server's own styles, from a LoRA file and words.

The file is checked by its header before anything is kept (engine.generation.guild_styles); the
new style is in that server's autocomplete at once, and only there.
"""

from __future__ import annotations

import asyncio
import shutil

import discord
from discord import app_commands

from bot.admin_commands import admin, require_manage_guild
from bot.downloads import not_safetensors
from bot.inputs import save_attachment
from bot.replies import reply
from bot.views import client
from engine.errors import FaceChainError
from engine.generation.guild_styles import MAX_GUILD_LORA_MB, add_guild_style, remove_guild_style
from engine.store.community import allow_style
from engine.store.moderation import audit


async def guild_style_choices(interaction: discord.Interaction, typed: str) -> list[app_commands.Choice[str]]:
    catalogue = client(interaction).backend.styles.catalogue(interaction.guild_id)
    added = [s for s in catalogue.styles.values() if catalogue.added_by_guild(s) and typed.lower() in s.id]
    return [app_commands.Choice(name=f"{s.name} ({s.id})"[:100], value=s.id) for s in added[:25]]


@admin.command(name="style-add", description="Add a style for this server: a style LoRA (.safetensors) and words")
@app_commands.describe(style_id="Its id: lowercase letters, digits, - or _", lora="The style LoRA, a .safetensors file "
                       "made for this bot's image model", prompt="Words that describe the look",
                       weight="How strongly the LoRA applies (default 0.35)", negative="Words the style avoids",
                       family="Its kind: photo, illustration, painting, render3d, pixel or monochrome-photo")
async def style_add(interaction: discord.Interaction, style_id: app_commands.Range[str, 1, 40],
                    lora: discord.Attachment, prompt: app_commands.Range[str, 3, 600],
                    weight: app_commands.Range[float, 0.05, 1.5] = 0.35,
                    negative: app_commands.Range[str, 1, 600] = "", family: str = "photo") -> None:
    require_manage_guild(interaction)
    if not lora.filename.lower().endswith(".safetensors"):
        raise FaceChainError("Attach the style LoRA as a .safetensors file: other formats can carry code, and the "
                             "bot never loads them.")
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = client(interaction)
    upload = await save_attachment(bot, str(interaction.user.id), lora, "That file", MAX_GUILD_LORA_MB,
                                   "style.safetensors", refuse=not_safetensors)
    try:
        # Files only, up to 256 MB: off the store thread every slash command waits behind.
        style = await asyncio.to_thread(add_guild_style, bot.settings, str(interaction.guild_id), style_id, upload,
                                        prompt, weight, negative, family.strip().lower())
    finally:
        shutil.rmtree(upload.parent, ignore_errors=True)  # kept only as the style's own copy
    bot.backend.styles.forget(interaction.guild_id)
    await bot.backend.run(audit, bot.backend.store, str(interaction.guild_id), "style-add", str(interaction.user.id),
                          None, style.id)
    listed = await bot.backend.run(allow_style, bot.backend.store, str(interaction.guild_id), style.id)
    joined = " (it joined this server's allowed styles)" if listed else ""
    await reply(interaction, f"Added **{style.name}** (`{style.id}`) for this server: members can pick it in "
                             f"`/facechain portrait` now{joined}. `/facechain-admin style-remove` takes it away.")


@admin.command(name="style-remove", description="Remove a style this server added")
@app_commands.describe(style_id="One of the styles added with /facechain-admin style-add")
@app_commands.autocomplete(style_id=guild_style_choices)
async def style_remove(interaction: discord.Interaction, style_id: str) -> None:
    require_manage_guild(interaction)
    bot = client(interaction)
    style = await asyncio.to_thread(remove_guild_style, bot.settings, str(interaction.guild_id), style_id)
    bot.backend.styles.forget(interaction.guild_id)
    await bot.backend.run(audit, bot.backend.store, str(interaction.guild_id), "style-remove",
                          str(interaction.user.id), None, style.id)
    await reply(interaction, f"Removed **{style.name}** (`{style.id}`): it is no longer offered on this server.")
