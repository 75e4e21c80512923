import itertools

import numpy as np
import pytest

from engine.config import load_settings
from engine.errors import ModelMissing
from engine.faces import get_analyzer, same_person
from tests.conftest import DATA, IDENTITIES, image_array

FACE_COUNTS = {
    "obama/obama1.jpg": 1, "obama/obama2.jpg": 1, "obama/obama3.jpg": 1, "obama/obama4_small.jpg": 1,
    "biden/biden1.jpg": 1, "biden/biden2.jpg": 1, "rose_leslie/rose1.jpg": 1, "rose_leslie/rose2.jpg": 1,
    "group/two_people.jpg": 2, "edge/obama_partial_face.jpg": 1, "edge/rgba_32bit.png": 1,
}
LABELLED = [(path, person) for person, paths in IDENTITIES.items() for path in paths]


def test_every_test_photo_is_listed():
    on_disk = {p.relative_to(DATA).as_posix() for p in DATA.rglob("*") if p.suffix in {".jpg", ".png"} and "bad" not in p.parts}
    assert on_disk == set(FACE_COUNTS)


@pytest.mark.parametrize("path, count", FACE_COUNTS.items())
def test_face_counts_boxes_and_landmarks(analyzer, path, count):
    image = image_array(path)
    faces = analyzer.detect(image)
    assert len(faces) == count
    height, width = image.shape[:2]
    for face in faces:
        x, y, w, h = face.box
        assert w > 40 and h > 40
        assert face.landmarks.shape == (68, 2)
        # Eyes sit inside the box, the image's left eye left of the right one.
        assert x <= face.left_eye[0] < face.right_eye[0] <= x + w
        assert face.score > 0
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)


@pytest.fixture(scope="module")
def embeddings(analyzer):
    vectors = {}
    for path, _ in LABELLED:
        image = image_array(path)
        vectors[path] = analyzer.embed(image, analyzer.detect(image)[0])
    return vectors


@pytest.mark.parametrize("first, second", list(itertools.combinations(LABELLED, 2)), ids=lambda item: item[0])
def test_same_or_different_person_on_every_pair(analyzer, embeddings, first, second):
    distance = analyzer.distance(embeddings[first[0]], embeddings[second[0]])
    assert same_person(analyzer, embeddings[first[0]], embeddings[second[0]]) == (first[1] == second[1]), distance


def test_embeddings_are_128_floats_and_distance_is_symmetric(analyzer, embeddings):
    a, b = embeddings["obama/obama1.jpg"], embeddings["biden/biden1.jpg"]
    assert a.shape == (128,) and a.dtype == np.float32
    assert analyzer.distance(a, b) == pytest.approx(analyzer.distance(b, a))
    assert analyzer.distance(a, a) == 0


def test_a_downscaled_photo_is_detected_at_the_original_coordinates(analyzer):
    # obama3 is 1434x2333: detection runs on a copy, boxes must come back in full-size pixels.
    face = analyzer.detect(image_array("obama/obama3.jpg"))[0]
    assert face.box[2] > 250


def test_models_load_once_and_are_reused():
    settings = load_settings(_env_file=None)
    assert get_analyzer(settings) is get_analyzer(load_settings(_env_file=None))


def test_threshold_setting_is_used(tmp_path):
    assert get_analyzer(load_settings(_env_file=None, face_match_threshold=0.5)).threshold == 0.5


def test_insightface_without_its_model_pack_says_what_to_set(tmp_path):
    settings = load_settings(_env_file=None, face_backend="insightface", insightface_model_dir=tmp_path / "missing")
    with pytest.raises(ModelMissing, match="FACECHAIN_INSIGHTFACE_MODEL_DIR"):
        get_analyzer(settings)


def test_the_dlib_analyzer_can_be_shared_by_threads():
    """dlib's detector crashes the process (segfault) when two threads use it at once; the analyzer
    takes turns. Run in a child process, so a crash fails this test instead of killing pytest."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from engine.config import load_settings\n"
        "from engine.faces import get_analyzer\n"
        "from tests.conftest import image_array\n"
        "analyzer = get_analyzer(load_settings(_env_file=None))\n"
        "images = [image_array(f'obama/obama{i}.jpg') for i in (1, 2, 3)] * 4\n"
        "def analyse(image):\n"
        "    face = analyzer.detect(image)[0]\n"
        "    return len(analyzer.embed(image, face))\n"
        "with ThreadPoolExecutor(4) as pool:\n"
        "    print(sorted(set(pool.map(analyse, images))))\n"
    )
    root = Path(__file__).parent.parent
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stderr[-1000:]
    assert run.stdout.strip() == "[128]"
