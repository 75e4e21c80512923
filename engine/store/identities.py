"""Each member's identity vector, and the bot-wide check that new photos are not another member's face.

A member's identity is the mean of their accepted selfies' embeddings (one row per face backend). At
enrollment the new photos' mean is compared with every other member's identity by one matrix product
(`IdentityIndex`, kept in memory and re-read only when an identity changed), so a second account cannot
enroll someone else's face, and a member set to *never* cannot be drawn through it.

Two lines per backend, chosen from measured distances (tests/test_identities.py prints them, README):
- `STRICT` refuses the photos. It sits well below the closest pair of different people measured (dlib:
  0.70 on the test photos, strangers 0.86 on average) and near the middle of one person's photos
  (0.3-0.45), so a refusal is never a coin toss, also among 10,000 members.
- the backend's own match threshold (dlib 0.6): a match between the two lines is only written to the
  server's audit log, since at 0.6 about one pair of strangers in a few hundred reads as one person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the store erases identities through bump_version: no import back
    from engine.store.store import Store

# Distances at or under which a new member's photos are refused as another member's face, per backend.
# insightface: ArcFace's normalised 512-d vectors (cosine 0.6); its random test model cannot measure it here.
STRICT = {"dlib": 0.40, "insightface": 0.90}
REFUSAL = ("these photos look like another member of this bot; each member enrolls only their own face")


@dataclass(frozen=True)
class IdentityMatch:
    user_id: str  # the other member
    distance: float
    strict: bool  # at or under the strict line: the photos are refused


def mean_identity(embeddings: list[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack([np.asarray(e, np.float32) for e in embeddings]), axis=0).astype(np.float32)


def bump_version(db) -> None:
    """Tell every process's IdentityIndex to read the table again (inside the changing transaction)."""
    db.execute("insert into runtime (key, value) values ('identities_version', '1') on conflict (key) "
               "do update set value = cast(value as integer) + 1")


def save_identity(store: Store, user_id: str, backend: str) -> None:
    """Recompute a member's identity from their accepted selfies of `backend` (none left: the row goes)."""
    vectors = [s.embedding for s in store.accepted_selfies(user_id) if s.embedding_backend == backend]
    with store.transaction():
        bump_version(store.db)
        if not vectors:
            store.db.execute("delete from identities where user_id = ? and backend = ?", [user_id, backend])
            return
        store.db["identities"].upsert({"user_id": user_id, "backend": backend,
                                       "vector": mean_identity(vectors).tobytes(), "photos": len(vectors),
                                       "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                                      pk=("user_id", "backend"))


class IdentityIndex:
    """Every member's identity of one backend as a matrix, re-read when the table changed."""

    def __init__(self) -> None:
        self._stamp: dict[tuple[str, str], tuple | None] = {}
        self._matrix: dict[tuple[str, str], tuple[list[str], np.ndarray, np.ndarray]] = {}

    def nearest(self, store: Store, backend: str, vector: np.ndarray, threshold: float,
                exclude: str = "") -> IdentityMatch | None:
        """The closest other member within `threshold` of `vector` (euclidean), or None."""
        ids, matrix, norms = self._load(store, backend)
        if not ids:
            return None
        query = np.asarray(vector, np.float32)
        squared = norms + float(query @ query) - 2.0 * (matrix @ query)
        distances = np.sqrt(np.maximum(squared, 0.0))
        for index in np.argsort(distances)[:2]:  # the nearest, or the next when the nearest is the member
            if ids[index] != exclude and distances[index] <= threshold:
                distance = float(distances[index])
                return IdentityMatch(ids[index], distance, distance <= STRICT.get(backend, 0.0))
        return None

    def _load(self, store: Store, backend: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        key = (str(store.db_path), backend)
        stamp = store.db.execute("select value from runtime where key = 'identities_version'").fetchone()
        if key not in self._matrix or self._stamp.get(key) != stamp:
            rows = store.db.execute("select user_id, vector from identities where backend = ?", [backend]).fetchall()
            ids = [row[0] for row in rows]
            matrix = (np.stack([np.frombuffer(row[1], np.float32) for row in rows]) if rows
                      else np.zeros((0, 1), np.float32))
            self._matrix[key] = (ids, matrix, np.einsum("ij,ij->i", matrix, matrix))
            self._stamp[key] = stamp
        return self._matrix[key]


SHARED_INDEX = IdentityIndex()  # one per process: workers and actors keep the matrix between jobs


def other_member_match(store: Store, index: IdentityIndex, user_id: str, backend: str, threshold: float,
                       embeddings: list[np.ndarray]) -> IdentityMatch | None:
    """Whether these new photos (of one person: enrollment checked that) are another member's face."""
    if not embeddings:
        return None
    return index.nearest(store, backend, mean_identity(embeddings), threshold, exclude=user_id)
