"""The convolutional trunk of a global ReID ONNX model as a trainable PyTorch module: real-data weights for KPR.

A global ReID model such as Intel OMZ ``person-reidentification-retail-0248`` was trained on real people; KPR
built on its trunk starts from features that already tell real people apart. ``read_trunk`` keeps the graph's
nodes from the image input to its spatial feature map (the input of the model's global pooling) and splits them at
the stem (the first max-pooling: where KPR adds its prompt tokens). The structure is plain JSON (``TrunkSpec``,
kept in ``KPRConfig.backbone_args``) so a checkpoint rebuilds it without the ONNX file; the float weights become
the module's tensors. ``OnnxTrunk`` runs the nodes with torch ops, per image: graphs exported for one image
(reductions over the batch axis, reshapes to a batch of 1) are read as applying to each image of a batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kpr_model.config import KPRModelError

SPEC_FORMAT = "onnx-trunk/1"
# Ops whose output keeps the NCHW layout of their first input: the feature map must come out of one of them.
_NCHW_OPS = ("Conv", "MaxPool", "AveragePool", "Relu", "Add", "Mul", "Sigmoid")


class OnnxTrunkError(KPRModelError):
    """An ONNX model whose trunk cannot serve as a KPR backbone (unreadable, unknown ops, no feature map)."""


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else (
            list(value) if isinstance(value, (list, tuple)) else value)
    return values


def read_trunk(path: str | Path, input_coding: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The trunk spec (JSON-able) and its float weights (key -> array) of the global ReID ONNX model at ``path``.

    ``input_coding`` (kpr_model.global_onnx.INPUT_CODINGS) is how the model wants its pixels; it is recorded.
    """
    nodes, arrays, shapes, image, output = _load_graph(path)
    producers = {out: node for node in nodes for out in node.output}
    channels_last = shapes[image][-1] == 3
    height = shapes[image][1] if channels_last else shapes[image][2]
    features = _feature_map(output, producers, arrays, shapes, path)
    stem = _stem(nodes, shapes, shapes[image], path)
    kept = _ancestors(features, producers, arrays)
    nodes = [node for node in nodes if id(node) in kept]
    unknown = sorted({node.op_type for node in nodes} - set(_OPS))
    if unknown:
        raise OnnxTrunkError(f"{path}: its trunk uses ONNX ops that KPR cannot run: {', '.join(unknown)}")
    before_stem = _ancestors(stem, producers, arrays)
    made_before = {out for node in nodes if id(node) in before_stem for out in node.output} - {stem}
    if any(name in made_before for node in nodes if id(node) not in before_stem for name in node.input):
        raise OnnxTrunkError(f"{path}: layers after its stem ({stem}) read tensors from before it")
    ids: dict[str, int] = {}

    def number(name: str) -> int:
        """A tensor name's short id in the spec."""
        return ids.setdefault(name, len(ids))

    weights, tensors, ints = {}, {}, {}
    for node in nodes:
        for index, name in enumerate(node.input):
            if name not in arrays or number(name) in tensors or number(name) in ints:
                continue
            value = arrays[name]
            if value.dtype.kind in "iu":  # shapes, axes, split sizes
                ints[number(name)] = value.tolist()
            else:  # conv weights and biases train; scalar constants (pixel coding, epsilons) stay as they are
                key = f"w{len(weights)}"
                weights[key] = value.astype(np.float32)
                tensors[number(name)] = [key, node.op_type == "Conv" and index > 0, list(value.shape)]
    spec = {
        "format": SPEC_FORMAT, "input_coding": input_coding, "input": number(image), "channels_last": channels_last,
        "stem": number(stem), "features": number(features), "names": {"stem": stem, "features": features},
        "stem_channels": int(shapes[stem][1]), "stem_stride": int(height // shapes[stem][2]),
        "feature_channels": int(shapes[features][1]),
        "nodes": [[node.op_type, [number(n) if n else -1 for n in node.input], [number(n) for n in node.output],
                   _attributes(node)] for node in nodes],
        "tensors": {str(k): v for k, v in tensors.items()}, "ints": {str(k): v for k, v in ints.items()},
    }
    return spec, weights


def _load_graph(path: str | Path) -> tuple[list, dict[str, np.ndarray], dict[str, list[int]], str, str]:
    """The graph's nodes (Constant nodes folded into the arrays), its constant arrays, inferred tensor shapes, and
    the names of its image input and its embedding output."""
    import onnx
    from onnx import numpy_helper, shape_inference

    try:
        model = shape_inference.infer_shapes(onnx.load(str(path)))
    except Exception as exc:  # onnx raises its own and protobuf errors for a file that is not a model
        raise OnnxTrunkError(f"{path}: not a readable ONNX model: {exc}".splitlines()[0]) from exc
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant":
            arrays[node.output[0]] = numpy_helper.to_array(_attributes(node)["value"])
        else:
            nodes.append(node)
    if len(graph.input) < 1 or len(graph.output) != 1:
        raise OnnxTrunkError(f"{path}: a global ReID model has one image input and one embedding output")
    return nodes, arrays, shapes, graph.input[0].name, graph.output[0].name


def _feature_map(output: str, producers: dict, arrays: dict, shapes: dict, path: str | Path) -> str:
    """The spatial NCHW map the graph pools into its embedding: up its main chain to the first H, W > 1 tensor."""
    name = output
    while name in producers:
        node = producers[name]
        shape = shapes.get(name, [])
        if len(shape) == 4 and shape[2] > 1 and shape[3] > 1 and node.op_type in _NCHW_OPS:
            return name
        inputs = [n for n in node.input if n and n not in arrays]
        if not inputs:
            break
        name = inputs[0]
    raise OnnxTrunkError(f"{path}: no spatial feature map (NCHW, H and W > 1) found before its embedding")


def _stem(nodes: list, shapes: dict, image_shape: list[int], path: str | Path) -> str:
    """The first max-pooling's output: where prompt tokens are added (as after a ResNet's stem)."""
    for node in nodes:
        if node.op_type == "MaxPool" and len(shapes.get(node.output[0], [])) == 4:
            return node.output[0]
    raise OnnxTrunkError(f"{path}: no max-pooling stem found (the input is {image_shape})")


def _ancestors(name: str, producers: dict, arrays: dict) -> set[int]:
    """ids of the nodes ``name`` depends on."""
    kept, stack = set(), [name]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in kept:
            kept.add(id(node))
            stack.extend(n for n in node.input if n and n not in arrays)
    return kept


def _pads(attrs: dict) -> tuple[int, int, int, int]:
    """ONNX 2-d pads [top, left, bottom, right] (zeros when absent); auto_pad is not supported."""
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise OnnxTrunkError(f"auto_pad={attrs['auto_pad']} is not supported")
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    return top, left, bottom, right


def _conv(x, w, b=None, **a):
    top, left, bottom, right = _pads(a)
    if (top, left) != (bottom, right):
        x, top, left = F.pad(x, (left, right, top, bottom)), 0, 0
    return F.conv2d(x, w, b, stride=a.get("strides", 1), padding=(top, left), dilation=a.get("dilations", 1),
                    groups=a.get("group", 1))


def _pool(x, pool, fill, **a):
    top, left, bottom, right = _pads(a)
    x = F.pad(x, (left, right, top, bottom), value=fill) if any((top, left, bottom, right)) else x
    return pool(x, a["kernel_shape"], a.get("strides", a["kernel_shape"]), ceil_mode=bool(a.get("ceil_mode", 0)))


def _reduce_mean(x, axes=None, **a):
    axes = [ax % x.dim() for ax in (a.get("axes") if axes is None else axes)]
    per_image = [ax for ax in axes if ax != 0]  # a one-image graph's mean over the batch axis is per image
    return x.mean(dim=per_image, keepdim=bool(a.get("keepdims", 1))) if per_image else x


def _reshape(x, shape, **a):
    shape = list(shape)
    if shape and shape[0] == 1:
        shape[0] = x.shape[0]  # a one-image graph's batch axis is the batch's
    return x.reshape([x.shape[i] if v == 0 else v for i, v in enumerate(shape)])


def _split(x, sizes=None, **a):
    axis = a.get("axis", 0)
    sizes = a.get("split", sizes)
    return tuple(torch.split(x, list(sizes) if sizes is not None else 1, dim=axis))


_OPS = {
    "Conv": _conv,
    "Relu": lambda x, **a: F.relu(x),
    "Sigmoid": lambda x, **a: torch.sigmoid(x),
    "Add": lambda x, y, **a: x + y,
    "Sub": lambda x, y, **a: x - y,
    "Mul": lambda x, y, **a: x * y,
    "Div": lambda x, y, **a: x / y,
    "Sqrt": lambda x, **a: torch.sqrt(x),
    "Neg": lambda x, **a: -x,
    "ReduceMean": _reduce_mean,
    "Transpose": lambda x, **a: x.permute(a["perm"]),
    "Reshape": _reshape,
    "Split": _split,
    "Concat": lambda *xs, **a: torch.cat(xs, dim=a["axis"]),
    "MaxPool": lambda x, **a: _pool(x, F.max_pool2d, float("-inf"), **a),
    "AveragePool": lambda x, **a: _pool(x, lambda *p, ceil_mode: F.avg_pool2d(
        *p, ceil_mode=ceil_mode, count_include_pad=bool(a.get("count_include_pad", 0))), 0.0, **a),
    "GlobalAveragePool": lambda x, **a: x.mean(dim=(2, 3), keepdim=True),
    "Clip": lambda x, lo=None, hi=None, **a: torch.clamp(x, a.get("min", lo), a.get("max", hi)),
}


class OnnxTrunk(nn.Module):
    """Runs a ``read_trunk`` spec: ``stem`` (image -> stem map) then ``body`` (stem map -> feature map)."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        if spec.get("format") != SPEC_FORMAT:
            raise OnnxTrunkError(f"not an ONNX trunk spec of format {SPEC_FORMAT}: {spec.get('format')!r}")
        self.spec = spec
        self.params = nn.ParameterDict()
        self._buffers_of: dict[int, str] = {}
        for tensor_id, (key, trainable, shape) in spec["tensors"].items():
            self._buffers_of[int(tensor_id)] = key
            if trainable:
                self.params[key] = nn.Parameter(torch.zeros(shape))
            else:
                self.register_buffer(key, torch.zeros(shape))
        self.ints = {int(k): v for k, v in spec["ints"].items()}
        nodes = spec["nodes"]
        before = _node_ancestors(spec["stem"], nodes)
        self.stem_nodes = [n for i, n in enumerate(nodes) if i in before]
        self.body_nodes = [n for i, n in enumerate(nodes) if i not in before]

    @torch.no_grad()
    def load_weights(self, weights: dict[str, np.ndarray | torch.Tensor]) -> None:
        """Copy in the weights ``read_trunk`` returned (the ONNX file's real-data weights)."""
        for key, value in weights.items():
            target = self.params[key] if key in self.params else getattr(self, key)
            target.copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)))

    def _tensor(self, tensor_id: int) -> torch.Tensor | list:
        if tensor_id in self.ints:
            return self.ints[tensor_id]
        key = self._buffers_of[tensor_id]
        return self.params[key] if key in self.params else getattr(self, key)

    def _run(self, nodes: list, values: dict[int, Any]) -> dict[int, Any]:
        for op, inputs, outputs, attrs in nodes:
            args = [values[i] if i in values else (None if i < 0 else self._tensor(i)) for i in inputs]
            result = _OPS[op](*args, **attrs)
            for tensor_id, value in zip(outputs, result if isinstance(result, tuple) else (result,)):
                values[tensor_id] = value
        return values

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] RGB pixels 0..255 -> the stem map [N, C0, H / stride, W / stride]."""
        coding = _input_coding(self.spec["input_coding"])
        x = images.flip(1) if coding.bgr else images
        x = x * coding.scale
        mean = torch.tensor(coding.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(coding.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        x = x.permute(0, 2, 3, 1) if self.spec["channels_last"] else x
        return self._run(self.stem_nodes, {self.spec["input"]: x.contiguous()})[self.spec["stem"]]

    def body(self, stem_map: torch.Tensor) -> torch.Tensor:
        """The stem map (prompt tokens added) -> the feature map [N, C, H / 16, W / 16]."""
        return self._run(self.body_nodes, {self.spec["stem"]: stem_map})[self.spec["features"]]


def _node_ancestors(tensor_id: int, nodes: list) -> set[int]:
    """Indexes of the nodes ``tensor_id`` depends on."""
    producer = {out: i for i, node in enumerate(nodes) for out in node[2]}
    kept, stack = set(), [tensor_id]
    while stack:
        index = producer.get(stack.pop())
        if index is not None and index not in kept:
            kept.add(index)
            stack.extend(nodes[index][1])
    return kept


def _input_coding(name: str):
    from kpr_model.global_onnx import INPUT_CODINGS

    return INPUT_CODINGS[name]
