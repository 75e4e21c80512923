"""The insightface backend's loading and inference code, on a tiny model pack exported here.

The models have the real packs' input/output signatures (ArcFace 1x3x112x112 -> 512, gender/age
1x3x96x96 -> 3) with random or fixed weights, so identities mean nothing; loading, alignment,
normalisation and attributes are what is tested.
"""

import cv2
import numpy as np
import pytest
import torch

from engine.config import load_settings
from engine.enroll import enroll_user
from engine.errors import ModelMissing
from engine.faces import get_analyzer
from engine.faces.insightface_backend import ARCFACE_TEMPLATE, arcface_matrix, five_points
from tests.conftest import image_array, photo

# The legacy exporter is all the tiny models need; its own deprecation notices are not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


class TinyArcFace(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 4, 4)
        self.fc = torch.nn.Linear(8 * 28 * 28, 512)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class FixedGenderAge(torch.nn.Module):
    """Always 'male, 62 years': [female score, male score, age / 100]."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3)).unsqueeze(1) * 0 + torch.tensor([[0.1, 0.9, 0.62]])


def export(module, size: int, path):
    torch.onnx.export(module, torch.randn(1, 3, size, size), str(path), input_names=["data"],
                      output_names=["out"], dynamic_axes={"data": {0: "n"}}, dynamo=False)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("buffalo_tiny")
    export(TinyArcFace(), 112, folder / "w600k_r50.onnx")
    export(FixedGenderAge(), 96, folder / "genderage.onnx")
    (folder / "det_10g.onnx").write_bytes(b"not a model we use")  # other pack files are skipped
    return folder


@pytest.fixture
def insight(pack):
    return get_analyzer(load_settings(_env_file=None, face_backend="insightface", insightface_model_dir=pack))


def test_embeddings_are_unit_512_vectors_of_the_aligned_face(insight):
    image = image_array("obama/obama1.jpg")
    face = insight.detect(image)[0]
    vector = insight.embed(image, face)
    assert vector.shape == (512,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert insight.distance(vector, insight.embed(image, face)) == 0
    assert insight.threshold == 1.1
    # Embedding a shifted copy of the photo gives the same vector: the face is aligned first.
    shifted = np.ascontiguousarray(np.roll(image, (40, 25), axis=(0, 1)))
    moved = insight.embed(shifted, insight.detect(shifted)[0])
    other = insight.embed(image_array("rose_leslie/rose2.jpg"), insight.detect(image_array("rose_leslie/rose2.jpg"))[0])
    assert insight.distance(vector, moved) < insight.distance(vector, other)


def test_alignment_puts_eyes_nose_and_mouth_on_the_arcface_template(insight):
    image = image_array("biden/biden2.jpg")
    face = insight.detect(image)[0]
    placed = cv2.transform(five_points(face)[None], arcface_matrix(face))[0]
    assert np.abs(placed[:2] - ARCFACE_TEMPLATE[:2]).max() < 4  # eyes
    assert np.abs(placed - ARCFACE_TEMPLATE).max() < 8  # a wide smile moves the mouth corners a little


def test_gender_and_age_come_from_the_pack_and_set_the_trigger(insight, store, settings):
    face = insight.detect(image_array("obama/obama1.jpg"))[0]
    assert face.gender == "male" and face.age == pytest.approx(62, abs=0.5)
    report = enroll_user(store, insight, settings, "55", [photo("obama/obama1.jpg"), photo("obama/obama2.jpg")])
    assert report.trigger == "a mature man"  # no subject given: FaceChain's choice from the attributes
    assert {s.embedding_backend for s in store.accepted_selfies("55")} == {"insightface"}
    assert store.accepted_selfies("55")[0].embedding.shape == (512,)


def test_a_pack_without_a_recognition_model_says_what_to_set(tmp_path):
    export(FixedGenderAge(), 96, tmp_path / "genderage.onnx")
    settings = load_settings(_env_file=None, face_backend="insightface", insightface_model_dir=tmp_path)
    with pytest.raises(ModelMissing, match="No insightface recognition model .* FACECHAIN_INSIGHTFACE_MODEL_DIR"):
        get_analyzer(settings)
