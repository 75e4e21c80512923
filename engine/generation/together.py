"""Two members in one picture (FaceChain's inpaint mode with two face LoRAs), left to right.

On a photo a member brings, each chosen face is redrawn with its own member's face model, as `redraw`
does one face (a member without a face model yet gets their enrolled face pasted on instead). Without a
photo, the style first draws a scene of two people in a two-person pose: the pose ControlNet places
them and no face model draws it. Each face is then found (by the face engine, or at the pose's head
where it finds none) and redrawn the same way.

Candidates are ranked by the lower of the two likenesses: a picture is as good as its least
recognisable member. Each face is redrawn with only its own member's adapter active; both adapters
stay loaded in the generator's cache for the job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.faces import Face, FaceAnalyzer
from engine.generation.generate import PORTRAIT_PROMPT, PortraitGenerator, PortraitRequest
from engine.generation.poses import Pose
from engine.generation.redraw import (
    REDRAW_STYLE,
    draw_region,
    face_region,
    or_pasted,
    paste_back,
    paste_weight,
    ranked_drawings,
)
from engine.postprocess import EnrolledFace, RankedPortrait
from engine.postprocess.rank import similarity
from engine.styles import Style

TOGETHER_CANDIDATES = 4
# A frame's words that describe one person's body, dropped when only the face is redrawn.
BODY_WORDS = re.compile(r"^(upper[_ ]body( portrait)?|full body|medium shot|wide shot|solo)$")
Progress = Callable[[float, str], None]


@dataclass
class Person:
    """One member of the picture: their enrolled face (fused on and ranked against), the folder of their
    face model (None: their enrolled face is pasted on instead) and the words it learned them with."""

    enrolled: EnrolledFace
    face_model: Path | None
    trigger: str


def by_likeness(pictures: list[RankedPortrait]) -> list[RankedPortrait]:
    """Best first; unranked pictures last."""
    return sorted(pictures, key=lambda p: -1.0 if p.similarity is None else p.similarity, reverse=True)


def redraw_people(generator: PortraitGenerator, analyzer: FaceAnalyzer, settings, people: list[Person],
                  image: np.ndarray, faces: list[Face], seeds: list[int], style: Style = REDRAW_STYLE,
                  progress: Progress | None = None) -> list[RankedPortrait]:
    """`faces[i]` of `image` redrawn with `people[i]`'s face model, once per seed. Each person's drawings
    are ranked by their own likeness and paired rank by rank (best with best); a picture scores the lower
    of its two likenesses as the finished picture shows them (`likeness_at`: pasting back blends each
    drawing's edges into the photo, so the drawing's own score is not quite what the member sees), or the
    drawing's where the finished picture shows no face there (None when either is unranked)."""
    layers = []
    for index, (person, face) in enumerate(zip(people, faces)):
        region = face_region(face, image.shape)

        def on_step(step: int, total: int, index: int = index) -> None:
            if progress is not None:
                progress((index + step / total) / len(people), f"drawing face {index + 1} of {len(people)}")
        drawn = draw_region(generator, image, face, region, settings.portrait_size, person.face_model,
                            person.trigger, seeds, on_step, style=style)
        ranked = ranked_drawings(analyzer, settings, person.enrolled, drawn)
        if person.face_model is not None:  # redrawings that read worse than the paste: the paste, beside each
            kept = or_pasted(analyzer, settings, person.enrolled, image, region, ranked)
            ranked = kept * len(ranked) if kept[0].pasted else kept
        layers.append((region, paste_weight(face, region), ranked))
    pictures = []
    for rank in range(min(len(ranked) for _, _, ranked in layers)):
        picture = image
        for region, weight, ranked in layers:
            picture = paste_back(picture, region, np.asarray(ranked[rank].image.convert("RGB")), weight)
        found = analyzer.detect(picture)
        scores = [None if ranked[rank].similarity is None else
                  likeness_at(analyzer, picture, found, face, person.enrolled) or ranked[rank].similarity
                  for (_, _, ranked), face, person in zip(layers, faces, people)]
        score = None if None in scores else min(scores)
        pasted = tuple(index for index, (_, _, ranked) in enumerate(layers) if ranked[rank].pasted)
        pictures.append(RankedPortrait(Image.fromarray(picture), layers[0][2][rank].seed, score, pasted=pasted))
    if all(ranked[0].pasted or person.face_model is None for (_, _, ranked), person in zip(layers, people)):
        pictures = pictures[:1]  # every face pasted, none drawn: one picture, not copies of it
    return by_likeness(pictures)


def likeness_at(analyzer: FaceAnalyzer, picture: np.ndarray, found: list[Face], near: Face,
                enrolled: EnrolledFace) -> float | None:
    """The likeness to `enrolled` of the face `picture` shows where `near` was (one of `found`, the faces detected
    on it), or None when no face is there."""
    centre = np.array([near.box[0] + near.box[2] / 2, near.box[1] + near.box[3] / 2])
    there = [face for face in found if np.linalg.norm(
        np.array([face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2]) - centre) < max(near.box[2:]) / 2]
    if not there:
        return None
    face = min(there, key=lambda f: abs(f.box[0] - near.box[0]) + abs(f.box[1] - near.box[1]))
    return similarity(analyzer, analyzer.embed(picture, face), enrolled.embeddings)


def scene_words(triggers: list[str]) -> str:
    """Who the scene shows, left to right: "two people, a man and a woman"."""
    return f"two people, {' and '.join(triggers)}, side by side"


def face_style(style: Style) -> Style:
    """`style` for a face redrawn in its scene: the style's words and LoRA, a close-up frame, the redraw's
    sampler."""
    frame = [word.strip() for word in (style.frame or PORTRAIT_PROMPT).split(",")]
    close_up = ", ".join(["close-up", "high detail face", *(w for w in frame if w and not BODY_WORDS.match(w))])
    return style.model_copy(update={"frame": close_up, "sampler": REDRAW_STYLE.sampler})


def head_box(points: dict, width: int, height: int) -> tuple[int, int, int, int]:
    """Where a pose's person has their face, from the head's points: x, y, width, height in pixels."""
    def at(name: str) -> np.ndarray:
        x, y = points[name]
        return np.array([x * width, y * height])

    nose = at("nose")
    if "right_ear" in points and "left_ear" in points:
        face_width = 1.15 * np.linalg.norm(at("right_ear") - at("left_ear"))
    elif "right_eye" in points and "left_eye" in points:
        face_width = 2.4 * np.linalg.norm(at("right_eye") - at("left_eye"))
    else:
        face_width = 0.7 * np.linalg.norm(at("neck") - nose)
    face_height = 1.3 * face_width
    return (round(nose[0] - face_width / 2), round(nose[1] - 0.55 * face_height), round(face_width),
            round(face_height))


def place_faces(analyzer: FaceAnalyzer, image: np.ndarray, pose: Pose) -> list[Face]:
    """One face per person of the pose, left to right: the face the engine finds on that person's head,
    or else a face at the head's place (the redraw then draws one there)."""
    height, width = image.shape[:2]
    found = analyzer.detect(image)
    placed: list[Face] = []
    for points in pose.people:
        x, y, w, h = head_box(points, width, height)
        on_head = [face for face in found if face not in placed
                   and x - w / 2 <= face.box[0] + face.box[2] / 2 <= x + 1.5 * w
                   and y - h / 2 <= face.box[1] + face.box[3] / 2 <= y + 1.5 * h]
        if on_head:
            placed.append(max(on_head, key=lambda face: face.area))
            continue
        eyes_y = y + 0.45 * h
        placed.append(Face(box=(x, y, w, h), score=0.0, landmarks=np.zeros((0, 2)),
                           left_eye=np.array([x + 0.3 * w, eyes_y]), right_eye=np.array([x + 0.7 * w, eyes_y])))
    return placed


def draw_scene(generator: PortraitGenerator, analyzer: FaceAnalyzer, settings, people: list[Person], style: Style,
               pose: Pose, seed: int, count: int = TOGETHER_CANDIDATES,
               progress: Progress | None = None) -> list[RankedPortrait]:
    """`count` scenes of the people in `style` and `pose` (seeds from `seed`), each face redrawn by its own
    member's face model, ranked by the lower likeness."""
    def report(share: float, text: str) -> None:
        if progress is not None:
            progress(share, text)

    request = PortraitRequest(style=style, trigger="", face_model=None, count=count, seed=seed,
                              size=settings.portrait_size, words=scene_words([p.trigger for p in people]), pose=pose)
    scenes = generator.generate(request, on_step=lambda step, total: report(0.4 * step / total, "drawing the scene"))
    pictures = []
    for number, scene in enumerate(scenes):
        image = np.asarray(scene.image.convert("RGB"))

        def redrawing(share: float, text: str, number: int = number) -> None:
            report(0.4 + 0.6 * (number + share) / len(scenes), f"scene {number + 1} of {len(scenes)}: {text}")
        pictures += redraw_people(generator, analyzer, settings, people, image, place_faces(analyzer, image, pose),
                                  [scene.seed], face_style(style), redrawing)
    return by_likeness(pictures)
