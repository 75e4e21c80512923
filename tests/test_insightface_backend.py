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
from engine.errors import ModelMissing
from engine.faces import get_analyzer
from engine.faces.insightface_backend import ARCFACE_TEMPLATE, arcface_matrix, five_points
from engine.preprocess.enroll import enroll_user
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


def test_gender_and_age_come_from_the_pack_and_only_suggest_a_subject(insight, store, settings):
    face = insight.detect(image_array("obama/obama1.jpg"))[0]
    assert face.gender == "male" and face.age == pytest.approx(62, abs=0.5)
    report = enroll_user(store, insight, settings, "55", [photo("obama/obama1.jpg"), photo("obama/obama2.jpg")])
    # No subject given: FaceChain's reading of the attributes is shown as a suggestion, never applied.
    assert report.suggested_subject == "man" and report.subject == "person" and report.trigger == "a person"
    assert store.get_user("55").suggested_subject == "man"
    assert {s.embedding_backend for s in store.accepted_selfies("55")} == {"insightface"}
    assert store.accepted_selfies("55")[0].embedding.shape == (512,)


def test_a_pack_without_a_recognition_model_says_what_to_set(tmp_path):
    export(FixedGenderAge(), 96, tmp_path / "genderage.onnx")
    settings = load_settings(_env_file=None, face_backend="insightface", insightface_model_dir=tmp_path)
    with pytest.raises(ModelMissing, match="No insightface recognition model .* FACECHAIN_INSIGHTFACE_MODEL_DIR"):
        get_analyzer(settings)


# --- the learned swapper ------------------------------------------------------------------------------

class IdentitySwapper(torch.nn.Module):
    """Gives back the aligned face unchanged: pasting it back must leave the photo as it was."""

    def forward(self, target, source):
        return target + 0 * source.sum()


class LatentShade(torch.nn.Module):
    """Paints the face in a grey level set by the identity latent's first value."""

    def forward(self, target, source):
        return target * 0 + ((source[:, 0] + 1) / 2).reshape(-1, 1, 1, 1)


def export_swapper(module, path):
    import onnx
    from onnx import numpy_helper

    torch.onnx.export(module, (torch.rand(1, 3, 128, 128), torch.rand(1, 512)), str(path),
                      input_names=["target", "source"], output_names=["output"], dynamo=False)
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.eye(512, dtype=np.float32), "emap"))
    onnx.save(model, str(path))
    return path


def test_the_swapper_pastes_the_face_back_exactly_where_it_was(insight, tmp_path):
    from engine.postprocess.fusion import face_mask
    from engine.postprocess.swapper import LearnedSwapper

    swapper = LearnedSwapper(export_swapper(IdentitySwapper(), tmp_path / "identity.onnx"))
    image = image_array("obama/obama4_small.jpg")  # a ~110 px face: the 128 px round trip loses little
    face = insight.detect(image)[0]
    swapped = swapper.swap(image, face, np.ones(512, np.float32))
    mask = face_mask(image.shape, face)
    assert np.array_equal(swapped[mask == 0], image[mask == 0])
    assert np.abs(swapped[mask > 0.5].astype(int) - image[mask > 0.5]).mean() < 6


def test_the_identity_drives_the_swapped_face(insight, tmp_path):
    from engine.postprocess.swapper import LearnedSwapper

    swapper = LearnedSwapper(export_swapper(LatentShade(), tmp_path / "shade.onnx"))
    image = image_array("obama/obama1.jpg")
    face = insight.detect(image)[0]
    nose = tuple(int(v) for v in face.landmarks[30])
    toward = np.zeros(512, np.float32)
    toward[0] = 1
    assert swapper.swap(image, face, toward)[nose[1], nose[0]].min() > 240  # latent 1 -> white
    assert swapper.swap(image, face, -toward)[nose[1], nose[0]].max() < 15  # latent -1 -> black


def test_the_swapper_setting_is_checked(pack, tmp_path, capsys, monkeypatch):
    from engine.cli import main
    from engine.errors import SettingsError
    from engine.postprocess import make_fuser
    from tests.conftest import DATA

    model = export_swapper(LatentShade(), tmp_path / "shade.onnx")
    dlib_settings = load_settings(_env_file=None, face_swapper_model=model)
    with pytest.raises(SettingsError, match="needs FACECHAIN_FACE_BACKEND=insightface"):
        make_fuser(dlib_settings, get_analyzer(dlib_settings))
    missing = load_settings(_env_file=None, face_backend="insightface", insightface_model_dir=pack,
                            face_swapper_model=tmp_path / "nope.onnx")
    with pytest.raises(ModelMissing, match="does not exist"):
        make_fuser(missing, get_analyzer(missing))

    for name, value in {"FACE_BACKEND": "insightface", "INSIGHTFACE_MODEL_DIR": pack, "FACE_SWAPPER_MODEL": model}.items():
        monkeypatch.setenv(f"FACECHAIN_{name}", str(value))
    out = tmp_path / "swapped.png"
    assert main(["fuse", "--face", str(DATA / "obama/obama1.jpg"), "--template", str(DATA / "biden/biden2.jpg"),
                 "--out", str(out)]) == 0
    assert out.is_file()
