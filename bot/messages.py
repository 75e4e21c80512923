"""What members read: embeds and lines built from engine results. No Discord calls here."""

from __future__ import annotations

import io
from pathlib import Path

import discord
from PIL import Image, ImageDraw

from engine.errors import ModelUnavailable
from engine.jobs.queue import WAITING_FOR_SETUP, Job, QueuePosition

COLOUR = discord.Colour.from_rgb(88, 101, 242)
CONSENT_TEXT = (
    "To make portraits that look like you, FaceChain keeps **aligned crops of the selfies it accepts** "
    "and a small **face model** trained on them, on this server owner's machine. They are never posted "
    "anywhere; only portraits you choose to share reach a gallery.\n\n"
    "`/facechain forget` deletes all of it (photos, face model, portraits, gallery posts) at any time.\n\n"
    "Below, choose how portraits should describe you; `/facechain me` changes it later."
)
# How portraits may describe a member, in the menu's words (engine.preprocess.trigger.SUBJECTS; tested).
SUBJECT_LABELS = {"man": "A man", "woman": "A woman", "boy": "A boy", "girl": "A girl",
                  "person": "A person (no gender words)"}
HELP_LINES = [
    ("/facechain enroll", "Upload 3 to 10 selfies (just you, face visible). FaceChain checks each one and trains "
                          "your face model; you are pinged when it is ready."),
    ("/facechain portrait", "Portraits of you in a style, ranked by likeness, with Re-roll, More like, Share and "
                            "Delete; add a pose to be drawn standing, sitting, waving and more."),
    ("/facechain styles", "Browse the styles."),
    ("/facechain status", "Your face model and queued requests (with cancel buttons)."),
    ("/facechain swap", "Your face on a photo you bring: no face model needed, right after you enroll."),
    ("/facechain together", "A picture of you with another member, each looking like yourselves: in a style, or on "
                            "a photo of you both. They allow it first."),
    ("/facechain me", "Your enrolled photos, numbered, and your face model; how portraits describe you; who may put "
                      "you in a picture together; remove one photo (then it retrains)."),
    ("/facechain forget", "Delete everything FaceChain stores about you."),
    ("/facechain-admin settings", "Server admins: gallery channel, daily quota, allowed styles, NSFW policy."),
    ("/facechain-admin queue", "Server admins: this server's queued jobs."),
    ("/facechain-admin style-add", "Server admins: a style of this server's own, from a style LoRA file and words."),
]


def eta(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    return f"about {round(seconds / 60):.0f} min"


def progress_line(job: Job, position: QueuePosition | None) -> str:
    """One line on where a job stands: 'queued #3, about 2 min' / 'generating 40%' / ..."""
    if job.state == "queued":
        if job.progress_text == WAITING_FOR_SETUP:
            return f"waiting: {ModelUnavailable.MEMBER_TEXT}"
        if position is None:
            return "queued"
        waiting = "waiting for your face model to finish training" if job.params.get("wait_for_training") else ""
        if job.params.get("rebuilding"):
            waiting = "waiting for your face model, rebuilt for the bot's new image model"
        return waiting or f"queued #{position.position}, {eta(position.eta_seconds)}"
    if job.state == "running":
        text = job.progress_text or "starting"
        timed = "left" in text or text.startswith("getting ")  # a download says its own progress
        return text if timed or position is None else f"{text} ({eta(position.eta_seconds)} left)"
    return job.state


JOB_TITLES = {"enroll": "checking your photos", "train": "training your face model", "generate": "portraits",
              "swap": "your face on a photo", "redraw": "your face redrawn into a photo",
              "teaser": "a preview while your face model trains", "instant": "reading your face for instant portraits",
              "upscale": "a sharper x2 portrait", "together": "a picture together"}


def job_title(job: Job) -> str:
    if job.kind == "generate":
        posed = f", pose {job.params['pose']}" if job.params.get("pose") else ""
        kind = "instant portraits" if job.params.get("instant") else "portraits"
        return f"{job.params.get('count', 4)} {kind} in {job.params.get('style', '?')}{posed}"
    if job.kind == "upscale" and job.params.get("x4"):
        return "a portrait upscaled x4"
    return JOB_TITLES.get(job.kind, job.kind)


def enroll_card(result: dict, refused: list[dict], training: str | None) -> discord.Embed:
    accepted, rejected = result.get("accepted", []), result.get("rejected", [])
    total_rejected = len(rejected) + len(refused)
    embed = discord.Embed(title="Your photos", colour=COLOUR,
                          description=f"**{len(accepted)} accepted**, {total_rejected} rejected. "
                                      f"{result.get('enrolled_total', 0)} photos enrolled in all.")
    if accepted:
        embed.add_field(name="Accepted", value=_clip("\n".join(f"✅ {name}" for name in accepted)), inline=False)
    for photo in rejected:
        name = Path(photo.get("path", "photo")).name
        text = f"{photo.get('detail', '')}\n**Fix:** {photo.get('advice', '')}"
        embed.add_field(name=f"❌ {name}", value=_clip(text), inline=False)
    for photo in refused:
        embed.add_field(name=f"❌ {photo['name']}", value=_clip(f"Not downloaded: {photo['reason']}."), inline=False)
    if training:
        embed.add_field(name="Face model", value=training, inline=False)
    elif not accepted:
        embed.add_field(name="Face model", value="Nothing new to train on: send other photos with "
                                                 "`/facechain enroll`.", inline=False)
    return embed


def with_training_line(card: discord.Embed, line: str) -> discord.Embed:
    """The enroll card with its 'Face model' field set to `line`."""
    card = card.copy()
    for index, field in enumerate(card.fields):
        if field.name == "Face model":
            card.set_field_at(index, name="Face model", value=line, inline=False)
            return card
    return card.add_field(name="Face model", value=line, inline=False)


def portrait_lines(user_id: str, style_name: str, portraits: list[dict], notice: str | None, words: str = "",
                   pose_name: str | None = None) -> str:
    said = f" “{discord.utils.escape_markdown(words)}”" if words else ""
    posed = f", posed **{pose_name}**" if pose_name else ""
    lines = [f"<@{user_id}> {len(portraits)} portrait{'s' if len(portraits) != 1 else ''} in **{style_name}**{posed}{said}"
             + (", most alike first:" if portraits and portraits[0]["similarity"] is not None else ":")]
    for index, portrait in enumerate(portraits, start=1):
        likeness = portrait["similarity"]
        shown = f"likeness {likeness:.0%}" if likeness is not None else "not ranked"
        lines.append(f"**#{index}** {shown} · seed {portrait['seed']}")
    if notice:
        lines.append(f"_{notice}_")
    return "\n".join(lines)


def swap_lines(user_id: str, result: dict, portraits: list[dict]) -> str:
    """A swap's message: which face became the member's, and how alike (each result, when redrawn)."""
    where = f"face {result.get('face', 1)} of {result.get('faces_found', 1)}"
    if result.get("method") != "redrawn":  # classical, or pasted as the redrawing read less like them
        likeness = portraits[0]["similarity"]
        line = f"<@{user_id}> your face on {where}" + (f" · likeness {likeness:.0%}" if likeness is not None else "")
        return line + (f"\n_{result['notice']}_" if result.get("notice") else "")
    lines = [f"<@{user_id}> your face redrawn into {where} by your face model"
             + (", most alike first:" if portraits[0]["similarity"] is not None else ":")]
    for index, portrait in enumerate(portraits, start=1):
        likeness = portrait["similarity"]
        lines.append(f"**#{index}** " + (f"likeness {likeness:.0%}" if likeness is not None else "not ranked"))
    return "\n".join(lines)


def together_lines(user_id: str, partner_id: str, result: dict, portraits: list[dict], style_name: str | None) -> str:
    """A picture together's message: where the two were put, and each picture's lower likeness."""
    where = (f" on faces {result['faces'][0]} and {result['faces'][1]} of your photo" if result.get("faces")
             else f" in **{style_name}**" if style_name else "")
    ranked = portraits[0]["similarity"] is not None
    lines = [f"<@{user_id}> and <@{partner_id}> together{where}" + (", the lower of your two likenesses first:"
                                                                    if ranked else ":")]
    for index, portrait in enumerate(portraits, start=1):
        likeness = portrait["similarity"]
        lines.append(f"**#{index}** " + (f"likeness {likeness:.0%}" if likeness is not None else "not ranked"))
    if result.get("notice"):
        lines.append(f"_{result['notice']}_")
    lines.append("Either of you can delete them; one goes to the gallery once you have both shared it.")
    return "\n".join(lines)


def thumbnail_grid(paths: list[Path], tile: int = 128, columns: int = 5, numbered: bool = False) -> bytes:
    """A JPEG contact sheet of images (for the enroll card and /facechain me, shown only to its owner),
    with each tile's number in its corner when `numbered`."""
    rows = (len(paths) + columns - 1) // columns
    sheet = Image.new("RGB", (tile * min(columns, len(paths)), tile * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            thumb = image.convert("RGB").resize((tile, tile))
        corner = ((index % columns) * tile, (index // columns) * tile)
        sheet.paste(thumb, corner)
        if numbered:
            draw.rectangle((corner[0], corner[1], corner[0] + 26, corner[1] + 22), fill="black")
            draw.text((corner[0] + 5, corner[1] + 3), str(index + 1), fill="white", font_size=16)
    buffer = io.BytesIO()
    sheet.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def small_copy(path: Path, size: int = 320) -> bytes:
    """A small JPEG of a photo (the photo a member is asked about, shown only to them)."""
    with Image.open(path) as image:
        thumb = image.convert("RGB")
        thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def help_embed() -> discord.Embed:
    embed = discord.Embed(title="FaceChain: portraits that look like you", colour=COLOUR,
                          description="Enroll a few selfies once, then ask for portraits in any style.")
    for name, value in HELP_LINES:
        embed.add_field(name=name, value=value, inline=False)
    return embed


def _clip(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
