"""Answering an interaction whatever state it is in, and turning errors into friendly messages."""

from __future__ import annotations

import logging

import discord

from engine.errors import FaceChainError

log = logging.getLogger("bot")
SHOWS_A_MESSAGE = (discord.InteractionResponseType.deferred_channel_message,
                   discord.InteractionResponseType.message_update)
INTERNAL_ERROR = "Something went wrong on our side; it has been logged. Please try again in a moment."


async def reply(interaction: discord.Interaction, content: str | None = None, *, embed: discord.Embed | None = None,
                view: discord.ui.View | None = None, ephemeral: bool = True) -> None:
    """Send an answer: the response if none was sent yet; else it replaces the message this
    interaction already showed (a deferred "thinking…" or a dialog it updated), or follows up."""
    extra = {"view": view} if view is not None else {}
    if not interaction.response.is_done():
        await interaction.response.send_message(content, embed=embed, ephemeral=ephemeral, **extra)
    elif interaction.response.type in SHOWS_A_MESSAGE:
        await interaction.edit_original_response(content=content, embed=embed, **extra)
    else:
        await interaction.followup.send(content, embed=embed, ephemeral=ephemeral, wait=True, **extra)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """A FaceChainError's one line goes to the member; anything else to the log, with a plain apology."""
    if isinstance(error, FaceChainError):
        text = str(error)
        log.info("refused: %s", text, extra={"user": str(interaction.user.id)})
    else:
        text = INTERNAL_ERROR
        log.error("interaction failed", exc_info=error, extra={"user": str(interaction.user.id)})
    try:
        await reply(interaction, f"⚠️ {text}")
    except discord.HTTPException:
        log.warning("could not tell user %s about an error", interaction.user.id)


def not_yours(owner_id: str) -> str:
    return f"These buttons belong to <@{owner_id}>. Use `/facechain portrait` to make your own."
