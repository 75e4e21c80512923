"""Per-server settings and gallery entries: what one guild shares never shows in another."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from engine.errors import FaceChainError
from engine.nsfw_policy import NSFW_POLICIES
from engine.store.store import Store, equal_to, utc_now

SETTING_COLUMNS = ("gallery_channel_id", "daily_quota", "allowed_styles", "nsfw_policy", "highlight_day",
                   "highlight_hour", "last_highlight_at", "web_token", "blocked_words", "report_channel_id")
SORTS = ("new", "top")


@dataclass(frozen=True)
class GuildSettings:
    guild_id: str
    gallery_channel_id: str | None = None
    daily_quota: int | None = None  # None = the server-wide FACECHAIN_GUILD_DAILY_QUOTA
    allowed_styles: list[str] = field(default_factory=list)  # empty = every style
    nsfw_policy: str = "block"
    highlight_day: int | None = None  # 0 = Monday; None = no weekly highlight
    highlight_hour: int = 18  # UTC
    last_highlight_at: str | None = None
    web_token: str | None = None
    blocked_words: list[str] = field(default_factory=list)  # refused in members' own prompt words
    report_channel_id: str | None = None  # where members' reports go (None: the server owner's DMs)

    def allows_style(self, style_id: str) -> bool:
        return not self.allowed_styles or style_id in self.allowed_styles


def guild_settings(store: Store, guild_id: str) -> GuildSettings:
    rows = list(store.db["guild_settings"].rows_where("guild_id = ?", [guild_id]))
    if not rows:
        return GuildSettings(guild_id)
    row = rows[0]
    return GuildSettings(
        guild_id=guild_id, gallery_channel_id=row["gallery_channel_id"], daily_quota=row["daily_quota"],
        allowed_styles=json.loads(row["allowed_styles"] or "[]"), nsfw_policy=row["nsfw_policy"] or "block",
        highlight_day=row["highlight_day"],
        highlight_hour=18 if row["highlight_hour"] is None else row["highlight_hour"],
        last_highlight_at=row["last_highlight_at"], web_token=row["web_token"],
        blocked_words=json.loads(row["blocked_words"] or "[]"), report_channel_id=row.get("report_channel_id"),
    )


def server_nsfw_policy(store: Store, guild_id: str | None) -> str:
    """The NSFW policy of the server a request came from; DMs and the CLI count as block."""
    return guild_settings(store, guild_id).nsfw_policy if guild_id else "block"


def update_guild_settings(store: Store, guild_id: str, **changes: object) -> GuildSettings:
    """Change some settings of a guild; the others keep their values."""
    unknown = set(changes) - set(SETTING_COLUMNS)
    if unknown:
        raise FaceChainError(f"Unknown server setting(s): {', '.join(sorted(unknown))}.")
    if "nsfw_policy" in changes and changes["nsfw_policy"] not in NSFW_POLICIES:
        raise FaceChainError(f"NSFW policy must be one of {', '.join(NSFW_POLICIES)}.")
    if changes.get("highlight_day") is not None and not 0 <= changes["highlight_day"] <= 6:
        raise FaceChainError("The highlight day is 0 (Monday) to 6 (Sunday).")
    if "highlight_hour" in changes and not 0 <= changes["highlight_hour"] <= 23:
        raise FaceChainError("The highlight hour is 0 to 23 (UTC).")
    with store.transaction():
        current = guild_settings(store, guild_id)
        row = {column: changes.get(column, getattr(current, column)) for column in SETTING_COLUMNS}
        row.update(guild_id=guild_id, allowed_styles=json.dumps(row["allowed_styles"]),
                   blocked_words=json.dumps(row["blocked_words"]), updated_at=utc_now())
        store.db["guild_settings"].upsert(row, pk="guild_id")
    return guild_settings(store, guild_id)


def allow_style(store: Store, guild_id: str, style_id: str) -> bool:
    """Put a style the server's admins just added on its allowed list, when it keeps one (an empty list allows
    every style): otherwise members would be told they may pick it and then refused. True when it was added."""
    with store.transaction():
        current = guild_settings(store, guild_id)
        if not current.allowed_styles or style_id in current.allowed_styles:
            return False
        update_guild_settings(store, guild_id, allowed_styles=[*current.allowed_styles, style_id])
    return True


# --- gallery entries ------------------------------------------------------------------------------

def gallery_entry(store: Store, guild_id: str, portrait_id: int) -> dict | None:
    rows = list(store.db["gallery_entries"].rows_where("guild_id = ? and portrait_id = ?", [guild_id, portrait_id]))
    return rows[0] if rows else None


def add_gallery_entry(store: Store, guild_id: str, portrait_id: int, user_id: str, channel_id: str,
                      display_name: str = "") -> dict:
    """Record a share (once per guild and portrait); the message id is set after the post."""
    with store.transaction():
        if gallery_entry(store, guild_id, portrait_id) is not None:
            raise FaceChainError("This portrait is already in this server's gallery.")
        store.db["gallery_entries"].insert({
            "guild_id": guild_id, "portrait_id": portrait_id, "user_id": user_id, "channel_id": channel_id,
            "message_id": None, "likes": 0, "created_at": utc_now(), "display_name": display_name[:100],
        })
    return gallery_entry(store, guild_id, portrait_id)  # type: ignore[return-value]


def set_gallery_message(store: Store, entry_id: int, message_id: str, channel_id: str | None = None) -> None:
    """Record the post of an entry (and its channel: a forum post is a thread of its own)."""
    changes = {"message_id": message_id} | ({"channel_id": channel_id} if channel_id else {})
    with store.transaction():
        store.db["gallery_entries"].update(entry_id, changes)


def remove_gallery_entry(store: Store, entry_id: int) -> None:
    """Take an entry out of the gallery, with its likes and, for a picture of two, both members' agreement to
    share: it goes up again only when both share it again."""
    with store.transaction():
        store.db.execute("delete from gallery_likes where entry_id = ?", [entry_id])
        store.db.execute("delete from share_approvals where portrait_id in (select portrait_id from gallery_entries "
                         "where id = ?)", [entry_id])
        store.db["gallery_entries"].delete(entry_id)


def user_gallery_posts(store: Store, user_id: str) -> list[dict]:
    """Every gallery post of a user, in every guild (for `/facechain forget`)."""
    return list(store.db["gallery_entries"].rows_where("user_id = ? and message_id is not null", [user_id]))


def portrait_gallery_posts(store: Store, portrait_ids: list[int]) -> list[dict]:
    """Gallery posts of these portraits (to delete the messages before the portraits go)."""
    if not portrait_ids:
        return []
    marks = ", ".join("?" for _ in portrait_ids)
    return list(store.db["gallery_entries"].rows_where(f"portrait_id in ({marks}) and message_id is not null",
                                                       portrait_ids))


# --- the messages a result was sent in ------------------------------------------------------------------

def record_result_message(store: Store, job_id: int, channel_id: str, message_id: str) -> None:
    """A message that shows a job's pictures (the asker's, the other member's copy of a picture together), so
    that deleting them, by either member or a moderator, reaches every copy."""
    with store.transaction():
        store.db["result_messages"].insert({"job_id": job_id, "channel_id": channel_id, "message_id": message_id,
                                            "created_at": utc_now()}, ignore=True)


def result_messages(store: Store, job_id: int) -> list[dict]:
    return list(store.db["result_messages"].rows_where("job_id = ?", [job_id]))


def member_result_messages(store: Store, user_id: str) -> list[dict]:
    """Every message that shows pictures of a member: their results, and pictures together they are in."""
    return list(store.db.query(
        "select * from result_messages where job_id in (select id from jobs where user_id = ? or "
        "(kind = 'together' and json_extract(params, '$.with') = ?))", [user_id, user_id]))


def forget_result_messages(store: Store, job_id: int) -> None:
    with store.transaction():
        store.db.execute("delete from result_messages where job_id = ?", [job_id])


# --- browsing, likes, highlights, the web link ---------------------------------------------------------

@dataclass(frozen=True)
class GalleryItem:
    entry_id: int
    guild_id: str
    portrait_id: int
    user_id: str
    style: str
    path: str  # relative to the data dir
    channel_id: str
    message_id: str | None
    likes: int
    created_at: str
    display_name: str | None
    nsfw: int = 0  # the portrait was flagged by the safety check
    owner_id: str = ""  # whose picture it is (the sharer, or for a picture of two, either of them)
    partner_id: str | None = None  # the other member in a picture of two

    @property
    def members(self) -> list[str]:
        return [self.owner_id or self.user_id] + ([self.partner_id] if self.partner_id else [])


ITEM_QUERY = """
    select e.id as entry_id, e.guild_id, e.portrait_id, e.user_id, p.style, p.path, e.channel_id, e.message_id,
           e.created_at, e.display_name, p.nsfw, p.user_id as owner_id, p.partner_id,
           (select count(*) from gallery_likes l where l.entry_id = e.id) as likes
    from gallery_entries e join portraits p on p.id = e.portrait_id
"""


def gallery_item(store: Store, entry_id: int) -> GalleryItem | None:
    rows = list(store.db.query(ITEM_QUERY + " where e.id = ?", [entry_id]))
    return GalleryItem(**rows[0]) if rows else None


def browse_gallery(store: Store, guild_id: str, style: str | None = None, user_id: str | None = None,
                   sort: str = "new", offset: int = 0, limit: int = 1,
                   include_flagged: bool = False) -> tuple[list[GalleryItem], int]:
    """A page of a guild's gallery (only posted entries) and how many match in all. Portraits the
    safety check flagged are left out unless `include_flagged`."""
    if sort not in SORTS:
        raise FaceChainError(f"Sort by one of {', '.join(SORTS)}.")
    where, params = equal_to({"e.guild_id": guild_id, "p.style": style})
    if user_id:  # their pictures, and pictures of two they are in
        where.append("(p.user_id = ? or p.partner_id = ?)")
        params += [user_id, user_id]
    where.append("e.message_id is not null")
    if not include_flagged:
        where.append("p.nsfw = 0")
    condition = " where " + " and ".join(where)
    total = store.db.execute("select count(*) from gallery_entries e join portraits p on p.id = e.portrait_id"
                             + condition, params).fetchone()[0]
    order = "likes desc, e.id desc" if sort == "top" else "e.id desc"
    rows = store.db.query(ITEM_QUERY + condition + f" order by {order} limit ? offset ?", [*params, limit, offset])
    return [GalleryItem(**row) for row in rows], total


def gallery_styles(store: Store, guild_id: str) -> list[str]:
    """The styles that appear in a guild's gallery, most used first."""
    return [row[0] for row in store.db.execute(
        "select p.style from gallery_entries e join portraits p on p.id = e.portrait_id "
        "where e.guild_id = ? and e.message_id is not null group by p.style order by count(*) desc, p.style",
        [guild_id]).fetchall()]


def toggle_like(store: Store, entry_id: int, user_id: str) -> tuple[bool, int]:
    """Like an entry, or take the like back; returns (liked now, likes in all)."""
    with store.transaction():
        removed = store.db.execute("delete from gallery_likes where entry_id = ? and user_id = ?",
                                   [entry_id, user_id]).rowcount
        if not removed:
            store.db["gallery_likes"].insert({"entry_id": entry_id, "user_id": user_id, "created_at": utc_now()})
        count = store.db.execute("select count(*) from gallery_likes where entry_id = ?", [entry_id]).fetchone()[0]
    return not removed, count


def week_winners(store: Store, guild_id: str, now: datetime | None = None, limit: int = 4,
                 include_flagged: bool = False) -> list[GalleryItem]:
    """The most liked portraits shared in a guild in the last 7 days (ties: the newest first)."""
    since = ((now or datetime.now(timezone.utc)) - timedelta(days=7)).isoformat(timespec="seconds")
    flagged = "" if include_flagged else " and p.nsfw = 0"
    rows = store.db.query(ITEM_QUERY + " where e.guild_id = ? and e.message_id is not null and e.created_at >= ?"
                          + flagged + " order by likes desc, e.id desc limit ?", [guild_id, since, limit])
    return [GalleryItem(**row) for row in rows]


def record_highlight_post(store: Store, guild_id: str, channel_id: str, message_id: str,
                          portrait_ids: list[int]) -> None:
    """A weekly highlight as posted, with the pictures in it: forgetting one of their members takes it down."""
    with store.transaction():
        store.db["highlight_posts"].insert({"guild_id": guild_id, "channel_id": channel_id, "message_id": message_id,
                                            "portrait_ids": json.dumps(portrait_ids), "created_at": utc_now()})


def highlight_posts_showing(store: Store, portrait_ids: list[int]) -> list[dict]:
    """The highlight posts that show any of these pictures; their rows go (the caller deletes the posts)."""
    wanted = set(portrait_ids)
    rows = [row for row in store.db["highlight_posts"].rows if wanted & set(json.loads(row["portrait_ids"]))]
    if rows:
        with store.transaction():
            for row in rows:
                store.db["highlight_posts"].delete(row["id"])
    return rows


def highlight_guilds(store: Store) -> list[GuildSettings]:
    """Guilds that asked for a weekly highlight."""
    rows = store.db.execute("select guild_id from guild_settings where highlight_day is not null").fetchall()
    return [guild_settings(store, row[0]) for row in rows]


def rotate_web_token(store: Store, guild_id: str) -> str:
    """A new unguessable token for the guild's web gallery; the old address stops working."""
    token = secrets.token_urlsafe(24)
    update_guild_settings(store, guild_id, web_token=token)
    return token


def guild_for_web_token(store: Store, token: str) -> str | None:
    rows = store.db.execute("select guild_id from guild_settings where web_token = ?", [token]).fetchall()
    return rows[0][0] if rows and token else None
