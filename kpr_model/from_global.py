"""A KPR network on the trunk of a global ReID ONNX model: the starting point of ``kpr adapt --model GLOBAL.onnx``.

The trunk keeps the real-data weights of the ONNX model (``kpr_model.onnx_trunk``); the prompt tokenizer starts at
zero (so an unprompted pass sees the original features), the part classifier and pooling heads start fresh and
learn on the archive. The image size is the ONNX model's; the config's normalisation hands the trunk RGB pixels
0..255, which it codes as the model wants.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kpr_model.backbone import ONNX_TRUNK
from kpr_model.checkpoint import load_checkpoint
from kpr_model.checkpoint_files import read_checkpoint_info
from kpr_model.config import KPRConfig
from kpr_model.global_onnx import GlobalOnnxEncoder
from kpr_model.model import KPR
from kpr_model.model_facts import KPR_KIND, trainable_facts
from kpr_model.onnx_trunk import read_trunk

PIXELS_255 = dict(norm_mean=(0.0, 0.0, 0.0), norm_std=(1 / 255, 1 / 255, 1 / 255))


def _trunk_start(path: str | Path, embed_dim: int | None = None) -> tuple[KPRConfig, dict, str]:
    """The config of KPR on the trunk of the global ReID model at ``path``, the trunk's weights and the ONNX model's id
    (its file and input coding, as a store records it). ``embed_dim`` defaults to the global model's embedding size,
    so that the KPR and the global model can make a hybrid (``kpr hybrid``)."""
    encoder = GlobalOnnxEncoder(path)
    embed_dim = embed_dim or encoder.dim
    spec, weights = read_trunk(path, encoder.input_coding)
    height, width = encoder.graph.size
    config = KPRConfig(backbone=ONNX_TRUNK, backbone_args={"trunk": spec}, image_size=(height, width),
                       embed_dim=embed_dim, fusion_stages=(1,), **PIXELS_255)
    return config, weights, encoder.model_id


def kpr_on_global_onnx(path: str | Path, embed_dim: int | None = None) -> tuple[KPR, KPRConfig, str]:
    """A KPR (K = 8 parts, ``embed_dim``-d, by default the global model's size) on the trunk of the global ReID model
    at ``path``, its config, and the ONNX model's id."""
    config, weights, model_id = _trunk_start(path, embed_dim)
    with torch.random.fork_rng():  # the fresh heads are the same for every run from one file
        torch.manual_seed(0)
        model = KPR(config)
    model.backbone.features.load_timm_state_dict(weights)
    return model.eval(), config, model_id


def starting_point(path: str | Path) -> tuple[KPR, KPRConfig, str]:
    """What training starts from when given ``path``: a KPR checkpoint folder (its model, config and id) or a global
    ReID ONNX model (KPR on its trunk); a KPR ``.onnx`` export: OnnxModelError."""
    if trainable_facts(path).kind == KPR_KIND:
        return load_checkpoint(path)
    return kpr_on_global_onnx(path)


def starting_config(path: str | Path) -> tuple[KPRConfig, str]:
    """The config and id of ``starting_point(path)``'s model, without building it or reading a checkpoint's weights."""
    if trainable_facts(path).kind == KPR_KIND:
        return read_checkpoint_info(path)[:2]
    config, _, model_id = _trunk_start(path)
    return config, model_id
