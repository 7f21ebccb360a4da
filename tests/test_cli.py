"""The `kpr` commands (synth, train, search, maintain, serve), their error lines, and the image-query helpers."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_search import BOOTS_TWIN, build_store, det_id, identity_of, track_id

from kpr_model.checkpoint_files import read_model_id
from kpr_model.config import KPRConfig
from pipelines.cli import build_parser, main
from pipelines.errors import UserError
from pipelines.query import parse_parts, part_names
from pipelines.query_image import QueryEncoder, decode_image
from pipelines.query_prompt import prompt_from_json, read_prompt
from storage import Store
from support import png_bytes


# Each command with an option only its own help shows: removing a command, or its option, fails the test.
COMMAND_OPTIONS = {"ingest": "--backend", "search": "--tracklet", "calibrate": "--record-in", "maintain": "--keep-days",
                   "serve": "--max-upload-mb", "synth": "--identities", "train": "--workers", "bench": "--baseline",
                   "demo": "--train-minutes"}


@pytest.mark.parametrize("command, option", COMMAND_OPTIONS.items())
def test_each_command_has_its_own_help(command, option, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: kpr {command} ") and option in text


def test_synth_then_train_writes_archive_crops_and_a_checkpoint(tmp_path, capsys):
    archive, crops, ckpt = tmp_path / "archive", tmp_path / "crops", tmp_path / "ckpt"
    assert main(["synth", str(archive), "--seed", "4", "--identities", "6", "--cameras", "2", "--duration", "20",
                 "--crops", str(crops)]) == 0
    videos = sorted(archive.rglob("*.mp4"))
    assert len(videos) == 2 and all(v.with_suffix(".json").is_file() for v in videos)
    assert json.loads(videos[0].with_suffix(".json").read_text())["format"] == "kpr-sidecar-v1"
    assert main(["train", "--data", str(crops), "--out", str(ckpt), "--preset", "tiny", "--epochs", "2"]) == 0
    assert read_model_id(ckpt) in capsys.readouterr().out


@pytest.mark.parametrize(("option", "value", "expected"), [("--cameras", "12", "must be 2..9, got 12"),
                                                        ("--identities", "0", "must be > 0, got 0"),
                                                        ("--duration", "0", "must be > 0, got 0")])
def test_synth_refuses_a_world_it_cannot_render_in_one_line(tmp_path, capsys, option, value, expected):
    assert main(["synth", str(tmp_path / "archive"), option, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kpr synth: error:") and expected in err[0]
    assert not (tmp_path / "archive").exists()


def test_train_on_a_wrong_folder_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "query").mkdir()
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bounding_box_train" in err[0]


# --- kpr search / maintain / serve on a synthetic store (tests/test_search.py builds it) ---

@pytest.fixture(scope="module")
def synthetic_db(tiny_checkpoint, tmp_path_factory) -> Path:
    """The synthetic search store, with the tiny checkpoint's embedding size and model_id so image queries work."""
    path = tmp_path_factory.mktemp("cli_search") / "db"
    build_store(path, dim=KPRConfig.tiny().embed_dim, model_id=read_model_id(tiny_checkpoint))
    return path


def _hit_lines(capsys) -> list[list[str]]:
    """The result rows of a plain `kpr search` table (header dropped), split into columns."""
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["rank", "distance", "camera"]
    return [line.split() for line in lines[1:]]


def _error_line(capsys) -> str:
    """The single stderr line of a failed command (and no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_search_by_tracklet_prints_one_row_per_person_with_date_and_time(synthetic_db, capsys):
    assert main(["search", "--db", str(synthetic_db), "--tracklet", track_id(1, 4), "-k", "4"]) == 0
    rows = _hit_lines(capsys)
    assert len(rows) == 4 and len({row[-1] for row in rows}) == 4
    assert all(row[2] != "cam1" for row in rows)
    assert {row[-1] for row in rows[:2]} == {track_id(0, 4), track_id(2, 4)}
    assert all(identity_of(row[6]) == 4 and row[5] == "3/3" for row in rows[:2])
    assert all(row[3] == "2026-01-01" and row[4].count(":") == 4 and ".." in row[4] for row in rows)


def test_search_with_detections_prints_one_row_per_detection(synthetic_db, capsys):
    assert main(["search", "--db", str(synthetic_db), "--tracklet", track_id(1, 4), "-k", "4", "--detections"]) == 0
    rows = _hit_lines(capsys)
    assert len(rows) == 4
    assert all(row[2] != "cam1" for row in rows)
    assert [identity_of(row[-1]) for row in rows] == [4] * 4
    assert all(row[6] == track_id(int(row[2][-1]), 4) for row in rows)
    assert all(0.8 <= float(row[7]) <= 1.0 for row in rows)


def test_feet_search_grouped_with_an_html_page(synthetic_db, tmp_path, capsys):
    page = tmp_path / "feet.html"
    assert main(["search", "--db", str(synthetic_db), "--detection", det_id(0, 0, 0), "--part", "left_foot",
                 "--part", "8", "-k", "12", "--group", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    cameras = [line for line in out.splitlines() if line.startswith("camera ")]
    tracks = [line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("  track ")]
    assert len(cameras) == 2 and "12" not in cameras[0].split(",")[0]
    assert sorted(tracks) == sorted(track_id(c, p) for c in (1, 2) for p in (0, BOOTS_TWIN))
    text = page.read_text()
    assert text.count("<details>") == 12 and "left_foot" in text and "vis " in text
    assert all(det_id(c, BOOTS_TWIN, n) in text for c in (1, 2) for n in range(3))


def test_min_visibility_and_rerank_flags(synthetic_db, capsys):
    faint = {det_id(2, 1, n) for n in range(3)}
    assert main(["search", "--db", str(synthetic_db), "--detection", det_id(0, 1, 0), "-k", "6", "--detections"]) == 0
    assert faint <= {row[-1] for row in _hit_lines(capsys)}
    assert main(["search", "--db", str(synthetic_db), "--detection", det_id(0, 1, 0), "-k", "6", "--detections",
                 "--min-visibility", "0.5", "--rerank"]) == 0
    rows = _hit_lines(capsys)
    assert not faint & {row[-1] for row in rows} and all(float(row[7]) >= 0.5 for row in rows)


def test_image_query_with_clicked_keypoints(synthetic_db, tiny_checkpoint, tmp_path, capsys):
    crop, prompt = tmp_path / "q.png", tmp_path / "kp.json"
    cv2.imwrite(str(crop), np.full((64, 32, 3), 120, np.uint8))
    prompt.write_text(json.dumps({"positive": [{"joint": "left_ankle", "x": 12, "y": 60}, {"joint": 0, "x": 16, "y": 6}],
                                  "negative": [{"x": 30, "y": 30}]}))
    assert main(["search", "--db", str(synthetic_db), "--image", str(crop), "--model", str(tiny_checkpoint),
                 "--keypoints", str(prompt), "-k", "3"]) == 0
    assert len(_hit_lines(capsys)) == 3


BAD_SEARCHES = [
    (["--detection", "c0-p0-0", "--part", "boots"], "unknown part 'boots'"),
    (["--detection", "c0-p0-0", "--part", "9"], "a number 1..8"),
    (["--detection", "c0-p0-0", "--since", "yesterday"], "not a time"),
    (["--detection", "c0-p0-0", "--since", "2026-01-02", "--until", "2026-01-01"], "empty time window"),
    (["--detection", "c0-p0-0", "--min-visibility", "1.5"], "between 0 and 1"),
    (["--detection", "c0-p0-0", "-k", "0"], "must be > 0"),
    (["--detection", "nope"], "unknown detection id 'nope'"),
    (["--tracklet", "nope"], "unknown tracklet id 'nope'"),
    (["--detection", "c2-p3-0", "--part", "left_foot"], "does not show"),
    ([], "one of the arguments --detection --tracklet --identity --image is required"),
    (["--detection", "c0-p0-0", "--keypoints", "{kp}"], "--keypoints goes with --image"),
    (["--image", "{image}"], "--image needs --model"),
    (["--image", "{text}", "--model", "{model}"], "cannot read query image"),
    (["--image", "{image}", "--model", "{model}", "--keypoints", "{broken}"], "not a readable JSON file"),
    (["--image", "{image}", "--model", "{model}", "--keypoints", "{outside}"], "left_ankle at (40, 60) lies outside the 32x64 image"),
    (["--image", "{image}", "--model", "{model}", "--keypoints", "{badjoint}"], "joint must be a COCO keypoint name"),
    (["--image", "{image}", "--model", "{model}", "--keypoints", "{short}"], "17 COCO keypoints"),
    (["--image", "{image}", "--model", "{tmp}/nomodel"], "nomodel"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_SEARCHES, ids=[e for _, e in BAD_SEARCHES])
def test_bad_search_input_is_one_line_and_exit_2(synthetic_db, tiny_checkpoint, tmp_path, capsys, args, expected):
    files = {"image": tmp_path / "q.png", "text": tmp_path / "q.jpg", "kp": tmp_path / "kp.json",
             "broken": tmp_path / "broken.json", "outside": tmp_path / "outside.json",
             "badjoint": tmp_path / "badjoint.json", "short": tmp_path / "short.json"}
    cv2.imwrite(str(files["image"]), np.full((64, 32, 3), 90, np.uint8))
    files["text"].write_text("hello")
    files["kp"].write_text(json.dumps({"positive": []}))
    files["broken"].write_text("{not json")
    files["outside"].write_text(json.dumps({"positive": [{"joint": "left_ankle", "x": 40, "y": 60}]}))
    files["badjoint"].write_text(json.dumps({"positive": [{"joint": "tail", "x": 4, "y": 6}]}))
    files["short"].write_text(json.dumps([[1, 2, 1]] * 5))
    names = {**{k: str(v) for k, v in files.items()}, "model": str(tiny_checkpoint), "tmp": str(tmp_path)}
    assert main(["search", "--db", str(synthetic_db), *[a.format(**names) for a in args]]) == 2
    assert expected in _error_line(capsys)


def test_maintain_compacts_and_reports(tmp_path, capsys):
    db = tmp_path / "db"
    build_store(db)
    assert main(["maintain", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "detections: 54" in out and "fragments_after: 1" in out and "detections.detection_id:" in out
    assert main(["maintain", "--db", str(tmp_path / "nostore")]) == 2
    assert "no store" in _error_line(capsys)
    assert main(["maintain", "--db", str(db), "--keep-days", "-1"]) == 2
    assert ">= 0" in _error_line(capsys)


def test_serve_refuses_bad_settings_in_one_line(tmp_path, capsys):
    assert main(["serve", "--db", str(tmp_path / "db"), "--port", "70000"]) == 2
    assert "port number" in _error_line(capsys)
    assert main(["serve", "--db", str(tmp_path / "nostore")]) == 2
    assert "no store" in _error_line(capsys)


# --- pipelines/query*.py: what `kpr search` and the web app share ---

def test_decode_image_gives_rgb_and_refuses_non_images():
    ok, data = cv2.imencode(".png", np.dstack([np.full((8, 4), c, np.uint8) for c in (10, 20, 30)]))  # BGR
    pixels = decode_image(data.tobytes())
    assert pixels.shape == (8, 4, 3) and pixels.dtype == np.uint8 and pixels[0, 0].tolist() == [30, 20, 10]
    for bad, message in ((b"", "empty"), (b"hello", "not an image"), (png_bytes(64, 64), "too large")):
        with pytest.raises(UserError, match=message):
            decode_image(bad, max_pixels=1000)


def test_prompts_take_clicks_and_skeletons_as_the_encoders_skeletons():
    prompt = prompt_from_json({"positive": [{"joint": "right_ankle", "x": 10.5, "y": 60}],
                               "negative": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}, "kp")
    positive, negative = prompt.positive, prompt.negative
    assert positive.shape == (17, 3) and positive[16].tolist() == [10.5, 60, 1] and positive[:16, 2].sum() == 0
    assert negative.shape == (2, 17, 3) and negative[:, 0].tolist() == [[1, 2, 1], [3, 4, 1]] and negative[:, 1:].sum() == 0
    assert (prompt.target_points, prompt.occluder_points) == (1, 2)
    prompt.check_inside(32, 64)
    skeleton = [[i, i, 1.0] for i in range(17)]
    prompt = prompt_from_json({"keypoints": skeleton, "negative_keypoints": [skeleton]}, "kp")
    assert prompt.positive.tolist() == skeleton and prompt.negative.tolist() == [skeleton]
    empty = prompt_from_json({}, "kp")
    assert empty.positive is None and empty.negative.shape == (0, 17, 3) and empty.target_points == 0
    for bad, message in (({"positive": [{"joint": 3, "x": 1, "y": 1}, {"joint": "left_ear", "x": 2, "y": 2}]}, "twice"),
                         ({"positive": [{"joint": 0, "x": "1", "y": 2}]}, "kp: positive point 1: x must be a finite number"),
                         ({"positive": "nose"}, "must be a list"),
                         ({"clicks": []}, "unknown key")):
        with pytest.raises(UserError, match=message):
            prompt_from_json(bad, "kp")
    with pytest.raises(UserError, match="kp: negative 1 at"):
        prompt_from_json({"negative": [{"x": -1, "y": 2}]}, "kp").check_inside(32, 64)


def test_prompt_files_in_every_form(tmp_path):
    path = tmp_path / "kp.json"

    def skeleton(x: float, y: float, conf: float = 2.0) -> list:
        return [[x + i, y + i, conf] for i in range(17)]

    path.write_text(json.dumps(skeleton(1, 1, 0.9)))
    prompt = read_prompt(path)
    assert prompt.positive.shape == (17, 3) and prompt.negative.shape == (0, 17, 3) and prompt.source == str(path)
    path.write_text(json.dumps([{"keypoints": skeleton(1, 1), "is_target": False},
                                {"keypoints": skeleton(2, 2), "is_target": True}]))
    prompt = read_prompt(path)
    assert prompt.positive[0, 0] == 2 and prompt.negative.shape == (1, 17, 3)
    path.write_text(json.dumps({"keypoints": skeleton(1, 1)[:5]}))
    with pytest.raises(UserError, match="17 COCO keypoints"):
        read_prompt(path)
    with pytest.raises(UserError, match="keypoints file not found"):
        read_prompt(tmp_path / "none.json")


def test_parse_parts_takes_names_and_numbers():
    assert parse_parts(["left_foot", "8", "Right Foot"], 8) == [6, 7]
    assert parse_parts(["2"], 3) == [1] and part_names(3) == ["part 1", "part 2", "part 3"]
    assert part_names(5) == ["head", "upper_arms_torso", "lower_arms_torso", "legs", "feet"]  # five_v
    assert parse_parts(["Lower arms torso", "5"], 5) == [2, 4]
    with pytest.raises(UserError, match="left_foot"):
        parse_parts(["0"], 8)


def test_query_encoder_uses_both_prompts(tmp_path):
    import torch

    from kpr_model.checkpoint import save_checkpoint
    from kpr_model.model import KPR

    torch.manual_seed(2)
    config = KPRConfig.tiny()
    model = KPR(config).eval()
    torch.nn.init.normal_(model.backbone.masks_patch_embed.weight, std=0.5)  # a trained tokenizer is not zero
    save_checkpoint(model, config, tmp_path / "prompted")
    encoder = QueryEncoder(tmp_path / "prompted")
    image = decode_image(png_bytes(64, 32))
    with_negative = prompt_from_json({"positive": [{"joint": "nose", "x": 16, "y": 4}],
                                      "negative": [{"x": 16, "y": 40}]}, "kp")
    target_only = prompt_from_json({"positive": [{"joint": "nose", "x": 16, "y": 4}]}, "kp")
    plain, prompted, negated = (encoder.embed(image), encoder.embed(image, target_only),
                                encoder.embed(image, with_negative))
    assert len(plain) == 1
    assert not np.allclose(prompted.global_emb, plain.global_emb)
    assert not np.allclose(negated.global_emb, prompted.global_emb)
    np.testing.assert_array_equal(encoder.embed(image, prompt_from_json({}, "kp")).global_emb, plain.global_emb)


def test_query_encoder_refuses_another_stores_model(tiny_checkpoint, tmp_path):
    build_store(tmp_path / "db")
    with pytest.raises(UserError, match="holds embeddings of model synthetic-model"):
        QueryEncoder(tiny_checkpoint, Store.open(str(tmp_path / "db"), create=False))
    with pytest.raises(UserError, match="nomodel"):
        QueryEncoder(tmp_path / "nomodel")


# --- kpr ingest: backend options are checked before anything starts ---

BAD_INGESTS = [
    (["--backend", "yolox"], "yolox backend needs --detector-model"),
    (["--backend", "yolox", "--detector-model", "{tmp}/none.onnx"], "none.onnx: YOLOX ONNX detector model not found"),
    (["--pose-model", "{tmp}/none.tflite"], "none.tflite: MoveNet pose model not found"),
    (["--backend", "openpifpaf"], "openpifpaf backend needs --openpifpaf-checkpoint"),
    (["--backend", "openpifpaf", "--openpifpaf-checkpoint", "{tmp}/none.pkl"], "none.pkl: OpenPifPaf checkpoint not found"),
    (["--backend", "movenet"], "invalid choice: 'movenet'"),
    (["--device", "tpu"], "device must be 'cpu' or 'cuda"),
    (["--detectors", "0"], "detectors must be at least 1, got 0"),
    (["--segment-s", "-5"], "segment length must be positive seconds, got -5.0"),
    (["--max-batches-in-flight", "1"], "max_batches_in_flight must be at least 2"),
    (["--fps", "many"], "invalid float value: 'many'"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_INGESTS, ids=[e for _, e in BAD_INGESTS])
def test_bad_ingest_options_are_one_line_and_touch_nothing(tmp_path, capsys, args, expected):
    db = tmp_path / "db"
    command = ["ingest", str(tmp_path), "--db", str(db), "--model", str(tmp_path / "ckpt"), "--no-progress"]
    assert main(command + [a.format(tmp=tmp_path) for a in args]) == 2
    assert expected in _error_line(capsys)
    assert not db.exists()


def test_ingest_help_says_where_model_files_come_from(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "--help"])
    text = capsys.readouterr().out
    for flag in ("--backend {annotations,yolox,openpifpaf}", "--detector-model", "--pose-model",
                 "--openpifpaf-checkpoint", "--device", "--segment-s", "--detectors", "--embedders", "--batch-frames",
                 "--max-batches-in-flight"):
        assert flag in text
    assert "README" in text and "YOLOX-Nano" in text and "TF Hub" in text and "trusted" in text


def test_search_and_serve_load_no_model_code_until_an_image_is_queried():
    """A search by a stored id (most searches) needs no PyTorch model code: timm alone took 1.3 s of a 3.8 s search."""
    import subprocess
    import sys

    code = ("import sys, pipelines.cli, pipelines.query, pipelines.web.app; "
            "print(sorted(m for m in ('timm', 'torchvision', 'kpr_model.model') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
