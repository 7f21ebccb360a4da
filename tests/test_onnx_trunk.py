"""KPR on the trunk of a global ReID ONNX model: the trunk computes what onnxruntime does, KPR keeps its features."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from kpr_model.checkpoint import load_checkpoint, save_checkpoint
from kpr_model.from_global import kpr_on_global_onnx
from kpr_model.onnx_trunk import OnnxTrunk, OnnxTrunkError, read_trunk

OMZ_MODELS = ("person-reidentification-retail-0248.onnx", "person-reidentification-retail-0287.onnx")


def _onnxruntime_features(path, name: str, pixels: np.ndarray) -> np.ndarray:
    """The ONNX model's tensor ``name`` for each image of ``pixels`` (run one at a time, as it was exported)."""
    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([name], {session.get_inputs()[0].name: image[None]})[0] for image in pixels])


def _trunk_features(spec: dict, weights: dict, rgb: np.ndarray) -> np.ndarray:
    trunk = OnnxTrunk(spec)
    trunk.load_weights(weights)
    with torch.no_grad():
        return trunk.body(trunk.stem(torch.from_numpy(rgb).permute(0, 3, 1, 2))).numpy()


def test_the_trunk_of_a_tiny_model_computes_its_feature_map(tiny_global_onnx):
    spec, weights = read_trunk(tiny_global_onnx, "rgb255")
    assert (spec["stem_channels"], spec["stem_stride"], spec["feature_channels"]) == (8, 4, 16)
    rgb = np.random.default_rng(0).integers(0, 255, (3, 64, 32, 3)).astype(np.float32)
    expected = _onnxruntime_features(tiny_global_onnx, spec["names"]["features"], rgb.transpose(0, 3, 1, 2).copy())
    got = _trunk_features(spec, weights, rgb)
    assert got.shape == (3, 16, 4, 2) and np.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", OMZ_MODELS)
def test_the_trunk_of_each_omz_model_computes_its_feature_map_per_image(shared_data, name):
    """OMZ graphs were exported for one image (standardised over the whole batch): in a batch each image is its own."""
    path = shared_data / "models" / name
    spec, weights = read_trunk(path, "bgr255")
    rgb = np.random.default_rng(1).integers(0, 255, (2, 256, 128, 3)).astype(np.float32)
    rgb[1] *= 0.3  # a darker second image: batch-wide standardisation would change the first image's features
    expected = _onnxruntime_features(path, spec["names"]["features"], rgb[..., ::-1].copy())
    got = _trunk_features(spec, weights, rgb)
    assert got.shape[2:] == (16, 8) and np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


def test_kpr_on_the_trunk_starts_from_its_features_and_survives_a_checkpoint(tiny_global_onnx, tmp_path):
    model, config, onnx_id = kpr_on_global_onnx(tiny_global_onnx, embed_dim=16)
    assert config.image_size == (64, 32) and config.backbone == "onnx_trunk" and len(onnx_id) == 16
    spec, weights = read_trunk(tiny_global_onnx, "rgb255")
    rgb = np.random.default_rng(2).integers(0, 255, (2, 64, 32, 3)).astype(np.float32)
    images = torch.from_numpy(rgb).permute(0, 3, 1, 2)
    keypoints = torch.rand(2, config.num_prompt_channels, 64, 32)
    with torch.no_grad():  # the prompt tokenizer starts at zero: prompted or not, the trunk's own features
        features = model.backbone(images, keypoints)
    assert np.allclose(features.numpy(), _trunk_features(spec, weights, rgb), atol=1e-5)

    again = kpr_on_global_onnx(tiny_global_onnx, embed_dim=16)[0].state_dict()
    assert all(torch.equal(value, again[key]) for key, value in model.state_dict().items())  # fresh heads: seeded

    model_id = save_checkpoint(model, config, tmp_path / "ckpt")
    loaded, loaded_config, loaded_id = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        before, after = model(images, keypoints), loaded(images, keypoints)
    assert loaded_id == model_id and loaded_config == config
    assert torch.allclose(before.embeddings["parts"], after.embeddings["parts"])


def test_a_model_with_an_op_kpr_cannot_run_is_refused_by_name(tmp_path):
    helper = onnx.helper
    weight = helper.make_tensor("w", onnx.TensorProto.FLOAT, [4, 3, 3, 3], np.zeros(108, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("Erf", ["c"], ["e"]),
         helper.make_node("MaxPool", ["e"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("GlobalAveragePool", ["m"], ["g"]),
         helper.make_node("Flatten", ["g"], ["y"])],
        "odd", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 64, 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [weight])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(OnnxTrunkError, match="ops that KPR cannot run: Erf"):
        read_trunk(path, "rgb255")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(OnnxTrunkError, match="not a readable ONNX model"):
        read_trunk(tmp_path / "junk.onnx", "rgb255")
