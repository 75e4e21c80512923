"""Per-server settings and gallery entries: what one guild shares never shows in another."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from engine.errors import FaceChainError
from engine.store.store import Store, utc_now

NSFW_POLICIES = ("block", "age_restricted_only", "allow")


@dataclass(frozen=True)
class GuildSettings:
    guild_id: str
    gallery_channel_id: str | None = None
    daily_quota: int | None = None  # None = the server-wide FACECHAIN_GUILD_DAILY_QUOTA
    allowed_styles: list[str] = field(default_factory=list)  # empty = every style
    nsfw_policy: str = "block"

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
    )


def update_guild_settings(store: Store, guild_id: str, **changes: object) -> GuildSettings:
    """Change some settings of a guild; the others keep their values."""
    unknown = set(changes) - {"gallery_channel_id", "daily_quota", "allowed_styles", "nsfw_policy"}
    if unknown:
        raise FaceChainError(f"Unknown server setting(s): {', '.join(sorted(unknown))}.")
    if "nsfw_policy" in changes and changes["nsfw_policy"] not in NSFW_POLICIES:
        raise FaceChainError(f"NSFW policy must be one of {', '.join(NSFW_POLICIES)}.")
    with store.transaction():
        current = guild_settings(store, guild_id)
        row = {
            "guild_id": guild_id,
            "gallery_channel_id": changes.get("gallery_channel_id", current.gallery_channel_id),
            "daily_quota": changes.get("daily_quota", current.daily_quota),
            "allowed_styles": json.dumps(changes.get("allowed_styles", current.allowed_styles)),
            "nsfw_policy": changes.get("nsfw_policy", current.nsfw_policy),
            "updated_at": utc_now(),
        }
        store.db["guild_settings"].upsert(row, pk="guild_id")
    return guild_settings(store, guild_id)


# --- gallery entries ------------------------------------------------------------------------------

def gallery_entry(store: Store, guild_id: str, portrait_id: int) -> dict | None:
    rows = list(store.db["gallery_entries"].rows_where("guild_id = ? and portrait_id = ?", [guild_id, portrait_id]))
    return rows[0] if rows else None


def add_gallery_entry(store: Store, guild_id: str, portrait_id: int, user_id: str, channel_id: str) -> dict:
    """Record a share (once per guild and portrait); the message id is set after the post."""
    with store.transaction():
        if gallery_entry(store, guild_id, portrait_id) is not None:
            raise FaceChainError("This portrait is already in this server's gallery.")
        store.db["gallery_entries"].insert({
            "guild_id": guild_id, "portrait_id": portrait_id, "user_id": user_id, "channel_id": channel_id,
            "message_id": None, "likes": 0, "created_at": utc_now(),
        })
    return gallery_entry(store, guild_id, portrait_id)  # type: ignore[return-value]


def set_gallery_message(store: Store, entry_id: int, message_id: str) -> None:
    with store.transaction():
        store.db["gallery_entries"].update(entry_id, {"message_id": message_id})


def remove_gallery_entry(store: Store, entry_id: int) -> None:
    with store.transaction():
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
