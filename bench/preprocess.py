"""Selfie preprocessing speed on this machine: photos/s end to end and the time split by stage.

    python bench/preprocess.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import cv2

from engine.config import load_settings
from engine.faces import get_analyzer
from engine.preprocess import UploadedPhoto, preprocess_photos
from engine.preprocess.align import align_face, find_face
from engine.preprocess.decode import decode_photo
from engine.preprocess.quality import measure_quality

PHOTOS = Path(__file__).parent.parent / "tests" / "data"
NAMES = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg", "biden/biden2.jpg", "rose_leslie/rose2.jpg"]


@contextmanager
def timed(spent: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    spent[stage] += time.perf_counter() - start


def stage_times(analyzer, settings, photos: list[UploadedPhoto]) -> dict[str, float]:
    """Seconds per stage, summed over the photos (the same calls the pipeline makes)."""
    spent: dict[str, float] = defaultdict(float)
    for photo in photos:
        with timed(spent, "decode"):
            image = decode_photo(photo.data, settings.max_photo_megapixels)
        with timed(spent, "detect + landmarks"):
            found = find_face(analyzer, image)
        with timed(spent, "align + crop"):
            aligned = align_face(found.image, found.face)
        with timed(spent, "quality"):
            measure_quality(aligned, found.face.box[2])
        with timed(spent, "embed"):
            analyzer.embed(found.image, found.face)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = load_settings(_env_file=None)
    start = time.perf_counter()
    analyzer = get_analyzer(settings)
    load_seconds = time.perf_counter() - start
    photos = [UploadedPhoto(name, (PHOTOS / name).read_bytes()) for name in NAMES]

    print(f"machine: {platform.machine()}, {cv2.getNumberOfCPUs()} cores, Python {platform.python_version()}, "
          f"backend {analyzer.name}, OpenCV {cv2.__version__}")
    print(f"face models loaded in {load_seconds:.2f} s (once per process)")
    best = float("inf")
    for _ in range(args.rounds):
        start = time.perf_counter()
        result = preprocess_photos(photos, analyzer, settings)
        best = min(best, time.perf_counter() - start)
    assert len(result.accepted) == len(photos) - 2  # two people besides obama: both outvoted
    print(f"pipeline: {len(photos)} photos in {best:.2f} s = {len(photos) / best:.1f} photos/s (best of {args.rounds})")

    spent = stage_times(analyzer, settings, photos)
    total = sum(spent.values())
    print("time split by stage:")
    for stage, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {stage:<20} {seconds / len(photos) * 1000:7.1f} ms/photo  {seconds / total:6.1%}")


if __name__ == "__main__":
    main()
