"""The slash commands: `/facechain ...` for members and `/facechain-admin ...` for server admins.

Every command answers (or defers) before any slow work, so Discord's 3-second limit holds even
when the queue is busy; the work itself happens in the worker process.
"""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot import gallery, moderation, style_admin, takedown  # noqa: F401 - they add their commands to the admin group
from bot.admin_commands import admin
from bot.backend import PortraitOrder
from bot.components import CancelButton
from bot.downloads import DownloadRefused, allowed_sources, download, upload_dir
from bot.inputs import pose_choices, save_photo, style_choices
from bot.messages import COLOUR, CONSENT_TEXT, SUBJECT_LABELS, help_embed, job_title, progress_line, thumbnail_grid
from bot.replies import report_error
from bot.together import together
from bot.views import TOGETHER_LABELS, ConfirmView, ConsentView, MeView, PagerView, age_restricted, client
from engine.errors import FaceChainError
from engine.generation.previews import shown_preview
from engine.store.members import change_subject, describe_member, remove_photo
from engine.store.moderation import check_not_barred
from engine.store.together import set_together

if TYPE_CHECKING:
    from engine.config import Settings

SUBJECTS = tuple(SUBJECT_LABELS)
MAX_PORTRAITS = 16  # the most FACECHAIN_PORTRAIT_CANDIDATES allows; install() narrows it
DEFAULT_PORTRAITS = 4
FORGET_WAIT_SECONDS = 30  # Discord allows 10 files per message
EVERYWHERE = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True)
FOR_SERVERS = app_commands.AppInstallationType(guild=True, user=False)

facechain = app_commands.Group(name="facechain", description="Portraits that look like you",
                               allowed_contexts=EVERYWHERE, allowed_installs=FOR_SERVERS)
facechain.add_command(together)  # bot/together.py


# --- enroll -------------------------------------------------------------------------------------------

@facechain.command(name="enroll", description="Upload 3-10 selfies so FaceChain can learn your face")
@app_commands.describe(photo1="A clear photo of just you, face visible", subject="Who is in the photos")
@app_commands.choices(subject=[app_commands.Choice(name=s, value=s) for s in SUBJECTS])
async def enroll(
    interaction: discord.Interaction, photo1: discord.Attachment, photo2: discord.Attachment | None = None,
    photo3: discord.Attachment | None = None, photo4: discord.Attachment | None = None,
    photo5: discord.Attachment | None = None, photo6: discord.Attachment | None = None,
    photo7: discord.Attachment | None = None, photo8: discord.Attachment | None = None,
    photo9: discord.Attachment | None = None, photo10: discord.Attachment | None = None,
    subject: app_commands.Choice[str] | None = None,
) -> None:
    photos = [p for p in (photo1, photo2, photo3, photo4, photo5, photo6, photo7, photo8, photo9, photo10) if p]
    chosen = subject.value if subject else None
    bot = client(interaction)
    await bot.backend.run(check_not_barred, bot.backend.store, _text(interaction.guild_id), str(interaction.user.id))
    user = await bot.backend.run(bot.backend.store.get_user, str(interaction.user.id))
    if user is None or user.consent_at is None:
        async def accepted(button_interaction: discord.Interaction, subject: str) -> None:
            await button_interaction.response.edit_message(content="Thanks! Downloading your photos…", embed=None,
                                                           view=None)
            await bot.backend.run(bot.backend.record_consent, str(interaction.user.id))
            await start_enroll(button_interaction, photos, subject)

        consent = discord.Embed(title="Before your first enrollment", description=CONSENT_TEXT, colour=COLOUR)
        view = ConsentView(interaction.user.id, SUBJECT_LABELS, chosen, accepted)
        await interaction.response.send_message(embed=consent, view=view, ephemeral=True)
        return
    await interaction.response.defer(ephemeral=True, thinking=True)
    await start_enroll(interaction, photos, chosen)


async def start_enroll(interaction: discord.Interaction, photos: list[discord.Attachment], subject: str | None) -> None:
    """Download the photos (refusing what breaks the limits) and queue them for checking."""
    bot = client(interaction)
    settings = bot.settings
    max_bytes = int(settings.max_upload_mb * 2**20)
    folder = upload_dir(settings.data_dir, str(interaction.user.id))
    sources = allowed_sources(settings.attachment_hosts)

    async def fetch(index: int, photo: discord.Attachment) -> dict:
        destination = folder / f"{index}.upload"
        try:
            if photo.size > max_bytes:
                raise DownloadRefused(f"it is larger than {settings.max_upload_mb:g} MB")
            await download(bot.http_session, photo.url, destination, max_bytes, sources)
        except DownloadRefused as reason:
            return {"name": photo.filename[:100], "reason": str(reason)}
        return {"name": photo.filename[:100], "path": str(destination)}

    fetched = await asyncio.gather(*(fetch(index, photo) for index, photo in enumerate(photos, start=1)))
    uploads = [item for item in fetched if "path" in item]  # in upload order
    refused = [item for item in fetched if "reason" in item]
    if not uploads:
        shutil.rmtree(folder, ignore_errors=True)
        reasons = "; ".join(f"{r['name']}: {r['reason']}" for r in refused)
        raise FaceChainError(f"None of your photos could be downloaded ({reasons}).")
    params = {"uploads": uploads, "subject": subject, "train_after": True, "refused": refused}
    try:
        job = await bot.backend.run(bot.backend.queue.enqueue, "enroll", str(interaction.user.id), params,
                                    guild_id=_text(interaction.guild_id), channel_id=str(interaction.channel_id))
    except FaceChainError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    photos_word = "photo" if len(uploads) == 1 else "photos"
    await bot.deliveries.follow(job, interaction, f"Checking your {len(uploads)} {photos_word}")


# --- portrait -----------------------------------------------------------------------------------------

@facechain.command(name="portrait", description="Portraits of you in a style, ranked by likeness")
@app_commands.describe(style="Start typing to search the styles", count="How many portraits (default 4)",
                       seed="Same seed + style = same pictures", private="Only you see the result",
                       fast="Quicker, a little less detailed (default: this bot's choice)",
                       prompt="Your own words, added to the style (e.g. holding a guitar)",
                       pose="A body pose to draw you in (the portrait is then taller than wide)",
                       pose_photo="Or a photo of someone in the pose you want (only the pose is kept)",
                       quality="best: your face model (default); instant: drawn from your photos alone, in seconds")
@app_commands.choices(quality=[app_commands.Choice(name="best", value="best"),
                               app_commands.Choice(name="instant", value="instant")])
@app_commands.autocomplete(style=style_choices, pose=pose_choices)
async def portrait(interaction: discord.Interaction, style: str, count: app_commands.Range[int, 1, MAX_PORTRAITS] = 4,
                   seed: app_commands.Range[int, 0, 2**31 - 1] | None = None, private: bool = False,
                   fast: bool | None = None, prompt: app_commands.Range[str, 1, 300] | None = None,
                   pose: app_commands.Range[str, 1, 40] | None = None,
                   pose_photo: discord.Attachment | None = None, quality: str = "best") -> None:
    await interaction.response.defer(ephemeral=private, thinking=True)
    bot = client(interaction)
    user_id = str(interaction.user.id)
    order = PortraitOrder(style=style.strip()[:40], count=count, seed=seed, private=private,
                          age_restricted=age_restricted(interaction.channel), fast=fast, words=prompt or "",
                          pose=pose.strip().lower() if pose else None, instant=quality == "instant")
    if pose_photo is not None:  # a request that will be refused downloads nothing
        await bot.backend.run(bot.backend.check_portrait, user_id, interaction.guild_id, order, from_photo=True)
        order.pose_upload = str(await save_photo(bot, user_id, pose_photo, "That pose photo"))
    try:
        job = await bot.backend.run(bot.backend.order_portrait, user_id, interaction.guild_id,
                                    interaction.channel_id, order)
    except FaceChainError:
        if order.pose_upload:
            shutil.rmtree(Path(order.pose_upload).parent, ignore_errors=True)
        raise
    await bot.deliveries.follow(job, interaction, job_title(job).capitalize())


# --- swap ---------------------------------------------------------------------------------------------

@facechain.command(name="swap", description="Your face on a photo you bring: redrawn by your face model once "
                                             "it is trained, pasted on before")
@app_commands.describe(photo="A photo with the face to replace", face="Which face, numbered left to right",
                       quality="best: your face model redraws the face in the photo's light (a little slower); "
                               "fast: your selfie's face pasted on at once",
                       private="Only you see the result")
@app_commands.choices(quality=[app_commands.Choice(name="best", value="best"),
                               app_commands.Choice(name="fast", value="fast")])
async def swap(interaction: discord.Interaction, photo: discord.Attachment,
               face: app_commands.Range[int, 1, 20] | None = None, quality: str = "best",
               private: bool = False) -> None:
    await interaction.response.defer(ephemeral=private, thinking=True)
    bot = client(interaction)
    user_id = str(interaction.user.id)
    await bot.backend.run(check_not_barred, bot.backend.store, _text(interaction.guild_id), user_id)
    if not await bot.backend.run(bot.backend.store.accepted_selfies, user_id):
        raise FaceChainError("Enroll a few selfies first with `/facechain enroll`: your face comes from them.")
    redraws = await bot.backend.run(bot.backend.redraws_faces, user_id)
    kind = "redraw" if redraws and quality != "fast" else "swap"
    destination = await save_photo(bot, user_id, photo, "That photo")
    try:
        params = {"upload": str(destination), "name": photo.filename[:100], "face": face, "private": private,
                  "age_restricted": age_restricted(interaction.channel)}
        job = await bot.backend.run(bot.backend.queue.enqueue, kind, user_id, params,
                                    guild_id=_text(interaction.guild_id), channel_id=str(interaction.channel_id))
    except FaceChainError:
        shutil.rmtree(destination.parent, ignore_errors=True)
        raise
    await bot.deliveries.follow(job, interaction, "Your face on that photo")


# --- styles, status, forget, help ------------------------------------------------------------------

@facechain.command(name="styles", description="Browse the portrait styles")
async def styles(interaction: discord.Interaction) -> None:
    bot = client(interaction)
    guild = await bot.backend.run(bot.backend.guild, interaction.guild_id)
    catalogue = bot.backend.styles.catalogue(interaction.guild_id)
    listed = [s for s in catalogue.styles.values() if not guild or guild.allows_style(s.id)]
    if not listed:
        raise FaceChainError("No styles are available here: ask an admin to check `/facechain-admin settings`.")

    def render(page: int) -> tuple[discord.Embed, list[discord.File]]:
        style = listed[page]
        embed = discord.Embed(title=style.name, description=style.description, colour=COLOUR)
        embed.add_field(name="Use it", value=f"`/facechain portrait style:{style.id}`")
        if style.tags:
            embed.add_field(name="Tags", value=", ".join(style.tags))
        embed.set_footer(text=f"Style {page + 1} of {len(listed)}")
        preview = shown_preview(bot.settings, catalogue, style)
        if preview is None:
            return embed, []
        embed.set_image(url=f"attachment://preview{preview.suffix}")
        return embed, [discord.File(preview, f"preview{preview.suffix}")]

    embed, files = render(0)
    await interaction.response.send_message(embed=embed, files=files, ephemeral=True,
                                            view=PagerView(interaction.user.id, len(listed), render))


@facechain.command(name="gallery", description="Browse the portraits members shared on this server")
@app_commands.describe(style="Only this style", member="Only this member's portraits",
                       sort="Newest or most liked first", public="Show the browser to everyone in the channel")
@app_commands.autocomplete(style=style_choices)
@app_commands.choices(sort=[app_commands.Choice(name="newest", value="new"),
                           app_commands.Choice(name="most liked", value="top")])
async def gallery_command(interaction: discord.Interaction, style: str | None = None,
                          member: discord.User | None = None, sort: app_commands.Choice[str] | None = None,
                          public: bool = False) -> None:
    await gallery.browse(interaction, style, member, sort.value if sort else "new", public)


@facechain.command(name="status", description="Your face model and your queued requests")
async def status(interaction: discord.Interaction) -> None:
    bot = client(interaction)
    await interaction.response.defer(ephemeral=True, thinking=True)
    state = await bot.backend.run(bot.backend.status, str(interaction.user.id))
    embed = discord.Embed(title="Your FaceChain", colour=COLOUR)
    embed.add_field(name="Photos enrolled", value=str(state["photos"]), inline=True)
    ready = next((m for m in state["models"] if m.status == "ready"), None)
    model_line = (f"ready (version {ready.version}, trained {ready.finished_at[:16].replace('T', ' ')} UTC)"
                  if ready else "none yet: run `/facechain enroll`")
    embed.add_field(name="Face model", value=model_line, inline=True)
    view = discord.ui.View(timeout=None)
    lines = []
    for job, position in state["jobs"]:
        lines.append(f"**{job_title(job)}**: {progress_line(job, position)}")
        if len(view.children) < 20:
            view.add_item(CancelButton(job.id, f"Cancel {job_title(job)}"))
    embed.add_field(name="Your requests", value="\n".join(lines)[:1000] or "nothing queued", inline=False)
    await interaction.edit_original_response(embed=embed, view=view)


@facechain.command(name="forget", description="Delete everything FaceChain stores about you")
async def forget(interaction: discord.Interaction) -> None:
    await forget_dialog(interaction)


async def forget_dialog(interaction: discord.Interaction) -> None:
    """Ask for confirmation, then erase every trace of the member (also from /facechain me)."""
    bot = client(interaction)

    async def confirmed(button_interaction: discord.Interaction) -> None:
        await button_interaction.response.edit_message(content="Deleting…", embed=None, view=None)
        user_id = str(interaction.user.id)
        # A running training stops at its next step; wait for it, so it cannot write files afterwards.
        for _ in range(FORGET_WAIT_SECONDS * 5):
            if not await bot.backend.run(bot.backend.cancel_all, user_id):
                break
            await asyncio.sleep(0.2)
        report, posts, messages = await bot.backend.run(bot.backend.erase, user_id)
        removed_posts = await takedown.delete_posts(bot, posts)
        await takedown.clear_messages(bot, messages, "🗑️ These pictures were deleted.")
        rows = report.rows_deleted
        await button_interaction.edit_original_response(content=(
            f"🗑️ Done. Deleted {rows.get('selfies', 0)} photo records, {rows.get('face_models', 0)} face model "
            f"versions, {rows.get('portraits', 0)} portraits, {removed_posts} gallery posts, "
            f"{rows.get('jobs', 0)} request records and {report.files_deleted} files. FaceChain keeps nothing "
            "about you now."))

    view = ConfirmView(interaction.user.id, "Delete everything", "Keep my data", "Nothing was deleted.", confirmed,
                       danger=True)
    await interaction.response.send_message(
        "This deletes your photos, face model, portraits and gallery posts on this bot, and cancels your "
        "requests. It cannot be undone.", view=view, ephemeral=True)


@facechain.command(name="me", description="Your enrolled photos and face model; remove a photo")
async def me(interaction: discord.Interaction) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await show_me(interaction)


async def show_me(interaction: discord.Interaction, notice: str | None = None) -> None:
    """The member's own data on the interaction's message: numbered photos, face model, actions."""
    bot = client(interaction)
    user_id = str(interaction.user.id)
    try:
        member = await bot.backend.run(describe_member, bot.backend.store, user_id)
    except FaceChainError:
        await interaction.edit_original_response(content="FaceChain stores nothing about you. `/facechain enroll` "
                                                         "starts with a few selfies.", embed=None, view=None)
        return
    model = member["face_model"]
    embed = discord.Embed(title="Your FaceChain data", colour=COLOUR, description=(
        f"**{len(member['photos'])} enrolled photos** (only you see them). Face model: "
        + (f"version {model['version']}, trained {model['finished_at'][:10]} on {model['photos']} photos."
           if model else "not trained yet.")
        + f"\nPortraits describe you as **{described(member['subject'])}** "
          "(the menu below changes it)."
        + f"\nPictures with other members (`/facechain together`): **{TOGETHER_LABELS[member['together']].lower()}**."))
    files = []
    if member["photos"]:
        grid = await asyncio.to_thread(thumbnail_grid, [Path(p["path"]) for p in member["photos"]], numbered=True)
        files = [discord.File(io.BytesIO(grid), "photos.jpg")]
        embed.set_image(url="attachment://photos.jpg")
    view = MeView(interaction.user.id, [(p["number"], p["name"]) for p in member["photos"]],
                  lambda chosen, number: remove_and_show(chosen, number), forget_dialog,
                  SUBJECT_LABELS, member["subject"], member["suggested_subject"], change_subject_and_show,
                  member["together"], change_together_and_show)
    await interaction.edit_original_response(content=notice, embed=embed, attachments=files, view=view)


def described(subject: str) -> str:
    return SUBJECT_LABELS[subject].split(" (")[0].lower()  # "a woman", "a person"


async def change_for_member(interaction: discord.Interaction, change, *args):
    """Defer, then run one of engine.store.members' changes (store, queue, member, *args, server, channel)."""
    await interaction.response.defer()
    bot = client(interaction)
    return await bot.backend.run(change, bot.backend.store, bot.backend.queue, str(interaction.user.id), *args,
                                 _text(interaction.guild_id), str(interaction.channel_id))


async def change_subject_and_show(interaction: discord.Interaction, subject: str) -> None:
    change = await change_for_member(interaction, change_subject, subject)
    notice = (f"Portraits describe you as {described(change.subject)}. "
              + ("Your face model is retraining with it; you'll be pinged when it's ready." if change.train_job_id
                 else "" if change.changed else "(No change.)")).strip()
    await show_me(interaction, notice)


async def change_together_and_show(interaction: discord.Interaction, choice: str) -> None:
    await interaction.response.defer()
    bot = client(interaction)
    await bot.backend.run(set_together, bot.backend.store, str(interaction.user.id), choice)
    await show_me(interaction, f"Pictures with other members: {TOGETHER_LABELS[choice].lower()}.")


async def remove_and_show(interaction: discord.Interaction, number: int) -> None:
    removed = await change_for_member(interaction, remove_photo, number)
    notice = (f"🗑️ Removed photo {removed.number} ({removed.name}). "
              + ("Your face model is retraining on the rest; you'll be pinged when it's ready."
                 if removed.train_job_id else "No photos are left: `/facechain enroll` adds new ones."))
    await show_me(interaction, notice)


@facechain.command(name="help", description="What FaceChain does and how to use it")
async def help_command(interaction: discord.Interaction) -> None:
    await interaction.response.send_message(embed=help_embed(), ephemeral=True)


# --- wiring --------------------------------------------------------------------------------------------

def install(tree: app_commands.CommandTree, settings: Settings) -> None:
    # Discord offers what the engine accepts: 1 to the candidates drawn per request.
    count = portrait._params["count"]
    count.max_value = settings.portrait_candidates
    count.default = min(DEFAULT_PORTRAITS, settings.portrait_candidates)
    count.description = f"How many portraits (default {count.default})"
    tree.add_command(facechain)
    tree.add_command(admin)  # bot/admin_commands.py and bot/style_admin.py
    tree.on_error = on_command_error


async def on_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    original = getattr(error, "original", error)
    if isinstance(error, app_commands.CheckFailure) and not isinstance(original, FaceChainError):
        original = FaceChainError(str(error) or "You cannot use this command here.")
    await report_error(interaction, original)


def _text(snowflake: int | None) -> str | None:
    return None if snowflake is None else str(snowflake)
