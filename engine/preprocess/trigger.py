"""The trigger phrase that names the person in captions and prompts, as FaceChain does."""

from __future__ import annotations

from statistics import median

from engine.subjects import SUBJECTS, trigger_for_subject

__all__ = ["SUBJECTS", "TRIGGER_TOKEN", "caption", "subject_from_attributes", "trigger_for_subject"]

TRIGGER_TOKEN = "<fcsks>"
CHILD_BELOW_AGE = 14


def subject_from_attributes(genders: list[str | None], ages: list[float | None]) -> str | None:
    """What a face engine that reads gender and age suggests (FaceChain's rule); None when it reads
    neither. Only ever a suggestion the member sees: the member's own choice describes them."""
    known_genders = [g for g in genders if g]
    known_ages = [a for a in ages if a is not None]
    if not known_genders or not known_ages:
        return None
    male = known_genders.count("male") * 2 > len(known_genders)
    if median(known_ages) < CHILD_BELOW_AGE:
        return "boy" if male else "girl"
    return "man" if male else "woman"


def caption(trigger: str) -> str:
    return f"{TRIGGER_TOKEN}, {trigger}"
