"""Keep only photos of one person, so a friend's photo in the set can't poison a face model."""

from __future__ import annotations

import numpy as np

from engine.faces import FaceAnalyzer


def identity_outliers(
    analyzer: FaceAnalyzer, embeddings: list[np.ndarray], known: list[np.ndarray]
) -> tuple[set[int], str]:
    """Indices of `embeddings` that are not the enrolled person, and why.

    With photos already enrolled (`known`), a new face must match most of them. Otherwise the
    person is whoever appears in a strict majority of the new photos; with no majority nobody
    can be told apart from a friend, so every photo is an outlier.
    """
    if not embeddings:
        return set(), ""
    if known:
        outliers = {
            index for index, vector in enumerate(embeddings)
            if np.median([analyzer.distance(vector, reference) for reference in known]) > analyzer.threshold
        }
        return outliers, "does not match the photos already enrolled"

    count = len(embeddings)
    distances = np.array([[analyzer.distance(a, b) for b in embeddings] for a in embeddings])
    matches = distances <= analyzer.threshold
    # The medoid: the face matching the most others, ties broken by the smaller mean distance.
    centre = min(range(count), key=lambda i: (-matches[i].sum(), distances[i].mean()))
    group = set(np.flatnonzero(matches[centre]).tolist())
    if 2 * len(group) > count:
        return set(range(count)) - group, "does not match the person in most of the other photos"
    return set(range(count)), "no single person appears in most of the photos"


# Two faces closer than this share of the match threshold are the same photo re-saved, resized
# or re-sent (measured: copies 0.03-0.06, different photos of one person >= 0.2, dlib threshold 0.6).
NEAR_DUPLICATE_SHARE = 0.15


def near_duplicates(
    analyzer: FaceAnalyzer, embeddings: list[np.ndarray], known: list[np.ndarray]
) -> dict[int, int | None]:
    """Index -> the earlier index it copies (None when it copies an enrolled photo)."""
    limit = NEAR_DUPLICATE_SHARE * analyzer.threshold
    copies: dict[int, int | None] = {}
    for index, vector in enumerate(embeddings):
        if any(analyzer.distance(vector, reference) < limit for reference in known):
            copies[index] = None
            continue
        earlier = [i for i in range(index) if i not in copies and analyzer.distance(vector, embeddings[i]) < limit]
        if earlier:
            copies[index] = earlier[0]
    return copies
