"""The real Intel sample video through `kpr ingest --backend yolox` (YOLOX-Nano + MoveNet) and KPR.

Runs bench.real_video's ingestion and scoring with the tiny test checkpoint; the committed
figures with a trained checkpoint are in bench/results/real_video.json.
"""
from __future__ import annotations

import json
import shlex

import pytest

from bench import real_video

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def figures(shared_data, tiny_checkpoint, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("real_video") / "real_video.json"
    assert real_video.main(["--model", str(tiny_checkpoint), "--shared", str(shared_data), "--output", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_six_people_are_detected_and_become_their_own_tracklets(figures):
    assert figures["gt_boxes_matched"] >= 16, figures
    assert figures["people_in_one_tracklet"] >= 5, figures
    assert figures["tracklets_shared_by_people"] == 0, figures
    assert figures["tracklets_with_5_or_more"] >= 6, figures


def test_a_detection_query_returns_the_same_person_first(figures):
    assert figures["rank1"] >= 0.9, figures
    assert figures["precision_at_10"] >= 0.8, figures
    assert figures["map"] >= 0.8, figures


def test_the_result_records_the_module_command_that_reruns_it(figures, tiny_checkpoint):
    assert shlex.split(figures["command"])[:5] == [".venv/bin/python", "-m", "bench.real_video", "--model",
                                                   str(tiny_checkpoint)]
