"""The bot's side of the engine: the store and the queue, used from one thread off the event loop.

SQLite calls are quick, but a write can wait for the lock while the worker commits; on the event
loop that would stall every member's interaction. So every call runs on one dedicated thread
(which also keeps the one connection single-threaded) and the loop awaits it.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from engine.config import Settings
from engine.errors import FaceChainError
from engine.generation.poses import load_poses
from engine.generation.requests import check_pose, check_prompt_words, check_request
from engine.jobs.queue import Job, QueuePosition, SqliteJobQueue
from engine.store import ForgetReport, Store
from engine.store.community import (
    GuildSettings,
    guild_settings,
    highlight_posts_showing,
    member_result_messages,
    portrait_gallery_posts,
    user_gallery_posts,
)
from engine.store.families import (
    check_draws_scenes,
    instant_portraits_on,
    rebuild_if_needed,
    recorded_family,
    sync_family,
)
from engine.store.members import INSTANT_NOT_READY, INSTANT_OFF, has_instant_face
from engine.store.moderation import check_not_barred, close_reports_of, is_barred
from engine.store.together import DEFAULT_STYLE, Asked, TogetherRequest, ask, set_request_job
from engine.styles import STYLES_DIR, StyleCatalogue, guild_styles_folder, load_styles, owner_styles_folder, style_files

T = TypeVar("T")


@dataclass
class PortraitOrder:
    style: str
    count: int
    seed: int | None
    private: bool
    age_restricted: bool = False  # asked in an age-restricted channel (the NSFW policy may then allow more)
    fast: bool | None = None  # fast mode (LCM-LoRA); None = the bot's default (FACECHAIN_FAST_BY_DEFAULT)
    words: str = ""  # the member's own words for the prompt
    pose: str | None = None  # a preset pose's id (poses/)
    pose_upload: str = ""  # or a pose photo, downloaded under <data>/tmp/
    instant: bool = False  # an instant portrait asked for (quality:instant); before a face model one is given anyway


@dataclass
class TogetherOrder:
    """A picture with another member, as /facechain together asked for it."""

    partner_id: str
    style: str | None = None
    pose: str | None = None
    faces: list[int] | None = None  # on a photo: the asker's face, then the partner's (left to right)
    private: bool = False
    age_restricted: bool = False
    upload: str = ""  # a photo to redraw, downloaded under <data>/tmp/
    name: str = ""

    def params(self) -> dict:
        return {"with": self.partner_id, "style": self.style, "pose": self.pose, "faces": self.faces,
                "private": self.private, "age_restricted": self.age_restricted, "upload": self.upload or None,
                "name": self.name}


class Styles:
    """The style catalogue (a server's: with the styles its admins added), re-read when a style file
    changes (no restart needed).

    It is asked for on the event loop (every autocomplete keystroke), so the folders are looked at
    no more than once every few seconds per server."""

    CHECK_EVERY_SECONDS = 5.0

    def __init__(self, folder: Path | None, owner_folder: Path | None = None,
                 guild_folder: Callable[[str], Path] | None = None) -> None:
        self.folder, self.owner_folder, self.guild_folder = folder, owner_folder, guild_folder
        self._cached: dict[str | None, tuple[float, tuple, StyleCatalogue]] = {}

    def catalogue(self, guild_id: int | str | None = None) -> StyleCatalogue:
        key = str(guild_id) if guild_id and self.guild_folder else None
        checked_at, stamp, catalogue = self._cached.get(key, (float("-inf"), (), None))
        if catalogue is not None and time.monotonic() - checked_at < self.CHECK_EVERY_SECONDS:
            return catalogue
        guild_folder = self.guild_folder(key) if key else None
        now_stamp = self._folder_stamp(guild_folder)
        if catalogue is None or now_stamp != stamp:
            catalogue = load_styles(self.folder, self.owner_folder, guild_folder)
        self._cached[key] = (time.monotonic(), now_stamp, catalogue)
        return catalogue

    def forget(self, guild_id: int | str) -> None:
        """Read a server's styles again at the next ask (one was just added or removed)."""
        self._cached.pop(str(guild_id), None)

    def _folder_stamp(self, guild_folder: Path | None) -> tuple:
        files = [*style_files(self.folder or STYLES_DIR), *style_files(self.owner_folder), *style_files(guild_folder)]
        return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in files))


class Backend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.store = Store(settings.data_dir)
        self.queue = SqliteJobQueue(self.store, settings)
        self.styles = Styles(settings.styles_dir, owner_styles_folder(settings),
                             lambda guild_id: guild_styles_folder(settings, guild_id))
        self.poses = load_poses()  # shipped with the code: read once
        self.started = time.monotonic()
        self.busy_seconds = 0.0  # time the store thread spent in calls: every slash command waits behind it

    async def run(self, function: Callable[..., T], *args, **kwargs) -> T:
        """Run a store/queue function on the store thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._timed, partial(function, *args,
                                                                                                   **kwargs))

    def _timed(self, call: Callable[[], T]) -> T:
        began = time.perf_counter()
        try:
            return call()
        finally:
            self.busy_seconds += time.perf_counter() - began

    def busy_share(self) -> float:
        """The share of the time since start the store thread was busy (1 = every command waits)."""
        return self.busy_seconds / max(1e-9, time.monotonic() - self.started)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.store.close()

    # --- helpers that run on the store thread (call them through `run`) ---------------------------

    def sync_family(self) -> None:
        """Record the base model's family when it is on this machine (the worker records it otherwise)."""
        sync_family(self.store, self.settings, fetch=False)

    def redraws_faces(self, user_id: str) -> bool:
        """Whether the member's face model can redraw their face into a photo (SD1.5's inpainting)."""
        family = recorded_family(self.store)
        return (family is None or family.draws_scenes) and self.store.ready_face_model(user_id) is not None

    def guild(self, guild_id: int | None) -> GuildSettings | None:
        return guild_settings(self.store, str(guild_id)) if guild_id else None

    def record_consent(self, user_id: str) -> None:
        self.store.touch_user(user_id)
        self.store.record_consent(user_id)

    def order_portrait(self, user_id: str, guild_id: int | None, channel_id: int, order: PortraitOrder) -> Job:
        """Check a portrait request and queue it; FaceChainError says what is wrong."""
        rebuilding = rebuild_if_needed(self.store, self.queue, user_id, _text(guild_id), str(channel_id))
        words, has_model = self.check_portrait(user_id, guild_id, order, from_photo=bool(order.pose_upload))
        instant = self.draws_instant(user_id, order, has_model)
        params = {"style": order.style, "count": order.count, "seed": order.seed, "private": order.private,
                  "age_restricted": order.age_restricted, "wait_for_training": not (has_model or instant),
                  "fast": order.fast, "instant": instant,
                  "prompt": words, "pose": order.pose, "pose_upload": order.pose_upload or None,
                  "rebuilding": rebuilding}
        return self.queue.enqueue("generate", user_id, params, guild_id=_text(guild_id), channel_id=str(channel_id))

    def draws_instant(self, user_id: str, order: PortraitOrder, has_model: bool) -> bool:
        """Whether the portraits are instant ones: asked for, or (the mode on) while the face model is not ready
        and the member's face was read. FaceChainError when asked for and not possible."""
        on = instant_portraits_on(self.store, self.settings)
        ready = on and has_instant_face(self.store, user_id)
        if order.instant and not on:
            raise FaceChainError(INSTANT_OFF)
        if order.instant and not ready:
            raise FaceChainError(INSTANT_NOT_READY)
        return order.instant or (ready and not has_model)

    def check_portrait(self, user_id: str, guild_id: int | None, order: PortraitOrder,
                       from_photo: bool = False) -> tuple[str, bool]:
        """Everything that can be wrong with a portrait request before it is queued; returns the member's
        words tidied and whether they have a face model."""
        check_not_barred(self.store, _text(guild_id), user_id)
        settings = self.guild(guild_id)
        if settings and not settings.allows_style(order.style):
            raise FaceChainError(f"The style {order.style!r} is not allowed on this server: "
                                 f"try {', '.join(settings.allowed_styles[:5])}.")
        training = any(j.kind == "train" for j in self.queue.active_jobs(user_id=user_id))
        has_model = self.store.ready_face_model(user_id) is not None
        instant = instant_portraits_on(self.store, self.settings) and has_instant_face(self.store, user_id)
        if not has_model and not training and not instant:
            raise FaceChainError("You have no face model yet: run `/facechain enroll` with 3 to 10 selfies of "
                                 "yourself, then ask again once it is trained.")
        check_request(self.store, self.settings, self.styles.catalogue(guild_id), user_id, order.style, order.count,
                      need_model=has_model)
        words = check_prompt_words(order.words, settings.blocked_words if settings else ())
        if order.pose or from_photo:
            check_draws_scenes(self.store)
        check_pose(self.settings, order.pose, from_photo=from_photo)
        return words, has_model

    def check_together(self, user_id: str, guild_id: int | None, order: TogetherOrder, on_photo: bool) -> None:
        """Everything that can be wrong with a picture together before anyone is asked."""
        if order.partner_id == user_id:
            raise FaceChainError("Choose another member: a picture together is of two people.")
        if on_photo and (order.style or order.pose):
            raise FaceChainError("A photo keeps its own scene: ask with a photo, or with a style and pose, not both.")
        if not on_photo and order.faces:
            raise FaceChainError("face_a and face_b choose faces on a photo: attach the photo too.")
        if not on_photo:
            check_draws_scenes(self.store)
        check_not_barred(self.store, _text(guild_id), user_id)
        if not self._ready_for_together(user_id, on_photo):
            raise FaceChainError("Enroll a few selfies first with `/facechain enroll`: your face comes from them."
                                 if on_photo else "You have no face model yet: `/facechain enroll` starts with a "
                                                  "few selfies.")
        # Whether the partner is enrolled, ready or barred is never said here: they are asked, or answered for
        # in the same words after the same kind of wait (engine/store/together.py).
        if not on_photo:
            style = order.style or DEFAULT_STYLE
            settings = self.guild(guild_id)
            if settings and not settings.allows_style(style):
                raise FaceChainError(f"The style {style!r} is not allowed on this server.")
            if self.styles.catalogue(guild_id).get(style) is None:
                raise FaceChainError(f"There is no style {style!r}: choose one from the list.")
            if not self.settings.pose_controlnet.strip():
                raise FaceChainError("This bot draws two members together only on a photo: attach one of the two "
                                     "of you.")
            check_pose(self.settings, order.pose, people=2)

    def _ready_for_together(self, member: str, on_photo: bool) -> bool:
        return bool(self.store.accepted_selfies(member) if on_photo else self.store.ready_face_model(member))

    def ask_together(self, user_id: str, guild_id: int | None, channel_id: int,
                     order: TogetherOrder) -> tuple[Asked, Job | None]:
        """Ask the partner (their choice in /facechain me decides how); the job when they allow it always. A
        partner who cannot be drawn (not enrolled, not ready, barred here) is answered for, unasked."""
        params = order.params()
        ready = (self._ready_for_together(order.partner_id, bool(order.upload))
                 and not is_barred(self.store, _text(guild_id), order.partner_id))
        asked = ask(self.store, user_id, order.partner_id, params, _text(guild_id), str(channel_id), ready=ready,
                    asks_per_day=self.settings.together_asks_per_day)
        job = None
        if asked.outcome == "go":
            job = self.queue.enqueue("together", user_id, params, guild_id=_text(guild_id), channel_id=str(channel_id))
        return asked, job

    def start_together(self, request: TogetherRequest) -> Job:
        """The partner allowed it: the job, for the member who asked."""
        job = self.queue.enqueue("together", request.requester_id, {**request.params, "request_id": request.id},
                                 guild_id=request.guild_id, channel_id=request.channel_id)
        set_request_job(self.store, request.id, job.id)
        return job

    def reorder(self, job: Job, seed: int | None = None, variation_of: int | None = None) -> Job:
        """The same portrait request again (Re-roll: new seeds; More like #k: variations of its seed)."""
        params = {**job.params, "seed": seed, "variation_of": variation_of, "wait_for_training": False}
        params.pop("low_memory", None)
        if params.pop("pose_upload", None):  # the photo is gone once read: its pose was kept
            params["pose_points"] = (job.result or {}).get("pose_points")
        return self.queue.enqueue("generate", job.user_id, params, guild_id=job.guild_id, channel_id=job.channel_id)

    def status(self, user_id: str) -> dict:
        jobs = self.queue.active_jobs(user_id=user_id)
        positions = self.queue.positions(job.id for job in jobs)
        return {
            "user": self.store.get_user(user_id),
            "photos": len(self.store.accepted_selfies(user_id)),
            "models": self.store.face_models(user_id),
            "jobs": [(job, positions.get(job.id)) for job in jobs],
        }

    def active_with_positions(self, guild_id: str) -> list[tuple[Job, QueuePosition | None]]:
        """A server's queued and running jobs with where each stands, from one pass over the queue."""
        jobs = self.queue.active_jobs(guild_id=guild_id)
        positions = self.queue.positions(job.id for job in jobs)
        return [(job, positions.get(job.id)) for job in jobs]

    def cancel_all(self, user_id: str) -> int:
        """Cancel the user's queued jobs, and other members' pictures with them, and ask running ones to stop;
        returns how many are still running."""
        def theirs() -> list[Job]:
            return self.queue.active_jobs(user_id=user_id) + self.queue.active_pictures_with(user_id)
        for job in theirs():
            if not job.cancel_requested:
                self.queue.cancel(job.id)
        return len(theirs())

    def erase(self, user_id: str) -> tuple[ForgetReport, list[dict], list[dict]]:
        """Delete everything of the user's; returns the report, the posts to take down (gallery posts and weekly
        highlights of their pictures, and of pictures they are in with another member) and the messages that
        showed their pictures, to clear."""
        pictures = [row[0] for row in self.store.db.execute("select id from portraits where user_id = ? or "
                                                            "partner_id = ?", [user_id, user_id])]
        posts = user_gallery_posts(self.store, user_id) + portrait_gallery_posts(self.store,
                                                                                 self.store.pictures_shown_in(user_id))
        posts += highlight_posts_showing(self.store, pictures)
        messages = member_result_messages(self.store, user_id)
        for upload_dir in (self.settings.data_dir / "tmp").glob(f"enroll-{user_id}-*"):
            shutil.rmtree(upload_dir, ignore_errors=True)
        report = self.store.delete_user(user_id)
        close_reports_of(self.store, pictures)
        return report, posts, messages

def _text(snowflake: int | None) -> str | None:
    return None if snowflake is None else str(snowflake)
