"""After generation: face fusion and likeness ranking."""

from engine.postprocess.fusion import fuse_face
from engine.postprocess.rank import EnrolledFace, RankedPortrait, rank_candidates

__all__ = ["EnrolledFace", "RankedPortrait", "fuse_face", "rank_candidates"]
