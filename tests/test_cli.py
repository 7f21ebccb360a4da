"""The `kpr synth` and `kpr train` commands and their error lines."""
from __future__ import annotations

import json

import pytest

from kpr_model.checkpoint import read_model_id
from pipelines.cli import build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for command in ("ingest", "search", "synth", "train", "demo"):
        assert command in text


def test_synth_then_train_writes_archive_crops_and_a_checkpoint(tmp_path, capsys):
    archive, crops, ckpt = tmp_path / "archive", tmp_path / "crops", tmp_path / "ckpt"
    assert main(["synth", str(archive), "--seed", "4", "--identities", "6", "--cameras", "2", "--duration", "20",
                 "--crops", str(crops)]) == 0
    videos = sorted(archive.rglob("*.mp4"))
    assert len(videos) == 2 and all(v.with_suffix(".json").is_file() for v in videos)
    assert json.loads(videos[0].with_suffix(".json").read_text())["format"] == "kpr-sidecar-v1"
    assert main(["train", "--data", str(crops), "--out", str(ckpt), "--preset", "tiny", "--epochs", "2"]) == 0
    assert read_model_id(ckpt) in capsys.readouterr().out


def test_train_on_a_wrong_folder_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "query").mkdir()
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bounding_box_train" in err[0]
