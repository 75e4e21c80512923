"""How portraits may describe a member: their own choice of subject, and the trigger phrase it gives
(FaceChain's words). Light, so the bot can offer the choice without loading the face engine."""

from __future__ import annotations

from engine.errors import FaceChainError

SUBJECTS = {
    "man": "a handsome man",
    "woman": "a beautiful woman",
    "boy": "a boy",
    "girl": "a girl",
    "person": "a person",
}


def trigger_for_subject(subject: str) -> str:
    if subject not in SUBJECTS:
        raise FaceChainError(f"Unknown subject {subject!r}: choose one of {', '.join(SUBJECTS)}.")
    return SUBJECTS[subject]
