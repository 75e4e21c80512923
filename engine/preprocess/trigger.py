"""The trigger phrase that names the person in captions and prompts, as FaceChain does."""

from __future__ import annotations

from statistics import median

from engine.errors import FaceChainError

TRIGGER_TOKEN = "<fcsks>"
SUBJECTS = {
    "man": "a handsome man",
    "woman": "a beautiful woman",
    "boy": "a boy",
    "girl": "a girl",
    "person": "a person",
}
CHILD_BELOW_AGE = 14
MATURE_FROM_AGE = 55


def trigger_for_subject(subject: str) -> str:
    if subject not in SUBJECTS:
        raise FaceChainError(f"Unknown subject {subject!r}: choose one of {', '.join(SUBJECTS)}.")
    return SUBJECTS[subject]


def trigger_from_attributes(genders: list[str | None], ages: list[float | None]) -> str:
    """FaceChain's choice from an attribute model's gender and age; 'a person' when unknown."""
    known_genders = [g for g in genders if g]
    known_ages = [a for a in ages if a is not None]
    if not known_genders or not known_ages:
        return SUBJECTS["person"]
    male = known_genders.count("male") * 2 > len(known_genders)
    age = median(known_ages)
    if age < CHILD_BELOW_AGE:
        return "a boy" if male else "a girl"
    if age >= MATURE_FROM_AGE:
        return "a mature man" if male else "a mature woman"
    return SUBJECTS["man"] if male else SUBJECTS["woman"]


def caption(trigger: str) -> str:
    return f"{TRIGGER_TOKEN}, {trigger}"
