"""Face analysis behind one interface; `get_analyzer` loads the configured backend once."""

from __future__ import annotations

import threading

from engine.config import Settings
from engine.faces.base import Face, FaceAnalyzer, largest_first, same_person

__all__ = ["Face", "FaceAnalyzer", "get_analyzer", "largest_first", "same_person"]

_analyzers: dict[tuple, FaceAnalyzer] = {}
_lock = threading.Lock()


def get_analyzer(settings: Settings) -> FaceAnalyzer:
    """The configured backend, loaded on first use and reused after (model loading takes seconds)."""
    key = (settings.face_backend, str(settings.insightface_model_dir), settings.face_match_threshold)
    with _lock:
        if key not in _analyzers:
            _analyzers[key] = _load(settings)
        return _analyzers[key]


def _load(settings: Settings) -> FaceAnalyzer:
    threshold = settings.face_match_threshold
    if settings.face_backend == "insightface":
        from engine.faces.insightface_backend import InsightFaceAnalyzer

        return InsightFaceAnalyzer(settings.insightface_model_dir, **({"threshold": threshold} if threshold else {}))
    from engine.faces.dlib_backend import DlibAnalyzer

    return DlibAnalyzer(**({"threshold": threshold} if threshold else {}))
