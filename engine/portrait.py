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
from engine.generate import PortraitGenerator, PortraitRequest
from engine.portrait_request import check_request
from engine.postprocess import EnrolledFace, RankedPortrait, make_fuser, rank_candidates
from engine.store import Store
from engine.store.store import utc_now
from engine.styles import StyleCatalogue

log = logging.getLogger(__name__)
UNRANKED_NOTICE = ("No candidate showed one clear face, even after a second batch, so these portraits are not "
                   "ranked by likeness.")


@dataclass
class SavedPortrait:
    path: Path
    similarity: float | None
    seed: int
    style: str

    def to_json(self) -> dict:
        return {"path": str(self.path), "similarity": self.similarity, "seed": self.seed, "style": self.style}


@dataclass
class PortraitResult:
    portraits: list[SavedPortrait]
    notice: str | None = None


def enrolled_face(store: Store, analyzer: FaceAnalyzer, user_id: str) -> EnrolledFace:
    """The best-quality enrolled crop (the fusion source) and all enrolled embeddings."""
    selfies = [s for s in store.accepted_selfies(user_id) if s.embedding_backend == analyzer.name]
    for selfie in selfies:  # best quality first
        image = np.asarray(Image.open(selfie.path).convert("RGB"))
        faces = analyzer.detect(image)
        if faces:
            return EnrolledFace(image, faces[0], [s.embedding for s in selfies])
    raise FaceChainError(f"User {user_id} has no enrolled selfie with a usable face: enroll again.")


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
) -> PortraitResult:
    checked = check_request(store, settings, catalogue, user_id, style_id, count)
    enrolled = enrolled_face(store, analyzer, user_id)
    fuser = make_fuser(settings, analyzer)
    request = PortraitRequest(style=checked.style, trigger=checked.trigger, face_model=checked.face_model,
                              count=settings.portrait_candidates, seed=seed, size=settings.portrait_size,
                              variation_of=variation_of)
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
    return PortraitResult(save_portraits(store, user_id, checked.style.id, ranked[:count], out_dir, job_id), notice)


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
                "similarity": portrait.similarity,
                "path": store.relative(path) if path.is_relative_to(store.data_dir) else str(path),
                "created_at": utc_now(),
            })
        saved.append(SavedPortrait(path, portrait.similarity, portrait.seed, style_id))
    return saved
