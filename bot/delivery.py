"""Live progress and results of queued jobs.

Every second the bot looks at the jobs members are waiting on (`queue.awaiting_delivery()`):
a running one updates the message that asked for it (at most one edit per 2 s per message); a
finished one is delivered and marked delivered. The database, not memory, says what is owed, so
after a restart the results still arrive. A message can only be edited through its interaction
for 15 minutes: after that, or if the edit fails, the result goes to the channel with a mention,
or by DM when the channel is gone or the request was private.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from bot.components import face_choices, face_pairs, portrait_actions, swap_actions, together_actions
from bot.messages import (
    enroll_card,
    job_title,
    portrait_lines,
    progress_line,
    swap_lines,
    thumbnail_grid,
    together_lines,
    with_training_line,
)
from engine.jobs.queue import Job, QueuePosition
from engine.store.community import record_result_message

if TYPE_CHECKING:
    from bot.client import FaceChainBot

log = logging.getLogger("bot")
TOKEN_SECONDS = 14 * 60  # interaction tokens last 15 minutes; keep a margin
# How often the bot looks for finished jobs and due progress edits (of the jobs it shows).
TICK_SECONDS = 0.5
EDIT_EVERY_SECONDS = 2.0
# A delivery that fails (Discord down, DMs closed) is retried with doubling waits, up to ~6 hours.
RETRY_FIRST_SECONDS = 2.0
RETRY_MAX_SECONDS = 1800.0
MAX_DELIVERY_ATTEMPTS = 20
MENTION_USERS = discord.AllowedMentions(everyone=False, roles=False, users=True)


@dataclass
class Watch:
    """A message a member is looking at, which shows a job's progress."""

    interaction: discord.Interaction
    received: float  # time.monotonic() when the interaction arrived
    card: discord.Embed | None = None  # an enroll card, whose "Face model" line shows a training
    last_edit: float = 0.0
    last_line: str = ""

    def usable(self) -> bool:
        return time.monotonic() - self.received < TOKEN_SECONDS


@dataclass
class Outgoing:
    """A message to send when no interaction can show it; files are re-opened for each try."""

    content: str | None = None
    embed: discord.Embed | None = None
    paths: list[tuple[Path, str]] | None = None  # (file, name shown)
    data_files: list[tuple[bytes, str]] | None = None
    view: discord.ui.View | None = None

    def files(self) -> list[discord.File]:
        files = [discord.File(path, name) for path, name in self.paths or []]
        return files + [discord.File(io.BytesIO(data), name) for data, name in self.data_files or []]

    def kwargs(self) -> dict:
        extra = {"view": self.view} if self.view is not None else {}
        return {"content": self.content, "embed": self.embed, "files": self.files(), **extra}


class Deliveries:
    def __init__(self, bot: FaceChainBot) -> None:
        self.bot = bot
        self.watches: dict[int, Watch] = {}
        self._busy: set[int] = set()
        self._failures: Counter[int] = Counter()
        self._retry_at: dict[int, float] = {}
        self._tasks: set[asyncio.Task] = set()

    async def follow(self, job: Job, interaction: discord.Interaction, heading: str) -> None:
        """Show where a just-queued job stands on the interaction's message and keep it updated.
        If the message cannot be edited, the result will come by channel or DM instead.

        The job is held back from delivery meanwhile: a job that finishes at once is then delivered
        onto this message after the "queued" line, which the outcome replaces, never before it."""
        self._busy.add(job.id)
        try:
            line = progress_line(job, await self.bot.backend.run(self.bot.backend.queue.position, job.id))
            try:
                await interaction.edit_original_response(content=f"⏳ {heading}: {line}", embed=None, view=None)
            except discord.HTTPException as error:
                log.info("could not show job %s as queued: %s", job.id, error, extra={"job": job.id})
                return
            self.watch(job.id, interaction)
        finally:
            self._busy.discard(job.id)

    def watch(self, job_id: int, interaction: discord.Interaction, card: discord.Embed | None = None,
              received: float | None = None) -> None:
        self.watches[job_id] = Watch(interaction, received or time.monotonic(), card, last_edit=time.monotonic())

    async def run_forever(self, every: float = TICK_SECONDS) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - the loop must survive anything and try again
                log.exception("delivery tick failed")
            await asyncio.sleep(every)

    async def tick(self) -> None:
        backend = self.bot.backend
        due: list[tuple[Job, Watch]] = []
        awaiting = await backend.run(backend.queue.awaiting_delivery, list(self.watches))
        for gone in self.watches.keys() - {job.id for job in awaiting} - self._busy:  # its member was forgotten
            self.watches.pop(gone)
        for job in awaiting:
            if job.id in self._busy:
                continue
            if job.finished:
                if time.monotonic() >= self._retry_at.get(job.id, 0.0):
                    self._start(job, self._deliver(job))
            elif (watch := self.watches.get(job.id)) and time.monotonic() - watch.last_edit >= EDIT_EVERY_SECONDS:
                due.append((job, watch))
        if due:  # every watched job's place from one pass over the queue
            positions = await backend.run(backend.queue.positions, [job.id for job, _ in due])
            for job, watch in due:
                self._start(job, self._show_progress(job, watch, positions.get(job.id)))

    def _start(self, job: Job, work) -> None:
        self._busy.add(job.id)
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(lambda done: (self._tasks.discard(done), self._busy.discard(job.id)))

    # --- progress --------------------------------------------------------------------------------

    async def _show_progress(self, job: Job, watch: Watch, position: QueuePosition | None) -> None:
        line = progress_line(job, position)
        watch.last_edit = time.monotonic()
        if line == watch.last_line:
            return
        watch.last_line = line
        if not watch.usable():
            self.watches.pop(job.id, None)
            return
        try:
            if watch.card is not None:
                card = with_training_line(watch.card, f"Training: {line}")
                await watch.interaction.edit_original_response(embed=card)
            else:
                await watch.interaction.edit_original_response(content=f"⏳ {job_title(job).capitalize()}: {line}")
        except discord.HTTPException as error:  # token expired or message deleted: deliver by channel later
            log.info("progress edit failed for job %s: %s", job.id, error)
            self.watches.pop(job.id, None)

    # --- results ---------------------------------------------------------------------------------

    async def _deliver(self, job: Job) -> None:
        watch = self.watches.pop(job.id, None)
        if watch is not None and not watch.usable():
            watch = None
        handlers = {"enroll": self._enroll_done, "train": self._train_done, "generate": self._portraits_done,
                    "swap": self._swap_done, "redraw": self._swap_done, "teaser": self._portraits_done, "upscale": self._portraits_done,
                    "together": self._together_done}
        try:
            if job.state == "cancelled":
                await self._cancelled(job, watch)
            else:
                await handlers[job.kind](job, watch)
        except Exception as error:  # noqa: BLE001 - retried later; a bug is logged with its traceback
            failures = self._failures[job.id] = self._failures[job.id] + 1
            if failures < MAX_DELIVERY_ATTEMPTS:
                wait = min(RETRY_FIRST_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
                self._retry_at[job.id] = time.monotonic() + wait
                if isinstance(error, discord.HTTPException):
                    log.warning("delivering job %s failed (%s); retrying in %.0f s", job.id, error, wait,
                                extra={"job": job.id})
                else:
                    log.exception("delivering job %s failed; retrying in %.0f s", job.id, wait, extra={"job": job.id})
                return
            log.error("giving up delivering job %s after %s attempts", job.id, failures, extra={"job": job.id})
        self._failures.pop(job.id, None)
        self._retry_at.pop(job.id, None)
        await self.bot.backend.run(self.bot.backend.queue.mark_delivered, job.id)
        log.info("delivered job %s (%s, %s)", job.id, job.kind, job.state, extra={"job": job.id, "user": job.user_id})

    async def _cancelled(self, job: Job, watch: Watch | None) -> None:
        if watch is not None:
            await self._edit(watch, Outgoing(content=f"✖️ Cancelled: {job_title(job)}."))

    async def _enroll_done(self, job: Job, watch: Watch | None) -> None:
        if job.state == "failed":
            await self._to_owner(job, watch, Outgoing(content=f"⚠️ <@{job.user_id}> checking your photos failed: "
                                                              f"{job.error}"), private=True)
            return
        result = job.result or {}
        train_id = result.get("train_job_id")
        training = result.get("train_error")
        if train_id:
            train_job = await self.bot.backend.run(self.bot.backend.queue.get, train_id)
            position = await self.bot.backend.run(self.bot.backend.queue.position, train_id)
            training = f"Training {progress_line(train_job, position)}." if train_job else None
        card = enroll_card(result, job.params.get("refused", []), training)
        selfies = await self.bot.backend.run(self.bot.backend.store.accepted_selfies, job.user_id)
        outgoing = Outgoing(embed=card)
        if selfies:
            grid = await asyncio.to_thread(thumbnail_grid, [s.path for s in selfies[:10]])
            card.set_image(url="attachment://enrolled.jpg")
            outgoing.data_files = [(grid, "enrolled.jpg")]
        shown = await self._to_owner(job, watch, outgoing, private=True)
        if train_id and shown is not None:
            self.watch(train_id, shown.interaction, card=card, received=shown.received)

    async def _train_done(self, job: Job, watch: Watch | None) -> None:
        if job.state == "done":
            line = f"✅ Ready (version {job.result['version']})."
            ping = (f"<@{job.user_id}> your face model is ready! Try `/facechain portrait` "
                    "(pick a style from the list).")
        else:
            line = f"⚠️ Training failed: {job.error}"
            ping = f"<@{job.user_id}> training your face model failed: {job.error}"
        if watch is not None and watch.card is not None:
            try:
                await watch.interaction.edit_original_response(embed=with_training_line(watch.card, line))
            except discord.HTTPException as error:
                log.info("could not update the enroll card of job %s: %s", job.id, error)
        await self._send_fallback(job, Outgoing(content=ping), private=False)  # a new message, so it pings

    async def _portraits_done(self, job: Job, watch: Watch | None) -> None:
        private = bool(job.params.get("private"))
        if job.state == "failed" and job.kind == "teaser":  # a bonus: its failure is not the member's news
            log.info("preview portraits of job %s failed: %s", job.id, job.error, extra={"job": job.id})
            return
        if job.state == "failed":
            await self._to_owner(job, watch, Outgoing(content=f"⚠️ <@{job.user_id}> your {job_title(job)} failed: "
                                                              f"{job.error}"), private=private)
            return
        portraits = await self.bot.backend.run(self.bot.backend.store.job_portraits, job.id)
        if not portraits:
            if (job.result or {}).get("held_back"):  # else they were deleted meanwhile (e.g. /facechain forget)
                await self._to_owner(job, watch, Outgoing(content=f"<@{job.user_id}> {job.result['notice']}"),
                                     private=private)
            return
        style = self.bot.backend.styles.catalogue(job.guild_id).get(job.params.get("style", ""))
        content = portrait_lines(job.user_id, style.name if style else job.params.get("style", "?"), portraits,
                                 (job.result or {}).get("notice"), job.params.get("prompt") or "", self._pose_name(job))
        store = self.bot.backend.store
        actions = swap_actions(job, portraits) if job.kind == "teaser" else portrait_actions(job, portraits)
        outgoing = Outgoing(content=content, view=actions,
                            paths=[(store.absolute(p["path"]), f"portrait-{i}.png")
                                   for i, p in enumerate(portraits, start=1)])
        await self._to_owner(job, watch, outgoing, private=private)

    def _pose_name(self, job: Job) -> str | None:
        """The pose the portraits were drawn in, for people: a preset's name, or "your photo"."""
        result = job.result or {}
        if result.get("pose_points"):
            return result["pose_points"]["name"]
        preset = self.bot.backend.poses.get(result.get("pose") or job.params.get("pose") or "")
        return preset.name if preset else job.params.get("pose")

    async def _swap_done(self, job: Job, watch: Watch | None) -> None:
        private, result = bool(job.params.get("private")), job.result or {}
        if job.state == "failed":
            await self._to_owner(job, watch, Outgoing(content=f"⚠️ <@{job.user_id}> {job.error}"), private=private)
            return
        store = self.bot.backend.store
        portraits = await self._photo_pictures(job, watch, private, "which one becomes you?", face_choices)
        if not portraits:
            return
        await self._to_owner(job, watch, Outgoing(
            content=swap_lines(job.user_id, result, portraits),
            paths=[(store.absolute(p["path"]), "swap.png" if len(portraits) == 1 else f"swap-{i}.png")
                   for i, p in enumerate(portraits, start=1)], view=swap_actions(job, portraits)), private=private)

    async def _photo_pictures(self, job: Job, watch: Watch | None, private: bool, question: str,
                              choices: Callable[[Job, int], discord.ui.View]) -> list[dict]:
        """A job on a member's photo: its pictures; or, having answered already, nothing: the question of
        which face is whose (with the numbered preview), or the notice when no picture is left to show."""
        result, store = job.result or {}, self.bot.backend.store
        if "choose" in result:
            await self._to_owner(job, watch, Outgoing(
                content=f"<@{job.user_id}> this photo shows {result['choose']} faces: {question} (numbered left to "
                        "right)", paths=[(store.absolute(result["preview"]), "faces.jpg")],
                view=choices(job, result["choose"])), private=private)
            return []
        portraits = await self.bot.backend.run(store.job_portraits, job.id)
        if not portraits:
            notice = result.get("notice") or "Nothing to show."
            await self._to_owner(job, watch, Outgoing(content=f"<@{job.user_id}> {notice}"), private=private)
        return portraits

    async def _together_done(self, job: Job, watch: Watch | None) -> None:
        """To the member who asked as any result; the other member gets the pictures too: a DM when private,
        else a mention in the channel."""
        private, result, partner = bool(job.params.get("private")), job.result or {}, job.params.get("with", "")
        if job.state == "failed":
            await self._to_owner(job, watch, Outgoing(content=f"⚠️ <@{job.user_id}> your picture with <@{partner}> "
                                                              f"failed: {job.error}"), private=private)
            return
        store = self.bot.backend.store
        portraits = await self._photo_pictures(job, watch, private, f"which is you, and which is <@{partner}>?",
                                               face_pairs)
        if not portraits:
            return
        style = self.bot.backend.styles.catalogue(job.guild_id).get(job.params.get("style") or "")
        outgoing = Outgoing(content=together_lines(job.user_id, partner, result, portraits, style.name if style else None),
                            paths=[(store.absolute(p["path"]), f"together-{i}.png") for i, p in enumerate(portraits, 1)],
                            view=together_actions(job, portraits))
        shown = await self._to_owner(job, watch, outgoing, private=private)
        try:
            copy = None
            if private or not job.guild_id:  # asked in a DM: the partner's copy goes to theirs
                copy = await (await self.bot.fetch_user(int(partner))).send(**outgoing.kwargs())
            elif shown is not None and job.channel_id:  # an edited message pings nobody
                copy = await self.bot.get_partial_messageable(int(job.channel_id)).send(
                    f"<@{partner}> you're in <@{job.user_id}>'s new picture, just above.",
                    allowed_mentions=discord.AllowedMentions(users=[discord.Object(int(partner))]))
            if copy is not None:  # Delete for both edits this one too
                await self._remember(job, copy)
        except discord.HTTPException as error:  # the asker has it; the partner's copy is not retried
            log.info("could not send job %s's picture to %s: %s", job.id, partner, error, extra={"job": job.id})

    # --- sending -----------------------------------------------------------------------------------

    async def _to_owner(self, job: Job, watch: Watch | None, outgoing: Outgoing, private: bool) -> Watch | None:
        """Edit the member's message if we still can (returns the watch), else send it another way. A message
        with pictures is remembered, so that deleting them reaches it."""
        shown = None
        if watch is not None:
            try:
                sent = await self._edit(watch, outgoing)
                shown = watch
            except discord.HTTPException as error:
                log.info("editing the message of job %s failed (%s); sending it instead", job.id, error)
        if shown is None:
            sent = await self._send_fallback(job, outgoing, private)
        if outgoing.paths:
            await self._remember(job, sent)
        return shown

    async def _remember(self, job: Job, message: discord.Message | None) -> None:
        if isinstance(message, discord.Message):
            await self.bot.backend.run(record_result_message, self.bot.backend.store, job.id, str(message.channel.id),
                                       str(message.id))

    async def _edit(self, watch: Watch, outgoing: Outgoing) -> discord.Message:
        extra = {"view": outgoing.view} if outgoing.view is not None else {"view": None}
        return await watch.interaction.edit_original_response(content=outgoing.content, embed=outgoing.embed,
                                                              attachments=outgoing.files(), **extra)

    async def _send_fallback(self, job: Job, outgoing: Outgoing, private: bool) -> discord.Message:
        """Private results go by DM; others to the channel, or by DM if the channel is gone."""
        if not private and job.channel_id:
            try:
                channel = self.bot.get_partial_messageable(int(job.channel_id))
                return await channel.send(**outgoing.kwargs(), allowed_mentions=MENTION_USERS)
            except (discord.NotFound, discord.Forbidden) as error:
                log.info("channel %s unusable for job %s (%s); sending a DM", job.channel_id, job.id, error)
        user = await self.bot.fetch_user(int(job.user_id))
        return await user.send(**outgoing.kwargs())
