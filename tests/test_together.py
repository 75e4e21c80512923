"""Two members in one picture (`engine/generation/together.py`, the `together` job and CLI), on the tiny
model and real photos. two_people.jpg shows Obama (face 1) and Biden (face 2); the members are Rose
(A) and Obama (B), so the identities must cross over for face 1 to read as A and face 2 as B.

The tiny model draws noise, so identity is checked where a member has no face model yet (their
enrolled face pasted on the photo's own face, through the same ranking, pairing and paste back), and
the drawing mechanics where both have one (each face redrawn with its own adapter, only inside its own
mask). The sheet tests/artifacts/together_sheet.png is for people to look at."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.cli import main
from engine.config import load_settings
from engine.errors import FaceChainError
from engine.generation.generate import PortraitGenerator
from engine.generation.portrait import enrolled_face
from engine.generation.poses import find_pose, load_poses
from engine.generation.redraw import face_region, paste_weight
from engine.generation.swap import photo_faces
from engine.generation.together import Person, draw_scene, head_box, place_faces, redraw_people
from engine.jobs.together_runner import check_faces, together_inputs
from engine.models.base_model import load_base_pipeline
from engine.postprocess.rank import similarity
from engine.preprocess.enroll import enroll_user
from engine.store import Store
from engine.store.together import set_together
from engine.training.train import train_user
from tests.conftest import image_array, photo

ARTIFACTS = Path(__file__).parent / "artifacts"
GROUP = "group/two_people.jpg"


def mirrored(relative: str):
    from engine.preprocess import UploadedPhoto

    image = Image.fromarray(image_array(relative)[:, ::-1].copy())
    path = Path("/tmp") / f"mirrored-{Path(relative).name}"
    image.save(path, quality=95)
    return UploadedPhoto(path.name, path.read_bytes())


@pytest.fixture(scope="module")
def pair(tiny_model, tiny_controlnet, analyzer, tmp_path_factory):
    """Rose and Obama enrolled; `models` has both face models trained (2 steps each)."""
    settings = load_settings(_env_file=None, data_dir=tmp_path_factory.mktemp("together") / "data", device="cpu",
                             base_model=str(tiny_model), vae="", train_resolution=64, portrait_size=64,
                             pose_controlnet=str(tiny_controlnet))
    store = Store(settings.data_dir)
    enroll_user(store, analyzer, settings, "rose", [photo("rose_leslie/rose1.jpg"), photo("rose_leslie/rose2.jpg"),
                                                    mirrored("rose_leslie/rose2.jpg")], subject="woman")
    enroll_user(store, analyzer, settings, "obama", [photo(f"obama/obama{n}.jpg") for n in (1, 2, 3)], subject="man")
    base = load_base_pipeline(settings)
    models = {user: train_user(store, base, settings, user, steps=2) for user in ("rose", "obama")}
    yield settings, store, base, models
    store.close()


def likeness(analyzer, picture: np.ndarray, near, enrolled) -> float:
    found = analyzer.detect(picture)
    face = min(found, key=lambda f: abs(f.box[0] - near.box[0]) + abs(f.box[1] - near.box[1]))
    return similarity(analyzer, analyzer.embed(picture, face), enrolled.embeddings)  # the member's measure, by hand


def test_on_a_two_person_photo_face_1_reads_as_member_a_and_face_2_as_member_b(pair, analyzer):
    settings, store, base, _ = pair
    rose, obama = enrolled_face(store, analyzer, "rose"), enrolled_face(store, analyzer, "obama")
    image, faces = photo_faces(analyzer, settings, photo(GROUP))
    people = [Person(rose, None, "a woman"), Person(obama, None, "a man")]  # no face model: pasted on
    results = redraw_people(PortraitGenerator(base), analyzer, settings, people, image, faces, [5, 6])
    assert results and all(r.similarity is not None for r in results)
    picture = np.asarray(results[0].image)
    first = (likeness(analyzer, picture, faces[0], rose), likeness(analyzer, picture, faces[0], obama))
    second = (likeness(analyzer, picture, faces[1], obama), likeness(analyzer, picture, faces[1], rose))
    assert first[0] > first[1]  # face 1 (Obama in the photo) reads as Rose now
    assert second[0] > second[1]  # face 2 (Biden in the photo) reads as Obama
    # Ranked by the lower likeness as the finished picture shows it: the same measure as here, so the same figure
    # on any CPU (it was each drawing's own, before pasting back blended its edges: 0.34 against 0.42 on one).
    assert results[0].similarity == pytest.approx(min(first[0], second[0]), abs=1e-4)
    assert [r.similarity for r in results] == sorted((r.similarity for r in results), reverse=True)
    write_sheet(image, faces, picture)


def test_each_face_is_redrawn_with_its_own_face_model_inside_its_own_mask_only(pair, analyzer, monkeypatch):
    from engine.generation import together

    settings, store, base, models = pair
    monkeypatch.setattr(together, "or_pasted", lambda *args: args[-1])  # the drawings kept, though noise
    generator = PortraitGenerator(base)
    used = []
    activate = generator._activate
    generator._activate = lambda request: (used.append(request.face_model), activate(request))[1]
    image, faces = photo_faces(analyzer, settings, photo(GROUP))
    people = [Person(enrolled_face(store, analyzer, "rose"), models["rose"].path, "a woman"),
              Person(enrolled_face(store, analyzer, "obama"), models["obama"].path, "a man")]
    results = redraw_people(generator, analyzer, settings, people, image, faces, [3, 4])
    assert used == [models["rose"].path, models["obama"].path]  # face 1 with A's adapter, face 2 with B's
    assert {str(models["rose"].path), str(models["obama"].path)} <= set(generator.loaded_adapters)  # both loaded
    inside = np.zeros(image.shape[:2], bool)
    for face in faces:
        region = face_region(face, image.shape)
        inside[region.top:region.top + region.side, region.left:region.left + region.side] |= \
            paste_weight(face, region) > 0
    assert len(results) == 2
    for result in results:
        changed = np.any(np.asarray(result.image) != image, axis=2)
        assert not changed[~inside].any() and changed[inside].mean() > 0.3


def test_faces_whose_redrawing_reads_less_like_their_member_than_the_paste_are_pasted_and_said(pair, analyzer):
    """The tiny model redraws noise: each face is its member's enrolled face pasted on, one picture (not copies of
    it), and the message says which."""
    from engine.jobs.together_runner import pasted_notice

    settings, store, base, models = pair
    image, faces = photo_faces(analyzer, settings, photo(GROUP))
    people = [Person(enrolled_face(store, analyzer, "rose"), models["rose"].path, "a woman"),
              Person(enrolled_face(store, analyzer, "obama"), None, "a man")]  # no face model: pasted, as asked
    results = redraw_people(PortraitGenerator(base), analyzer, settings, people, image, faces, [3, 4])
    assert len(results) == 1 and results[0].pasted == (0,)
    assert "member who asked" in pasted_notice((0,)) and "member asked is" in pasted_notice((1,))
    assert pasted_notice(()) is None
    people[1] = Person(people[1].enrolled, models["obama"].path, "a man")
    [both] = redraw_people(PortraitGenerator(base), analyzer, settings, people, image, faces, [3, 4])
    assert both.pasted == (0, 1) and "both faces" in pasted_notice(both.pasted)
    pasted_only = redraw_people(PortraitGenerator(base), analyzer, settings, [Person(p.enrolled, None, p.trigger)
                                                                              for p in people], image, faces, [3])
    assert np.array_equal(np.asarray(both.image), np.asarray(pasted_only[0].image))


def test_a_scene_places_both_members_at_the_pose_heads_and_redraws_each(pair, analyzer):
    settings, store, base, models = pair
    generator = PortraitGenerator(base, pose_controlnet=settings.pose_controlnet)
    pose = find_pose(load_poses(), "side-by-side", people=2)
    people = [Person(enrolled_face(store, analyzer, "rose"), models["rose"].path, "a woman"),
              Person(enrolled_face(store, analyzer, "obama"), models["obama"].path, "a man")]
    shares = []
    results = draw_scene(generator, analyzer, settings, people, find_style("studio-headshot"), pose, seed=9, count=2,
                         progress=lambda share, text: shares.append(share))
    assert len(results) == 2 and {r.seed for r in results} == {9, 10}
    assert all(r.image.size == (96, 64) for r in results)  # two people lie 3 wide by 2 high
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0)
    # Noise has no faces: each is placed at its person's head, the first on the left.
    faces = place_faces(analyzer, np.asarray(results[0].image), pose)
    assert faces[0].box[0] < faces[1].box[0] and faces[0].box == head_box(pose.points, 96, 64)


def find_style(style_id: str):
    from engine.styles import load_styles

    return load_styles().get(style_id)


def test_the_faces_on_a_photo_are_checked_in_plain_words():
    assert check_faces(None, 2) == (1, 2)
    assert check_faces(None, 3) is None  # the member chooses from a numbered preview
    assert check_faces((3, 1), 3) == (3, 1)
    with pytest.raises(FaceChainError, match="That photo shows one face: bring one with two people"):
        check_faces(None, 1)
    with pytest.raises(FaceChainError, match="Choose two different faces"):
        check_faces((2, 2), 3)
    with pytest.raises(FaceChainError, match="That photo shows 3 faces: choose two of 1 to 3"):
        check_faces((1, 4), 3)


def test_nothing_of_the_partner_is_read_unless_they_allow_it(pair):
    settings, store, _, _ = pair
    for choice in ("ask", "never"):
        set_together(store, "obama", choice)
        with pytest.raises(FaceChainError, match="This picture can't be drawn: not allowed"):
            together_inputs(store, settings, "rose", "obama", photo=photo(GROUP))
    set_together(store, "obama", "always")
    inputs = together_inputs(store, settings, "rose", "obama", photo=photo(GROUP), seed=1)
    assert [m.trigger for m in inputs.members] == ["a beautiful woman", "a handsome man"]  # A, then B
    set_together(store, "obama", "ask")


def test_the_cli_obeys_consent_and_writes_the_pictures_best_first(pair, monkeypatch, capsys, tmp_path):
    settings = pair[0]
    for name, value in {"DATA_DIR": settings.data_dir, "BASE_MODEL": settings.base_model, "DEVICE": "cpu",
                        "PORTRAIT_SIZE": 64, "POSE_CONTROLNET": settings.pose_controlnet}.items():
        monkeypatch.setenv(f"FACECHAIN_{name}", str(value))
    group = str(Path(__file__).parent / "data" / GROUP)
    assert main(["together", "--user", "rose", "--with", "obama", "--photo", group, "--out", str(tmp_path)]) == 2
    assert "obama has not allowed pictures with rose" in capsys.readouterr().err
    assert main(["users", "set", "obama", "--together", "always", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["together"] == "always"
    assert main(["together", "--user", "rose", "--with", "obama", "--photo", group, "--faces", "2,1", "--seed", "4",
                 "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # The tiny model redraws noise: both faces are pasted from enrolled selfies, one picture, and it says so.
    assert result["faces"] == [2, 1] and result["faces_found"] == 2 and len(result["results"]) == 1
    assert result["results"][0]["pasted"] == ["rose", "obama"] and "both faces" in result["notice"]
    assert all(Path(r["path"]).is_file() for r in result["results"])
    assert main(["together", "--user", "rose", "--with", "obama", "--style", "studio-headshot", "--pose", "waving",
                 "--out", str(tmp_path)]) == 2
    assert "Unknown pose 'waving' for two people: one of" in capsys.readouterr().err
    assert main(["users", "set", "obama", "--together", "ask"]) == 0


def write_sheet(image: np.ndarray, faces, picture: np.ndarray) -> None:
    """Photo | the two members put in it, cropped to the two faces."""
    top = max(0, min(f.box[1] for f in faces) - 60)
    bottom = min(image.shape[0], max(f.box[1] + f.box[3] for f in faces) + 80)
    tiles = [Image.fromarray(np.ascontiguousarray(p[top:bottom])) for p in (image, picture)]
    width = 640
    tiles = [t.resize((width, round(t.height * width / t.width))) for t in tiles]
    sheet = Image.new("RGB", (width, sum(t.height for t in tiles) + 40), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for tile, label in zip(tiles, ["the photo: face 1, face 2", "together: face 1 as member A (Rose), face 2 as B (Obama)"]):
        draw.text((6, y + 4), label, fill="black")
        sheet.paste(tile, (0, y + 20))
        y += tile.height + 20
    ARTIFACTS.mkdir(exist_ok=True)
    sheet.save(ARTIFACTS / "together_sheet.png")


# --- consent, in the store -----------------------------------------------------------------------------

@pytest.fixture
def members(tmp_path):
    store = Store(tmp_path / "data")
    for user in ("ann", "ben", "cat"):
        store.ensure_user(user, "person", "a person")
    yield store
    store.close()


def test_asking_follows_the_partners_choice_and_refusals(members):
    from engine.store.together import answer, ask, together_choice

    store = members
    assert together_choice(store, "ben") == "ask"  # the default
    asked = ask(store, "ann", "ben", {"style": "polaroid"}, "g", "c")
    assert asked.outcome == "asked" and asked.request.state == "asked" and asked.request.params == {"style": "polaroid"}
    assert not asked.request.silent
    answer(store, asked.request.id, "ben", allow=False)
    set_together(store, "ben", "always")
    assert ask(store, "ann", "ben", {}).outcome == "go"
    set_together(store, "ben", "never")  # not asked: answered for him, as a decline would be (tests/test_consent.py)
    never = ask(store, "ann", "ben", {})
    assert never.outcome == "asked" and never.request.silent
    with pytest.raises(FaceChainError, match="Unknown choice 'maybe'"):
        set_together(store, "ben", "maybe")
    with pytest.raises(FaceChainError, match="User nobody is not enrolled"):
        set_together(store, "nobody", "always")


def test_answers_allow_only_that_request_and_a_refusal_for_good_outlasts_always(members):
    from datetime import datetime, timedelta, timezone

    from engine.store.together import answer, ask, expire_due, may_draw

    store = members
    first = ask(store, "ann", "ben", {}).request
    assert not may_draw(store, "ann", "ben", first.id)  # not answered yet
    with pytest.raises(FaceChainError, match="This request is not for you"):
        answer(store, first.id, "cat", allow=True)
    assert answer(store, first.id, "ben", allow=True).state == "allowed"
    assert may_draw(store, "ann", "ben", first.id) and not may_draw(store, "cat", "ben", first.id)
    with pytest.raises(FaceChainError, match="You already answered this request"):
        answer(store, first.id, "ben", allow=False)
    set_together(store, "ben", "never")  # a change of mind stops a picture not drawn yet
    assert not may_draw(store, "ann", "ben", first.id)
    set_together(store, "ben", "ask")

    second = ask(store, "cat", "ben", {}).request
    answer(store, second.id, "ben", allow=False, refuse_for_good=True)
    set_together(store, "ben", "always")
    assert ask(store, "cat", "ben", {}).request.silent and ask(store, "ann", "ben", {}).outcome == "go"
    assert not may_draw(store, "cat", "ben", None) and may_draw(store, "ann", "ben", None)

    set_together(store, "ben", "ask")
    late = ask(store, "ann", "ben", {}).request
    tomorrow = datetime.now(timezone.utc) + timedelta(hours=25)
    assert late.id in [r.id for r in expire_due(store, tomorrow)] and expire_due(store, tomorrow) == []
    with pytest.raises(FaceChainError, match="This request has expired"):
        answer(store, late.id, "ben", allow=True)


def test_forgetting_either_member_erases_their_requests_refusals_and_pictures_together(members):
    from engine.store.together import answer, approve_share, ask

    store = members
    request = ask(store, "ann", "ben", {}).request
    answer(store, request.id, "ben", allow=False, refuse_for_good=True)
    folder = store.private_dir("ann", "portraits")
    (folder / "both.png").write_bytes(b"png")
    with store.transaction():
        picture = store.db["portraits"].insert({"user_id": "ann", "partner_id": "ben", "style": "together", "seed": 1,
                                                "path": store.relative(folder / "both.png"), "nsfw": 0}).last_pk
        store.db["gallery_entries"].insert({"guild_id": "g", "portrait_id": picture, "user_id": "ben",
                                            "channel_id": "c", "message_id": "m", "likes": 0})
    assert approve_share(store, picture, "ann") == {"ann"} and approve_share(store, picture, "ben") == {"ann", "ben"}
    report = store.delete_user("ben")
    assert report.rows_deleted["portraits"] == 1 and report.rows_deleted["together"] >= 2
    assert not (folder / "both.png").exists()  # in ann's folder, but ben was in it
    for table in ("portraits", "gallery_entries", "together_requests", "together_refusals", "share_approvals"):
        assert store.db[table].count == 0, table
    assert store.get_user("ann") is not None


def test_the_cluster_sends_a_picture_together_to_the_actor_holding_most_of_its_face_models(tmp_path):
    from engine.jobs.cluster.dispatcher import ActorPool, ActorSlot
    from engine.jobs.job_types import job_members
    from engine.jobs.queue import Job

    pool = ActorPool(load_settings(_env_file=None, data_dir=tmp_path))
    first, second, third = pool.slots = [ActorSlot(name, None, ready=True) for name in ("a", "b", "c")]
    pool.remember_face(first, "ann")
    pool.remember_face(second, "ann")
    pool.remember_face(second, "ben")
    job = Job(id=1, kind="together", user_id="ann", guild_id=None, channel_id=None, params={"with": "ben"},
              state="queued", attempts=0, progress=0.0, progress_text="", error=None, result=None, created_at="",
              started_at=None, finished_at=None, cancel_requested=False, delivered_at=None)
    assert job_members(job) == ["ann", "ben"]
    assert pool.take(job_members(job), portrait=True) is second
    assert pool.take(["ben"], portrait=True) in (first, third)  # its holder is busy now: one idle


def test_a_request_that_cannot_be_drawn_is_refused_before_anyone_is_asked(pair):
    from bot.backend import Backend, TogetherOrder

    settings, store, _, _ = pair
    backend = Backend(settings.model_copy(update={"pose_controlnet": ""}))
    store.ensure_user("newcomer", "person", "a person")
    cases = [
        ("rose", TogetherOrder("rose"), False, "Choose another member"),
        ("rose", TogetherOrder("obama", style="polaroid"), True, "A photo keeps its own scene"),
        ("rose", TogetherOrder("obama", faces=[1, 2]), False, "face_a and face_b choose faces on a photo"),
        ("newcomer", TogetherOrder("obama"), False, "You have no face model yet"),
        ("newcomer", TogetherOrder("obama"), True, "Enroll a few selfies first"),
        ("rose", TogetherOrder("obama", style="no-such-style"), False, "There is no style 'no-such-style'"),
        ("rose", TogetherOrder("obama"), False, "This bot draws two members together only on a photo"),
    ]
    try:
        for asker, order, on_photo, words in cases:
            with pytest.raises(FaceChainError, match=words):
                backend.check_together(asker, None, order, on_photo)
        backend.check_together("rose", None, TogetherOrder("obama"), True)  # a photo needs no pose model
        # Nothing says whether the partner is enrolled: they are asked, or answered for after a wait.
        backend.check_together("rose", None, TogetherOrder("newcomer"), True)
        backend.check_together("rose", None, TogetherOrder("nobody-here"), True)
    finally:
        backend.close()
