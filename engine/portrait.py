"""A user's portraits in a style: generate candidates, fuse, rank, save, record."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from engine.config import Settings
from engine.errors import FaceChainError
from engine.faces import FaceAnalyzer
from engine.generate import PortraitGenerator, PortraitRequest, build_prompt
from engine.portrait_request import CheckedRequest, check_prompt_words, check_request
from engine.postprocess import EnrolledFace, RankedPortrait, make_fuser, rank_candidates
from engine.safety import SafetyChecker
from engine.store import Store
from engine.store.store import utc_now
from engine.styles import StyleCatalogue

log = logging.getLogger(__name__)
UNRANKED_NOTICE = ("No candidate showed one clear face, even after a second batch, so these portraits are not "
                   "ranked by likeness.")
ALL_HELD_BACK = "Every candidate was held back by this server's safety filter: try another style or a re-roll."
TEASER_NOTICE = "Preview: your face model is still training. These use the base model with your face put on."


@dataclass
class SavedPortrait:
    path: Path
    similarity: float | None
    seed: int
    style: str
    nsfw: bool = False
    prompt: str = ""  # the full prompt it was drawn with

    def to_json(self) -> dict:
        return {"path": str(self.path), "similarity": self.similarity, "seed": self.seed, "style": self.style,
                "nsfw": self.nsfw, "prompt": self.prompt}


@dataclass
class PortraitResult:
    portraits: list[SavedPortrait]
    notice: str | None = None
    held_back: int = 0  # candidates the safety check flagged that the policy kept from being shown


def enrolled_face(store: Store, analyzer: FaceAnalyzer, user_id: str) -> EnrolledFace:
    """Every enrolled crop with a usable face (fusion picks the pose-closest; the best quality leads)
    and all enrolled embeddings."""
    selfies = [s for s in store.accepted_selfies(user_id) if s.embedding_backend == analyzer.name]
    sources = []
    for selfie in selfies:  # best quality first
        image = np.asarray(Image.open(selfie.path).convert("RGB"))
        faces = analyzer.detect(image)
        if faces:
            sources.append((image, faces[0]))
    if not sources:
        raise FaceChainError(f"User {user_id} has no enrolled selfie with a usable face: enroll again.")
    (image, face), *others = sources
    return EnrolledFace(image, face, [s.embedding for s in selfies], others)


def make_portraits(
    store: Store,
    generator: PortraitGenerator,
    analyzer: FaceAnalyzer,
    settings: Settings,
    catalogue: StyleCatalogue,
    user_id: str,
    style_id: str,
    count: int = 4,
    seed: int | None = None,
    out_dir: Path | None = None,
    on_step=None,
    job_id: int | None = None,
    variation_of: int | None = None,
    safety: SafetyChecker | None = None,
    show_flagged: bool = False,
    fast: bool | None = None,
    words: str = "",
    blocked_words: list[str] | tuple[str, ...] = (),
    teaser: bool = False,
) -> PortraitResult:
    """Generate, rank and save up to `count` portraits. With a safety checker, flagged candidates
    are marked, and dropped (the next best take their place) unless `show_flagged`. `fast` draws
    with the LCM-LoRA in a few steps (None: the FACECHAIN_FAST_BY_DEFAULT setting)."""
    if teaser:  # while the face model trains: the base model and the style, the enrolled face fused on
        check_request(store, settings, catalogue, user_id, style_id, count, need_model=False)
        user = store.get_user(user_id)
        if user is None:
            raise FaceChainError(f"User {user_id} has no enrolled selfies.")
        checked = CheckedRequest(catalogue.get(style_id), user.trigger, None)
    else:
        checked = check_request(store, settings, catalogue, user_id, style_id, count)
    words = check_prompt_words(words, blocked_words)
    enrolled = enrolled_face(store, analyzer, user_id)
    fuser = make_fuser(settings, analyzer)
    fast = settings.fast_by_default if fast is None else fast
    request = PortraitRequest(style=checked.style, trigger=checked.trigger, face_model=checked.face_model,
                              count=settings.portrait_candidates, seed=seed, size=settings.portrait_size,
                              variation_of=variation_of, fast=fast, words=words,
                              steps=settings.fast_steps if fast else None,
                              guidance=settings.fast_guidance if fast else None)
    candidates = generator.generate(request, on_step=on_step)
    ranked = rank_candidates(analyzer, candidates, enrolled, fuser)
    notice = None
    if not ranked:  # FaceChain answers with nothing here; we try once more, then deliver unranked
        retry = replace(request, seed=candidates[-1].seed + 1)
        candidates = generator.generate(retry, on_step=on_step)
        ranked = rank_candidates(analyzer, candidates, enrolled, fuser)
        if not ranked:
            ranked = [RankedPortrait(c.image, c.seed, None) for c in candidates]
            notice = UNRANKED_NOTICE
    ranked, held_back = screen(safety, ranked, show_flagged)
    if held_back:
        log.info("safety check held back %d of %d candidates", held_back, held_back + len(ranked))
        notice = held_back_notice(notice, passed=len(ranked), wanted=count)
    saved = save_portraits(store, user_id, checked.style.id, ranked[:count], out_dir, job_id)
    prompt = build_prompt(checked.trigger, checked.style, words)
    if teaser:
        notice = " ".join(filter(None, [TEASER_NOTICE, notice]))
    return PortraitResult([replace(portrait, prompt=prompt) for portrait in saved], notice, held_back)


def held_back_notice(notice: str | None, passed: int, wanted: int) -> str | None:
    """The notice once the safety check held some candidates back."""
    if passed == 0:
        return ALL_HELD_BACK  # nothing is shown, so nothing else is worth saying
    if passed < wanted:
        return " ".join(filter(None, [notice, f"Only {passed} of the candidates passed this server's safety filter."]))
    return notice  # flagged candidates were replaced by the next best: nothing to tell


def screen(safety: SafetyChecker | None, ranked: list[RankedPortrait],
           show_flagged: bool) -> tuple[list[RankedPortrait], int]:
    """Flag the candidates and keep the flagged ones only if they may be shown; returns (kept, held back count)."""
    if safety is None:
        return ranked, 0
    flagged = [replace(portrait, nsfw=flag) for portrait, flag in zip(ranked, safety.flags([p.image for p in ranked]))]
    kept = flagged if show_flagged else [portrait for portrait in flagged if not portrait.nsfw]
    return kept, len(flagged) - len(kept)


def save_portraits(store: Store, user_id: str, style_id: str, ranked: list[RankedPortrait],
                   out_dir: Path | None, job_id: int | None = None) -> list[SavedPortrait]:
    folder = out_dir or store.private_dir(user_id, "portraits")
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for portrait in ranked:
        # Stored portraits carry their job id: two requests may reuse a seed.
        path = folder / (f"{style_id}-{portrait.seed}-job{job_id}.png" if job_id else f"{style_id}-{portrait.seed}.png")
        portrait.image.save(path)
        with store.transaction():
            store.db["portraits"].insert({
                "user_id": user_id, "job_id": job_id, "style": style_id, "seed": portrait.seed,
                "similarity": portrait.similarity, "nsfw": int(portrait.nsfw),
                "path": store.relative(path) if path.is_relative_to(store.data_dir) else str(path),
                "created_at": utc_now(),
            })
        saved.append(SavedPortrait(path, portrait.similarity, portrait.seed, style_id, portrait.nsfw))
    return saved
