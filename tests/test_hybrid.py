"""Hybrid models: a KPR checkpoint's parts with a global ReID ONNX model's whole-body vector (kpr hybrid)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kpr_model.checkpoint import save_checkpoint
from kpr_model.distance import ReIDEmbeddings, kpr_distance, paired_kpr_distance
from kpr_model.encoder import KPREncoder
from kpr_model.from_global import kpr_on_global_onnx
from kpr_model.global_onnx import GlobalOnnxEncoder
from kpr_model.hybrid_encoder import HybridEncoder
from kpr_model.hybrid_files import DEFAULT_HOLISTIC_WEIGHT
from kpr_model.model_facts import model_facts
from kpr_model.model_files import open_encoder
from pipelines.cli import main


@pytest.fixture(scope="module")
def trunk_checkpoint(tiny_global_onnx, tmp_path_factory):
    """KPR on the tiny global model's trunk (untrained heads), 32-d like the global model."""
    model, config, _ = kpr_on_global_onnx(tiny_global_onnx)
    path = tmp_path_factory.mktemp("trunk") / "kpr"
    save_checkpoint(model, config, path)
    return path


def crops_and_keypoints(n: int = 5) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (int(rng.integers(60, 120)), int(rng.integers(30, 60)), 3), dtype=np.uint8)
             for _ in range(n)]
    keypoints = [(rng.uniform(0, 1, (17, 3)) * [c.shape[1], c.shape[0], 1.0]).astype(np.float32) for c in crops]
    return crops, keypoints


def test_hybrid_embeds_the_whole_body_with_the_global_model_and_the_parts_with_kpr(trunk_checkpoint, tiny_global_onnx,
                                                                                  tmp_path, capsys):
    out = tmp_path / "hybrid"
    assert main(["hybrid", "--kpr", str(trunk_checkpoint), "--global", str(tiny_global_onnx), "--out", str(out),
                 "--holistic-weight", "4"]) == 0
    assert "whole body counted 4x" in capsys.readouterr().out
    encoder = open_encoder(out)
    assert isinstance(encoder, HybridEncoder) and encoder.holistic_weight == 4.0
    crops, keypoints = crops_and_keypoints()
    got = encoder.embed(crops, keypoints, batch_size=2)
    whole = GlobalOnnxEncoder(tiny_global_onnx).embed(crops)
    parts = KPREncoder.from_checkpoint(trunk_checkpoint).embed(crops, keypoints)
    np.testing.assert_allclose(got.global_emb, whole.global_emb, atol=1e-6)
    np.testing.assert_allclose(got.parts, parts.parts, atol=1e-6)
    np.testing.assert_allclose(got.visibility, parts.visibility, atol=1e-6)

    facts = model_facts(out)
    assert (facts.kind, facts.num_parts, facts.dim, facts.holistic_weight) == ("kpr", 8, 32, 4.0)
    assert facts.model_id == encoder.model_id
    # the weight is a search setting: another weight, the same embeddings, the same model id
    other = tmp_path / "hybrid_default"
    assert main(["hybrid", "--kpr", str(trunk_checkpoint), "--global", str(tiny_global_onnx), "--out", str(other)]) == 0
    assert model_facts(other).model_id == facts.model_id
    assert model_facts(other).holistic_weight == DEFAULT_HOLISTIC_WEIGHT


def test_the_holistic_weight_counts_the_whole_body_entry_that_many_times():
    rng = np.random.default_rng(1)

    def batch(n: int) -> ReIDEmbeddings:
        unit = rng.normal(size=(n, 4, 6)).astype(np.float32)
        unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
        return ReIDEmbeddings(unit[:, 0], unit[:, 1:], (rng.random((n, 3)) > 0.4).astype(np.float32))

    query, gallery = batch(3), batch(7)
    distances = kpr_distance(query, gallery, holistic_weight=3.0)
    for q in range(3):
        for g in range(7):
            whole = np.linalg.norm(query.global_emb[q] - gallery.global_emb[g])
            shared = (query.visibility[q] > 0) & (gallery.visibility[g] > 0)
            parts = np.linalg.norm(query.parts[q] - gallery.parts[g], axis=-1)[shared]
            assert distances[q, g] == pytest.approx((3.0 * whole + parts.sum()) / (3.0 + shared.sum()), abs=1e-5)
    np.testing.assert_allclose(paired_kpr_distance(query, gallery.select([0, 1, 2]), holistic_weight=3.0),
                               np.diag(distances[:, :3]), atol=1e-5)


def test_hybrid_mistakes_are_one_line_and_write_nothing(trunk_checkpoint, tiny_global_onnx, small_archive, tmp_path,
                                                        capsys):
    narrow, config, _ = kpr_on_global_onnx(tiny_global_onnx, embed_dim=16)
    save_checkpoint(narrow, config, tmp_path / "narrow")
    out = tmp_path / "out"
    cases = [
        (["--kpr", str(tmp_path / "narrow"), "--global", str(tiny_global_onnx)], "gives 32-d embeddings"),
        (["--kpr", str(tiny_global_onnx), "--global", str(tiny_global_onnx)], "is not a KPR checkpoint folder"),
        (["--kpr", str(trunk_checkpoint), "--global", str(trunk_checkpoint)], "is not an .onnx file"),
        (["--kpr", str(trunk_checkpoint), "--global", str(tiny_global_onnx), "--holistic-weight", "0"], "> 0"),
    ]
    for arguments, expected in cases:
        assert main(["hybrid", *arguments, "--out", str(out)]) == 2
        assert expected in capsys.readouterr().err
        assert not out.exists()
    out.mkdir()
    assert main(["hybrid", "--kpr", str(trunk_checkpoint), "--global", str(tiny_global_onnx), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and not any(out.iterdir())

    broken = tmp_path / "broken"
    made = main(["hybrid", "--kpr", str(trunk_checkpoint), "--global", str(tiny_global_onnx), "--out", str(broken)])
    assert made == 0
    spec = json.loads((broken / "hybrid.json").read_text())
    (broken / "hybrid.json").write_text(json.dumps(spec | {"version": 9}))
    capsys.readouterr()
    assert main(["ingest", str(small_archive), "--db", str(tmp_path / "db"), "--model", str(broken),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "version 9" in err[0] and not (tmp_path / "db").exists()
    (broken / "hybrid.json").write_text(json.dumps(spec))
    assert main(["adapt", "--db", str(tmp_path / "db"), "--model", str(broken), "--out", str(tmp_path / "a")]) == 2
    assert "is a hybrid model" in capsys.readouterr().err
