"""After generation: face fusion and likeness ranking."""

from engine.postprocess.fusers import EnrolledFace, Fuser, classical_fuser, make_fuser
from engine.postprocess.fusion import fuse_face
from engine.postprocess.rank import RankedPortrait, rank_candidates

__all__ = ["EnrolledFace", "Fuser", "RankedPortrait", "classical_fuser", "fuse_face", "make_fuser", "rank_candidates"]
