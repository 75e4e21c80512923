"""Why a photo was rejected: a stable code for programs and a plain sentence with a fix for people."""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    UNREADABLE = "unreadable"
    TOO_LARGE = "too_large"
    ANIMATED = "animated"
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    FACE_TOO_SMALL = "face_too_small"
    FACE_CUT_OFF = "face_cut_off"
    BLURRY = "blurry"
    BAD_EXPOSURE = "bad_exposure"
    NOT_FRONTAL = "not_frontal"
    DIFFERENT_PERSON = "different_person"
    DUPLICATE = "duplicate"
    ANOTHER_MEMBER = "another_member"


ADVICE: dict[Reason, str] = {
    Reason.UNREADABLE: "this file can't be read as a photo: send a JPEG, PNG or HEIC photo straight from your camera",
    Reason.TOO_LARGE: "this photo is too large: send a smaller copy (under 40 megapixels)",
    Reason.ANIMATED: "animated images can't be used: send a still photo",
    Reason.NO_FACE: "no face found: use a well-lit photo where your face is clearly visible",
    Reason.MULTIPLE_FACES: "more than one face here: crop to just you",
    Reason.FACE_TOO_SMALL: "your face is too small in this photo: take it closer or crop around your face",
    Reason.FACE_CUT_OFF: "your face is cut off by the edge of the photo: use one with your whole face in frame",
    Reason.BLURRY: "this photo is blurry: use a sharp, in-focus photo",
    Reason.BAD_EXPOSURE: "this photo is too dark or too bright: use one with even lighting on your face",
    Reason.NOT_FRONTAL: "your face is turned too far away: use a photo facing the camera",
    Reason.DIFFERENT_PERSON: "this looks like someone else: only send photos of yourself",
    Reason.DUPLICATE: "this photo was already sent: send a different one",
    Reason.ANOTHER_MEMBER: "these photos look like another member of this bot; each member enrolls only their own face",
}


class PhotoRejected(Exception):
    """Raised inside per-photo processing; the pipeline turns it into a report line."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
