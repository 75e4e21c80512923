"""/facechain together: a picture of two members, each looking like themselves, with the other's
consent first.

The member asked decides in /facechain me: `ask` (the default) sends them a question by DM, with a small
copy of the photo it is about, that only they can answer (Allow, Decline, or Decline and never ask again),
which expires after a day; `always` draws at once. The member who asked only ever hears "not allowed" or
"no answer", and the same way whether the other chose `never`, refused them, is not enrolled or is barred:
such a request asks no one and is declined after a person's kind of wait.
Requests live in the database (`engine/store/together.py`), so answers and expiries survive a restart;
only the asker's "thinking…" message is held in memory, to show the picture on it when it can.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.backend import TogetherOrder
from bot.delivery import MENTION_USERS, Watch
from bot.inputs import save_photo, style_choices, two_person_pose_choices
from bot.messages import small_copy
from bot.views import age_restricted, client, guarded
from engine.errors import FaceChainError
from engine.store.together import (
    ANSWER_HOURS,
    NO_ANSWER,
    NOT_ALLOWED,
    TogetherRequest,
    answer,
    expire_due,
    get_request,
    set_request_message,
)

if TYPE_CHECKING:
    from bot.client import FaceChainBot

log = logging.getLogger("bot")
EXPIRY_CHECK_SECONDS = 2.0


@app_commands.command(name="together", description="A picture of you with another member, each of you looking like "
                                                    "yourself (they allow it first)")
@app_commands.describe(member="Who to be in the picture with", style="The scene's style (without a photo)",
                       pose="How the two of you stand (without a photo)",
                       photo="Or a photo of two or more people: your faces go on two of them",
                       face_a="On the photo: which face becomes you (numbered left to right)",
                       face_b="On the photo: which face becomes them", private="Only the two of you see the picture")
@app_commands.autocomplete(style=style_choices, pose=two_person_pose_choices)
async def together(interaction: discord.Interaction, member: discord.User, style: str | None = None,
                   pose: str | None = None, photo: discord.Attachment | None = None,
                   face_a: app_commands.Range[int, 1, 20] | None = None,
                   face_b: app_commands.Range[int, 1, 20] | None = None, private: bool = False) -> None:
    await interaction.response.defer(ephemeral=private, thinking=True)
    bot = client(interaction)
    user_id = str(interaction.user.id)
    if (face_a is None) != (face_b is None):
        raise FaceChainError("Choose both faces (face_a for you, face_b for them), or neither.")
    order = TogetherOrder(str(member.id), style.strip()[:40] if style else None,
                          pose.strip().lower()[:40] if pose else None, [face_a, face_b] if face_a else None,
                          private, age_restricted(interaction.channel))
    await bot.backend.run(bot.backend.check_together, user_id, interaction.guild_id, order, photo is not None)
    if photo is not None:  # a request that will be refused downloads nothing
        order.upload, order.name = str(await save_photo(bot, user_id, photo, "That photo")), photo.filename[:100]
    try:
        asked, job = await bot.backend.run(bot.backend.ask_together, user_id, interaction.guild_id,
                                           interaction.channel_id, order)
    except FaceChainError:
        forget_upload(order.upload)
        raise
    if asked.outcome == "go":
        await bot.deliveries.follow(job, interaction, f"You and <@{order.partner_id}>")
    else:
        await bot.together.ask(interaction, asked.request)


def forget_upload(upload: str | None) -> None:
    if upload:
        shutil.rmtree(Path(upload).parent, ignore_errors=True)


def request_words(request: TogetherRequest) -> str:
    params = request.params
    if params.get("upload"):
        return "on a photo they brought"
    words = f"in the {params.get('style') or 'polaroid'} style"
    return words + (f", posed {params['pose']}" if params.get("pose") else "")


class TogetherAsks:
    """The questions to members asked for a picture together, and the answers back to those who asked."""

    def __init__(self, bot: FaceChainBot) -> None:
        self.bot = bot
        self.waiting: dict[int, Watch] = {}  # request -> the asker's message, while it can be edited

    async def ask(self, interaction: discord.Interaction, request: TogetherRequest) -> None:
        """Send the partner their Allow / Decline question (by DM, with a small copy of the photo it is about);
        tell the asker it is waiting. A silent request (the partner can't be drawn, or refuses) asks no one, and
        the asker sees the same."""
        expires = int((datetime.fromisoformat(request.created_at) + timedelta(hours=ANSWER_HOURS)).timestamp())
        if not request.silent and not await self._send_question(request, expires):
            await self.bot.backend.run(answer, self.bot.backend.store, request.id, request.partner_id, allow=False)
            forget_upload(request.params.get("upload"))
            await interaction.edit_original_response(content=f"I could not reach <@{request.partner_id}> to ask "
                                                             "them: try again in a channel they can see.")
            return
        self.waiting[request.id] = Watch(interaction, time.monotonic())
        await interaction.edit_original_response(content=f"⏳ Asked <@{request.partner_id}>: the picture is drawn once "
                                                         f"they allow it (the question expires <t:{expires}:R>).",
                                                 allowed_mentions=discord.AllowedMentions.none())

    async def _send_question(self, request: TogetherRequest, expires: int) -> bool:
        """The question goes by DM: nobody else sees it, or the photo it is about. With the partner's DMs closed, it
        goes to the channel, the photo behind a button only they can press. False when neither works."""
        content = (f"<@{request.partner_id}>, <@{request.requester_id}> would like a picture of the two of you "
                   f"together ({request_words(request)}), each looking like yourselves. Only you can answer; "
                   f"the question expires <t:{expires}:R>. You can change who may ask in `/facechain me`.")
        upload = request.params.get("upload")
        photo = await asyncio.to_thread(small_copy, Path(upload)) if upload and Path(upload).is_file() else None
        try:
            user = await self.bot.fetch_user(int(request.partner_id))
            files = [discord.File(io.BytesIO(photo), "photo.jpg")] if photo else []
            sent = await user.send(content + (" This is the photo:" if photo else ""), files=files,
                                   view=answer_buttons(request.id))
        except discord.HTTPException as error:
            if request.params.get("private") or not request.channel_id:
                log.info("could not ask %s for request %s: %s", request.partner_id, request.id, error)
                return False
            try:
                channel = self.bot.get_partial_messageable(int(request.channel_id))
                sent = await channel.send(content, view=answer_buttons(request.id, photo_button=bool(photo)),
                                          allowed_mentions=MENTION_USERS)
            except discord.HTTPException as error:
                log.info("could not ask %s for request %s: %s", request.partner_id, request.id, error)
                return False
        await self.bot.backend.run(set_request_message, self.bot.backend.store, request.id, str(sent.channel.id),
                                   str(sent.id))
        return True

    async def answered(self, interaction: discord.Interaction, request_id: int, choice: str) -> None:
        backend = self.bot.backend
        request = await backend.run(answer, backend.store, request_id, str(interaction.user.id), choice == "allow",
                                    refuse_for_good=choice == "refuse")
        if request.state != "allowed":
            forget_upload(request.params.get("upload"))
            await interaction.response.edit_message(content="Answered: nothing will be drawn.", view=None)
            await interaction.followup.send("You declined." + (f" <@{request.requester_id}> can't ask you again."
                                                               if choice == "refuse" else "")
                                            + " They are told only that it is not allowed.", ephemeral=True)
            await self.tell_asker(request, f"<@{request.requester_id}> your picture with <@{request.partner_id}>: "
                                           f"{NOT_ALLOWED}.")
            return
        try:
            job = await backend.run(backend.start_together, request)
        except FaceChainError as error:  # the asker's limits filled up meanwhile
            forget_upload(request.params.get("upload"))
            await interaction.response.edit_message(content="Answered: it can't be drawn right now.", view=None)
            await self.tell_asker(request, f"<@{request.requester_id}> your picture with <@{request.partner_id}> "
                                           f"was allowed but can't be drawn: {error}")
            return
        await interaction.response.edit_message(content=f"✅ You allowed a picture with <@{request.requester_id}>: it "
                                                        "is being drawn, and you'll both get it.", view=None)
        shown = self._asker_message(request.id)
        if shown is not None:
            await self.bot.deliveries.follow(job, shown, f"You and <@{request.partner_id}>")

    def _asker_message(self, request_id: int) -> discord.Interaction | None:
        watch = self.waiting.pop(request_id, None)
        return watch.interaction if watch is not None and watch.usable() else None

    async def tell_asker(self, request: TogetherRequest, text: str) -> None:
        """On the asker's waiting message while it can be edited; else in the channel, or by DM when private."""
        shown = self._asker_message(request.id)
        try:
            if shown is not None:
                await shown.edit_original_response(content=text, allowed_mentions=discord.AllowedMentions.none())
                return
        except discord.HTTPException:
            pass
        try:
            if request.channel_id and not request.params.get("private"):
                channel = self.bot.get_partial_messageable(int(request.channel_id))
                await channel.send(text, allowed_mentions=discord.AllowedMentions(users=[discord.Object(
                    int(request.requester_id))]))
            else:
                await (await self.bot.fetch_user(int(request.requester_id))).send(text)
        except discord.HTTPException as error:
            log.info("could not tell %s about request %s: %s", request.requester_id, request.id, error)

    async def expire_forever(self, every: float = EXPIRY_CHECK_SECONDS) -> None:
        while True:
            try:
                for request in await self.bot.backend.run(expire_due, self.bot.backend.store):
                    await self._expired(request)
            except Exception:  # noqa: BLE001 - the loop must survive anything and try again
                log.exception("expiring requests failed")
            await asyncio.sleep(every)

    async def _expired(self, request: TogetherRequest) -> None:
        forget_upload(request.params.get("upload"))
        if request.silent:  # answered for the partner, who was never asked: told as a decline is
            await self.tell_asker(request, f"<@{request.requester_id}> your picture with <@{request.partner_id}>: "
                                           f"{NOT_ALLOWED}.")
            return
        if request.message_channel_id and request.message_id:
            try:
                message = self.bot.get_partial_messageable(int(request.message_channel_id)).get_partial_message(
                    int(request.message_id))
                await message.edit(content="This question expired: nothing was drawn.", view=None)
            except discord.HTTPException as error:
                log.info("could not close request %s: %s", request.id, error)
        await self.tell_asker(request, f"<@{request.requester_id}> your picture with <@{request.partner_id}>: "
                                       f"{NO_ANSWER}.")


class TogetherAnswer(discord.ui.DynamicItem[discord.ui.Button],
                     template=r"fc:together:(?P<choice>allow|decline|refuse|photo):(?P<request>[0-9]+)"):
    """Allow, Decline, or Decline and never ask again, on a request for a picture together, and See the photo
    where the question had to be asked in a channel: only the member asked may press them."""

    LOOK = {"allow": ("Allow", discord.ButtonStyle.success), "decline": ("Decline", discord.ButtonStyle.secondary),
            "refuse": ("Decline, and don't let them ask again", discord.ButtonStyle.danger),
            "photo": ("See the photo", discord.ButtonStyle.secondary)}

    def __init__(self, choice: str, request_id: int) -> None:
        label, style = self.LOOK[choice]
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=f"fc:together:{choice}:{request_id}"))
        self.choice, self.request_id = choice, request_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(match["choice"], int(match["request"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def action() -> None:
            bot = client(interaction)
            request = await bot.backend.run(get_request, bot.backend.store, self.request_id)
            if request is None:
                raise FaceChainError("This question no longer exists.")
            if request.partner_id != str(interaction.user.id):
                raise FaceChainError(f"Only <@{request.partner_id}> can answer this.")
            if self.choice == "photo":
                await show_photo(interaction, request)
                return
            await bot.together.answered(interaction, self.request_id, self.choice)
        await guarded(interaction, action)


async def show_photo(interaction: discord.Interaction, request: TogetherRequest) -> None:
    upload = request.params.get("upload")
    if request.state != "asked" or not upload or not Path(upload).is_file():
        raise FaceChainError("That photo is no longer here: the question was answered or has ended.")
    photo = await asyncio.to_thread(small_copy, Path(upload))
    await interaction.response.send_message("The photo you are asked about (only you see this):",
                                            file=discord.File(io.BytesIO(photo), "photo.jpg"), ephemeral=True)


def answer_buttons(request_id: int, photo_button: bool = False) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for choice in ("allow", "decline", "refuse") + (("photo",) if photo_button else ()):
        view.add_item(TogetherAnswer(choice, request_id))
    return view
