"""Each server's NSFW policy: what happens to a portrait the safety check flags. A light module (no
model, no numpy) that the bot reads; the check itself is engine/models/safety.py."""

from __future__ import annotations

NSFW_POLICIES = ("block", "age_restricted_only", "allow")
POLICY_MEANINGS = {
    "block": "flagged portraits are never shown",
    "age_restricted_only": "flagged portraits only in age-restricted channels",
    "allow": "flagged portraits are shown anywhere",
}


def may_show_flagged(policy: str, age_restricted: bool) -> bool:
    """Whether a server's NSFW policy lets a flagged portrait be shown in a channel that is (or is not)
    age-restricted. Unknown policies count as "block"."""
    return policy == "allow" or (policy == "age_restricted_only" and age_restricted)
