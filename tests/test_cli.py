"""The `facechain` CLI contract: flags, JSON keys and exit codes other tools rely on."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.main import main as bot_main
from engine.cli import main
from tests.conftest import DATA, encode, files_under, image_array
from tests.make_bad_corpus import build_corpus

OBAMA = [str(DATA / "obama" / name) for name in ("obama1.jpg", "obama2.jpg", "obama3.jpg")]
BIN = Path(sys.executable).parent


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(folder))
    return folder


def run_json(capsys, *argv: str) -> tuple[int, object]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_enroll_stores_accepted_photos_and_reports_rejections(capsys, data_dir):
    stranger, group = str(DATA / "biden" / "biden1.jpg"), str(DATA / "group" / "two_people.jpg")
    code, report = run_json(capsys, "enroll", "--user", "1234", "--subject", "man", *OBAMA, stranger, group)
    assert code == 0
    assert report["user"] == "1234" and report["trigger"] == "a handsome man"
    assert report["accepted"] == OBAMA
    assert {(r["path"], r["reason"]) for r in report["rejected"]} == {(stranger, "different_person"), (group, "multiple_faces")}
    assert all(set(r) >= {"path", "reason", "detail"} for r in report["rejected"])
    assert len(files_under(data_dir / "users" / "1234" / "selfies")) == 3

    code, users = run_json(capsys, "users", "list")
    assert [(u["id"], u["selfies"]) for u in users] == [("1234", 3)]


def test_enrolling_more_photos_later_adds_to_the_set(capsys, data_dir):
    main(["enroll", "--user", "1234", *OBAMA[:2], "--json"])
    capsys.readouterr()
    code, report = run_json(capsys, "enroll", "--user", "1234", OBAMA[1], OBAMA[2], str(DATA / "rose_leslie" / "rose1.jpg"))
    assert code == 0
    assert report["accepted"] == [OBAMA[2]]
    assert [r["reason"] for r in report["rejected"]] == ["duplicate", "different_person"]
    assert report["enrolled_total"] == 3


def test_rotated_and_exif_rotated_copies_are_enrolled(capsys, data_dir, tmp_path):
    from engine.preprocess.align import rotate

    paths = []
    for name, degrees in (("obama1.jpg", 90), ("obama2.jpg", 180), ("obama3.jpg", 270)):
        path = tmp_path / f"turned_{name}"
        path.write_bytes(encode(rotate(image_array(f"obama/{name}"), degrees)))
        paths.append(str(path))
    exif = tmp_path / "exif6.jpg"
    exif.write_bytes(build_corpus()["exif_orientation_6.jpg"][0])
    code, report = run_json(capsys, "enroll", "--user", "77", *paths)
    assert code == 0 and report["accepted"] == paths
    main(["users", "forget", "77"])  # the EXIF copy is of the same face: one face, one member
    capsys.readouterr()
    code, report = run_json(capsys, "enroll", "--user", "78", str(exif))
    assert code == 0 and report["accepted"] == [str(exif)]


def test_users_show_numbers_the_photos_and_remove_photo_deletes_one_and_retrains(capsys, data_dir):
    main(["enroll", "--user", "1234", "--subject", "man", *OBAMA, "--json"])
    capsys.readouterr()
    code, member = run_json(capsys, "users", "show", "1234")
    assert code == 0 and member["trigger"] == "a handsome man" and member["face_model"] is None
    assert [p["number"] for p in member["photos"]] == [1, 2, 3]
    second = Path(member["photos"][1]["path"])
    assert second.is_file()
    code, removed = run_json(capsys, "users", "remove-photo", "1234", "2")
    assert code == 0 and removed["removed"] == 2 and removed["remaining"] == 2 and removed["train_job_id"]
    assert removed["name"] == member["photos"][1]["name"] and not second.exists()
    code, after = run_json(capsys, "users", "show", "1234")
    assert [p["name"] for p in after["photos"]] == [member["photos"][0]["name"], member["photos"][2]["name"]]
    code, jobs = run_json(capsys, "jobs", "list", "--user", "1234")
    assert [(j["kind"], j["state"]) for j in jobs] == [("train", "queued")]
    assert main(["users", "remove-photo", "1234", "9"]) == 2
    assert "There is no photo 9: you have 2 (1 to 2)" in capsys.readouterr().err
    assert main(["users", "show", "nobody"]) == 2
    assert "Nothing is stored for nobody" in capsys.readouterr().err


def test_a_new_user_is_a_person_until_someone_chooses_and_a_change_retrains(capsys, data_dir):
    assert main(["enroll", "--user", "1234", *OBAMA[:2]]) == 0
    said = capsys.readouterr().out
    assert 'describe 1234 as "a person"' in said and "facechain users set 1234 --subject" in said
    code, member = run_json(capsys, "users", "show", "1234")
    assert member["subject"] == "person" and member["trigger"] == "a person"
    assert member["suggested_subject"] is None  # dlib reads no gender or age: nothing is guessed

    code, changed = run_json(capsys, "users", "set", "1234", "--subject", "woman")
    assert code == 0 and changed["trigger"] == "a beautiful woman" and changed["changed"]
    code, jobs = run_json(capsys, "jobs", "list", "--user", "1234")
    assert [(j["kind"], j["state"], j["id"]) for j in jobs] == [("train", "queued", changed["train_job_id"])]
    code, again = run_json(capsys, "users", "set", "1234", "--subject", "woman")
    assert not again["changed"] and again["train_job_id"] is None
    code, report = run_json(capsys, "enroll", "--user", "1234", OBAMA[2])  # more photos keep the choice
    assert report["subject"] == "woman" and report["trigger"] == "a beautiful woman"

    with pytest.raises(SystemExit) as refused:
        main(["users", "set", "1234", "--subject", "cat"])
    assert refused.value.code == 2 and "invalid choice: 'cat'" in capsys.readouterr().err
    assert main(["users", "set", "nobody", "--subject", "man"]) == 2
    assert "Nothing is stored for nobody" in capsys.readouterr().err


def test_a_face_engines_reading_is_a_suggestion_never_the_description(store, settings):
    """insightface reads gender and age: the reading is kept beside the member's choice, never used for it."""
    from engine.faces import get_analyzer
    from engine.preprocess import preprocess_photos
    from engine.preprocess.enroll import CheckedPhotos, EnrollInputs, record_enrollment
    from tests.conftest import photo

    result = preprocess_photos([photo("obama/obama1.jpg")], get_analyzer(settings), settings)
    for accepted in result.accepted:
        accepted.gender, accepted.age = "female", 31.0
    inputs = EnrollInputs("55", [], None, set(), [])
    report = record_enrollment(store, inputs, CheckedPhotos(result, "insightface"))
    assert report.subject == "person" and report.trigger == "a person" and report.suggested_subject == "woman"
    assert store.get_user("55").suggested_subject == "woman" and store.get_user("55").trigger == "a person"


def test_enroll_with_no_usable_photo_exits_2_with_the_report(capsys, data_dir, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    code, report = run_json(capsys, "enroll", "--user", "9", str(empty), str(DATA / "group" / "two_people.jpg"))
    assert code == 2
    assert report["accepted"] == []
    assert [r["reason"] for r in report["rejected"]] == ["unreadable", "multiple_faces"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["enroll", "--user", "../../etc", "x.jpg"], "error: File not found: x.jpg"),
        (["enroll", "--user", "../../etc", str(DATA / "obama" / "obama1.jpg")], "error: Invalid user id '../../etc'"),
        (["faces", "compare", str(DATA / "obama" / "obama1.jpg"), "missing.jpg"], "error: File not found: missing.jpg"),
    ],
)
def test_user_errors_are_one_line_on_stderr_with_exit_2(capsys, data_dir, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


def test_too_many_photos_for_one_enrollment(capsys, data_dir, monkeypatch):
    monkeypatch.setenv("FACECHAIN_MAX_PHOTOS_PER_ENROLL", "2")
    assert main(["enroll", "--user", "5", *OBAMA]) == 2
    assert "3 photos given; at most 2" in capsys.readouterr().err


def test_a_bad_setting_stops_the_cli_with_one_line(capsys, data_dir, monkeypatch):
    monkeypatch.setenv("FACECHAIN_DEVICE", "tpu")
    assert main(["users", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid setting: FACECHAIN_DEVICE") and err.count("\n") == 1


def test_faces_analyze_json(capsys, data_dir):
    group = str(DATA / "group" / "two_people.jpg")
    code, results = run_json(capsys, "faces", "analyze", OBAMA[0], group, "nowhere.jpg")
    assert code == 0
    assert [r["path"] for r in results] == [OBAMA[0], group, "nowhere.jpg"]
    assert [len(r["faces"]) for r in results] == [1, 2, 0]
    assert results[0]["error"] is None and "not found" in results[2]["error"]
    face = results[0]["faces"][0]
    assert set(face) == {"box", "score", "landmarks"}
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 68


def test_faces_compare_json_and_no_face(capsys, data_dir, tmp_path):
    code, same = run_json(capsys, "faces", "compare", OBAMA[0], OBAMA[1])
    assert code == 0 and same["same_person"] is True and same["threshold"] == 0.6
    code, different = run_json(capsys, "faces", "compare", OBAMA[0], str(DATA / "rose_leslie" / "rose1.jpg"))
    assert different["same_person"] is False and different["distance"] > 0.6
    blank = tmp_path / "blank.png"
    blank.write_bytes(build_corpus()["one_pixel.png"][0])
    assert main(["faces", "compare", OBAMA[0], str(blank), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no face found" in captured.err and captured.err.count("\n") == 1


def test_forget_leaves_nothing_on_disk_or_in_the_db(capsys, data_dir):
    main(["enroll", "--user", "1234", *OBAMA, str(DATA / "biden" / "biden1.jpg")])
    main(["enroll", "--user", "999", str(DATA / "rose_leslie" / "rose1.jpg")])
    capsys.readouterr()
    code, report = run_json(capsys, "users", "forget", "1234")
    assert code == 0 and report["files_deleted"] == 3 and report["rows_deleted"]["selfies"] == 4
    assert not (data_dir / "users" / "1234").exists()
    db = sqlite3.connect(data_dir / "facechain.db")
    for table in ("users", "selfies", "face_models", "jobs", "portraits", "gallery_entries"):
        column = "id" if table == "users" else "user_id"
        assert db.execute(f"select count(*) from {table} where {column} = '1234'").fetchone()[0] == 0
    # Nothing of 1234 anywhere: every remaining file belongs to the db or to user 999.
    for path in files_under(data_dir):
        assert path.name.startswith("facechain.db") or "999" in path.parts, path
    assert len(files_under(data_dir / "users" / "999")) == 1


def test_doctor_reports_each_check_with_a_fix(capsys, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FACECHAIN_BASE_MODEL", str(tmp_path / "no-model-here"))
    code, checks = run_json(capsys, "doctor")
    by_name = {check["name"]: check for check in checks}
    styles = {name for name in by_name if name.startswith("style ")}
    assert set(by_name) - styles == {"python packages", "torch device", "base model", "fast-mode LoRA", "face parser",
                                     "pose ControlNet", "pose detector (people)", "pose detector (body points)",
                                     "upscaler (Upscale x4)", "face models", "safety check", "data dir", "worker",
                                     "discord token", "cluster", "instant portraits"}
    assert by_name["instant portraits"]["status"] == "ok" and "off" in by_name["instant portraits"]["detail"]
    assert "non-commercial" in by_name["instant portraits"]["fix"]  # the licence is named before it is turned on
    assert by_name["pose ControlNet"]["status"] == "warn" and "models pull" in by_name["pose ControlNet"]["fix"]
    assert by_name["upscaler (Upscale x4)"]["status"] == "warn"  # not downloaded: only Upscale x4 waits for it
    assert by_name["face parser"]["status"] == "warn"  # not downloaded: the landmarks' masks serve meanwhile
    assert "style polaroid LoRA" in styles and all(by_name[name]["status"] == "warn" for name in styles)
    assert by_name["fast-mode LoRA"]["status"] == "warn" and "models pull" in by_name["fast-mode LoRA"]["fix"]
    assert by_name["python packages"]["status"] == "ok"
    assert by_name["face models"]["status"] == "ok"
    assert by_name["data dir"]["status"] == "ok"
    assert by_name["cluster"]["status"] == "ok" and "off" in by_name["cluster"]["detail"]
    assert by_name["torch device"]["status"] in {"ok", "warn"}
    for failing in ("base model", "discord token"):
        assert by_name[failing]["status"] == "fail" and by_name[failing]["fix"]
    assert code == 1

    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    monkeypatch.setenv("FACECHAIN_BASE_MODEL", str(model))
    monkeypatch.setenv("FACECHAIN_DISCORD_TOKEN", "aaa.bbb.ccc")
    code, checks = run_json(capsys, "doctor")
    assert code == 0 and all(check["status"] != "fail" for check in checks)


def test_doctor_names_an_unwritable_data_dir(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    monkeypatch.setenv("FACECHAIN_DATA_DIR", str(blocker / "data"))
    _, checks = run_json(capsys, "doctor")
    data = next(check for check in checks if check["name"] == "data dir")
    assert data["status"] == "fail" and "FACECHAIN_DATA_DIR" in data["fix"]


def test_model_references_are_told_apart(tmp_path):
    from engine.models.references import parse_model_reference

    assert parse_model_reference("modelscope:ly261666/cv_portrait_model").kind == "modelscope"
    assert parse_model_reference("SG161222/Realistic_Vision_V5.1_noVAE").kind == "huggingface"
    assert parse_model_reference(str(tmp_path)).kind == "local"
    assert parse_model_reference("./models/sd15").kind == "local"


def test_bot_check_names_the_missing_token(capsys, monkeypatch):
    assert bot_main(["--check"]) == 2
    assert "FACECHAIN_DISCORD_TOKEN is not set" in capsys.readouterr().err
    monkeypatch.setenv("FACECHAIN_DISCORD_TOKEN", "aaa.bbb.ccc")
    assert bot_main(["--check"]) == 0


def test_the_installed_console_scripts_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECHAIN_")}
    env["FACECHAIN_DATA_DIR"] = str(tmp_path / "data")
    facechain = shutil.which("facechain", path=str(BIN)) or "facechain"
    done = subprocess.run([facechain, "faces", "compare", OBAMA[0], OBAMA[2], "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["same_person"] is True
    bot = subprocess.run([shutil.which("facechain-bot", path=str(BIN)) or "facechain-bot", "--check"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bot.returncode == 2 and "FACECHAIN_DISCORD_TOKEN" in bot.stderr


def test_train_and_portrait_can_be_queued_for_the_worker(capsys, data_dir):
    main(["enroll", "--user", "1234", "--subject", "man", *OBAMA, "--json"])
    capsys.readouterr()
    code, train = run_json(capsys, "train", "--user", "1234", "--steps", "3", "--queue")
    assert code == 0 and isinstance(train["job_id"], int)
    code, portrait = run_json(capsys, "portrait", "--user", "1234", "--style", "anime", "--count", "2", "--queue",
                              "--prompt", "holding a guitar")
    assert code == 0 and portrait["job_id"] > train["job_id"]
    code, jobs = run_json(capsys, "jobs", "list", "--user", "1234")
    by_id = {job["id"]: job for job in jobs}
    assert by_id[train["job_id"]]["ran_on"] is None  # not run yet
    assert by_id[train["job_id"]]["params"] == {"steps": 3}
    queued = by_id[portrait["job_id"]]["params"]
    assert queued["wait_for_training"] is True and queued["prompt"] == "holding a guitar" and queued["count"] == 2
    assert main(["portrait", "--user", "ghost", "--style", "anime", "--queue"]) == 2
    assert "no trained face model yet" in capsys.readouterr().err
    assert main(["portrait", "--user", "1234", "--style", "anime", "--queue", "--pose", OBAMA[0]]) == 2
    assert "--queue takes a preset pose: a pose photo is read here" in capsys.readouterr().err
    assert main(["train", "--user", "ghost", "--queue"]) == 2
    assert "no enrolled selfies" in capsys.readouterr().err
    assert main(["portrait", "--user", "1234", "--style", "anime"]) == 2
    assert "--out DIR" in capsys.readouterr().err
