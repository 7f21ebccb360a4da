"""ONNX export of KPR's inference graph, self-describing through ONNX metadata.

Graph: inputs ``images`` [N, 3, H, W] float32 (normalised as ``prepare_crops`` does) and ``prompts``
[N, P + 2, H, W] float32, with (H, W) = ``config.image_size`` and a dynamic batch axis N; outputs
``global_emb`` [N, D] (L2-normalised BN-foreground embedding), ``parts`` [N, K, D] (L2-normalised)
and ``visibility`` [N, K] (as ``KPROutput.visibility``: ``visibility > 0`` is the binary one).

Metadata (``metadata_props`` of the ONNX model, readable with onnxruntime's ``get_modelmeta()``):
``kpr_format`` = "kpr-onnx", ``kpr_format_version`` = "1", ``model_id`` (as in project checkpoints)
and ``kpr_config`` (the ``KPRConfig.to_dict()`` JSON), so a file alone rebuilds its preprocessing.

The TorchScript-based exporter is used (the torch.export-based one needs onnxscript). The file is a
single protobuf, so models must stay under protobuf's 2 GiB limit (Swin-B KPR is ~0.4 GB).

CLI: ``python -m kpr_model.export CHECKPOINT_DIR OUT.onnx [--opset 17]``.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from kpr_model.checkpoint import compute_model_id, load_checkpoint
from kpr_model.config import KPRConfig, KPRModelError
from kpr_model.model import KPR
from kpr_model.onnx_format import INPUT_NAMES, ONNX_FORMAT, ONNX_FORMAT_VERSION, OUTPUT_NAMES
from kpr_model.prompts import empty_prompt

DEFAULT_OPSET = 17


class KPRInferenceGraph(nn.Module):
    """KPR's test-time pass, no training-only head: (images, prompts) -> (global_emb, parts, visibility)."""

    def __init__(self, model: KPR) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.forward_reid(images, prompts)


def export_onnx(
    model: KPR, config: KPRConfig, path: str | Path, model_id: str | None = None, opset: int = DEFAULT_OPSET
) -> str:
    """Write ``model``'s inference graph to ``path`` as ONNX with KPR metadata; return the model_id stored.

    ``model_id`` defaults to ``compute_model_id`` of the weights (what ``save_checkpoint`` would give).
    The model itself is left untouched (a CPU copy in eval mode is exported).
    """
    path = Path(path)
    if model.config != config:
        raise ValueError("config does not match model.config")
    model_id = model_id or compute_model_id(model.state_dict(), config)
    graph = KPRInferenceGraph(copy.deepcopy(model).cpu()).eval()
    batch = 2
    images = torch.zeros(batch, 3, *config.image_size)
    prompts = empty_prompt(batch, config.image_size, config)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter is deprecated, and the model's input-shape checks are traced as constants.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (images, prompts),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {
        "kpr_format": ONNX_FORMAT,
        "kpr_format_version": str(ONNX_FORMAT_VERSION),
        "model_id": model_id,
        "kpr_config": json.dumps(config.to_dict(), sort_keys=True),
    }
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = f"KPR person re-identification inference graph, model_id {model_id}"
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return model_id


def export_checkpoint_onnx(checkpoint: str | Path, path: str | Path, opset: int = DEFAULT_OPSET) -> str:
    """Export a project checkpoint directory to ONNX at ``path``; return its model_id."""
    model, config, model_id = load_checkpoint(checkpoint)
    return export_onnx(model, config, path, model_id=model_id, opset=opset)


def main(argv: list[str] | None = None) -> None:
    """Command line: export a checkpoint directory to an ONNX file."""
    parser = argparse.ArgumentParser(description="Export a KPR checkpoint directory to ONNX.")
    parser.add_argument("checkpoint", type=Path, help="project checkpoint directory (model.safetensors + config.json)")
    parser.add_argument("output", type=Path, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args = parser.parse_args(argv)
    try:
        model_id = export_checkpoint_onnx(args.checkpoint, args.output, opset=args.opset)
    except KPRModelError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"wrote {args.output} (model_id {model_id})")


if __name__ == "__main__":
    main()
