"""Selfie preprocessing speed: photos/s end to end, the time split by stage, and what detecting
on a downscaled copy saves on a large phone photo.

    python bench/preprocess.py [--quick] [--json FILE]
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from engine.benchmarks.common import bench_arguments, best_seconds, seconds, write_figures
from engine.config import load_settings
from engine.faces import dlib_backend, get_analyzer
from engine.preprocess import UploadedPhoto, preprocess_photos
from engine.preprocess.align import align_face, find_face
from engine.preprocess.decode import decode_photo
from engine.preprocess.face_parser import get_face_parser
from engine.preprocess.head_mask import head_mask, paint_white
from engine.preprocess.quality import measure_quality
from engine.preprocess.retouch import retouch_skin

PHOTOS = Path(__file__).parent.parent / "tests" / "data"
NAMES = ["obama/obama1.jpg", "obama/obama2.jpg", "obama/obama3.jpg", "biden/biden2.jpg", "rose_leslie/rose2.jpg"]
LARGE_PHOTO = (4000, 3000)  # a 12 MP phone photo


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
        with timed(spent, "head mask"):  # the face parser when one is downloaded, else the landmarks' GrabCut
            mask = head_mask(aligned.crop, aligned.landmarks, aligned.face_box, get_face_parser(settings))
        with timed(spent, "retouch + white"):
            paint_white(retouch_skin(aligned.crop, mask.skin, settings.skin_retouch), mask.head)
    return spent


def detection_on_a_large_photo(analyzer, rounds: int) -> tuple[float, float]:
    """Detection time on a 12 MP photo: at full size (before) and on the downscaled copy (now)."""
    image = cv2.resize(cv2.cvtColor(cv2.imread(str(PHOTOS / NAMES[0])), cv2.COLOR_BGR2RGB), LARGE_PHOTO,
                       interpolation=cv2.INTER_CUBIC)
    image = np.ascontiguousarray(image)
    downscaled = best_seconds(lambda: analyzer.detect(image), rounds)
    kept = dlib_backend.DETECT_LONG_SIDE
    dlib_backend.DETECT_LONG_SIDE = 10**6  # detect on every pixel, as before the downscale
    try:
        full = best_seconds(lambda: analyzer.detect(image), rounds)
    finally:
        dlib_backend.DETECT_LONG_SIDE = kept
    return full, downscaled


def main() -> None:
    args = bench_arguments(__doc__).parse_args()
    rounds = 1 if args.quick else 3
    settings = load_settings(_env_file=None)
    load_seconds = seconds(lambda: (get_analyzer(settings), get_face_parser(settings)))
    analyzer = get_analyzer(settings)
    photos = [UploadedPhoto(name, (PHOTOS / name).read_bytes()) for name in NAMES]

    parser = "the face parser" if get_face_parser(settings) else "landmark head masks (no face parser here)"
    print(f"face models loaded in {load_seconds:.2f} s (once per process); backend {analyzer.name}, {parser}")
    results = []
    best = best_seconds(lambda: results.append(preprocess_photos(photos, analyzer, settings)), rounds)
    assert len(results[-1].accepted) == len(photos) - 2  # two people besides obama: both outvoted
    print(f"pipeline: {len(photos)} photos in {best:.2f} s = {len(photos) / best:.1f} photos/s (best of {rounds})")

    spent = stage_times(analyzer, settings, photos)
    total = sum(spent.values())
    print("time split by stage:")
    for stage, spent_seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {stage:<20} {spent_seconds / len(photos) * 1000:7.1f} ms/photo  {spent_seconds / total:6.1%}")

    full, downscaled = detection_on_a_large_photo(analyzer, rounds)
    print(f"detection on a {LARGE_PHOTO[0]}x{LARGE_PHOTO[1]} photo: {full * 1000:.0f} ms at full size, "
          f"{downscaled * 1000:.0f} ms on the downscaled copy ({full / downscaled:.1f}x faster)")
    write_figures(args.json, {
        "backend": analyzer.name, "photos": len(photos), "rounds": rounds,
        "face_models_load_s": round(load_seconds, 3), "photos_per_s": round(len(photos) / best, 2),
        "stage_ms_per_photo": {stage: round(s / len(photos) * 1000, 1) for stage, s in spent.items()},
        "hot_spots": [{"name": "face detection, 12 MP photo", "before_ms": round(full * 1000, 1),
                       "after_ms": round(downscaled * 1000, 1),
                       "change": f"detect on a copy with a {dlib_backend.DETECT_LONG_SIDE} px long side"}],
    })


if __name__ == "__main__":
    main()
