"""Import official KPR checkpoints (VlSomers/keypoint_promptable_reidentification, SOLIDER Swin backbone).

An official ``.pth`` holds a state dict of the official ``KPR`` module (480 tensors for the released
SOLIDER Swin-B Occluded-Duke model, whose names and shapes the mapping below was checked against).
``import_official_state_dict`` maps every tensor onto our ``KPR`` and loads it strictly:

Name mapping (official -> ours), P = prompt groups, ``B = backbone_appearance_feature_extractor``:

- ``B.model.<rest>`` -> ``backbone.features.model.<rest>`` (the whole SOLIDER Swin, same mmcv
  names: patch_embed, stages.*.blocks.*, stages.*.downsample.*, norm0..3, relative_position_index
  buffers; ``semantic_embed_w/b`` too when the config's semantic_weight >= 0)
- ``B.masks_patch_embed.projection.weight`` -> ``backbone.masks_patch_embed.projection.weight``
  with its INPUT channels permuted: the official prompt is [background, negative, group_1..P]
  (``dataset.py`` concatenates the negative mask before the groups, then ``AddBackgroundMask``
  prepends the background) while ours is [background, group_1..P, negative]
  (``kpr_model.prompts``), so ours[:, i] = official[:, OFFICIAL_CHANNEL_OF[i]] with
  OFFICIAL_CHANNEL_OF = [0, 2, 3, ..., P + 1, 1]. Its bias and ``norm.*`` map by name.
- ``msf.dim_reduce.layers.{0,1}.*`` -> ``backbone.msf.dim_reduce.{0,1}.*`` (conv, BN)
- every head keeps its name: ``pixel_classifier.*``, ``{global,foreground,background,parts}_after_
  pooling_dim_reduce.layers.*``, ``{global,background,foreground,concat_parts}_identity_classifier.*``,
  ``parts_identity_classifier.<k>.*``.

- ``B.sie_embed`` [cameras, 1, D] -> ``backbone.sie_embed`` (the camera embedding) when the config has
  camera_embeddings, which ``infer_config`` sets from the file (see below).

Official tensors deliberately NOT loaded (``IGNORED`` documents each rule):

- ``B.patch_embed.*``: the official ``PromptableTransformerBackbone`` stores ``self.patch_embed =
  model.patch_embed``, the very same module as ``B.model.patch_embed``, so the state dict lists its
  4 tensors twice. They must equal the ``B.model.patch_embed.*`` copies (checked; a mismatch means
  the file is not an official one and raises).
- ``B.parts_embed`` [P + 2, 1, D]: the learned part tokens of the alternative prompt strategy
  "spatialize_part_tokens"; the default "embed_heatmaps_patches" (ours) never reads it.
- ``*_identity_classifier.classifier.weight`` (+ ``parts_identity_classifier.<k>.classifier``) only
  when the config has ``num_classes == 0``: training-time id classifiers, no effect on embeddings.
- ``B.sie_embed`` when the config has no camera embeddings, and ``B.model.semantic_embed_*`` when its
  semantic_weight is -1: the official test code builds the model without them and its non-strict
  weight loader drops them.

Anything else that is left over, or any parameter / buffer of ours without a source, raises
``OfficialImportError``: the import is strict.

Only the SOLIDER Swin layout (``B.model.stages.*``) is handled; official checkpoints with timm
Swin / ViT / ResNet / HRNet backbones use other names and are rejected with a clear error.

Files: a torchreid checkpoint (``{'state_dict', 'epoch', 'rank1', 'mAP', 'config', 'optimizer',
'scheduler', ...}``, usually ``.pth.tar``) or a bare state dict, keys with or without ``module.``,
read by ``kpr_model.torch_file`` (no code from the file runs, yacs is not needed). The config, when
present, is read as plain data (``kpr_model.official_config``) and decides:

- the semantic weight: the value of the official test configuration of the checkpoint's training
  dataset where it sets one (Occluded-Duke and Market-1501 trained and tested on themselves: -1,
  semantic layers unused; the official test run takes it from the test yaml, not from the file),
  else the config's
  ``model.solider.semantic_weight``, else -1; the caller may override it;
- the camera embedding: imported when the file holds one and the config does not turn SIE off; it
  is tied to the training dataset (``data.sources[0]``), and left out of every pass that is given no
  camera ids (search and ingestion: an archive's cameras are not the dataset's); ``kpr bench`` on
  that dataset passes them, as the official test engine does (coefficient ``sie_coe``, 3);
- the input size, normalisation and keypoint threshold;
- the prompt and part groupings (``model.kpr.keypoints.prompt_preprocess``, ``model.kpr.masks.preprocess``:
  cck8 and eight for Occluded-Duke and Occluded-PoseTrack, cck6 and five_v for Market-1501, Occluded-ReID and
  Partial-ReID), checked against the tensors' prompt channels and parts; a file without a config gets the
  only groupings of its tensors' sizes.

``write_official_model`` turns a file into a project checkpoint folder, writing nothing on failure.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kpr_model.checkpoint import save_checkpoint
from kpr_model.config import KPRConfig, KPRModelError
from kpr_model.keypoints import PART_GROUPINGS, PROMPT_GROUPINGS
from kpr_model.model import KPR
from kpr_model.official_config import OfficialSettings, official_settings
from kpr_model.solider_swin import SOLIDER_ARCHS
from kpr_model.torch_file import read_torch_file
OFFICIAL_BACKBONE = "backbone_appearance_feature_extractor."
IGNORED: dict[str, str] = {
    OFFICIAL_BACKBONE + "parts_embed": "part tokens of the unused 'spatialize_part_tokens' prompt strategy",
    OFFICIAL_BACKBONE + "patch_embed.*": "alias of backbone_appearance_feature_extractor.model.patch_embed.* "
    "(same module registered twice); checked equal, loaded once",
    "*identity_classifier*.classifier.weight": "training-only id classifiers, dropped when config.num_classes == 0",
    OFFICIAL_BACKBONE + "sie_embed": "camera embedding, dropped when config.camera_embeddings == 0",
    OFFICIAL_BACKBONE + "model.semantic_embed_*": "SOLIDER semantic layers, dropped when the semantic weight is -1",
}


# model.solider.semantic_weight of the official SOLIDER test configurations (configs/kpr/solider/*_test.yaml)
# that set it: those that train and test on one dataset. The others keep the training value, among them the
# Occluded-ReID and Partial-ReID ones, trained on market1501 and tested on other targets.
OFFICIAL_TEST_SEMANTIC_WEIGHT = {"occluded_duke": -1.0, "market1501": -1.0}


class OfficialImportError(KPRModelError):
    """An official KPR checkpoint cannot be read or does not map onto the KPR model."""


def official_prompt_order(num_prompt_channels: int) -> list[int]:
    """OFFICIAL_CHANNEL_OF: official prompt channel index of each of our prompt channels."""
    groups = num_prompt_channels - 2
    return [0] + [2 + g for g in range(groups)] + [1]


def infer_config(state: dict[str, torch.Tensor], settings: OfficialSettings | None = None, **changes) -> KPRConfig:
    """KPRConfig for an official SOLIDER state dict: the ``solider_swin_base`` preset with num_classes, prompt and
    part groupings (named by ``settings``, else the only ones of the tensors' sizes), embedding size, Swin shape and
    camera embedding read from the tensors, and what ``settings`` (the file's config) says; semantic weight from
    the settings, else -1. ``changes`` override any field."""
    settings = settings or OfficialSettings()
    b = OFFICIAL_BACKBONE
    try:
        prompt_channels = state[b + "masks_patch_embed.projection.weight"].shape[1]
        parts = state["pixel_classifier.classifier.weight"].shape[0] - 1
        embed = state["global_after_pooling_dim_reduce.layers.0.weight"].shape[0]
        swin_dim = state[b + "model.patch_embed.projection.weight"].shape[0]
    except (KeyError, IndexError, AttributeError) as exc:
        raise OfficialImportError(f"not an official KPR SOLIDER state dict: missing {exc}") from exc
    classifier = state.get("global_identity_classifier.classifier.weight")
    num_classes = int(classifier.shape[0]) if classifier is not None else 0
    prompt_grouping = _grouping("prompt groups", PROMPT_GROUPINGS, prompt_channels - 2, settings.prompt_grouping)
    part_grouping = _grouping("parts", PART_GROUPINGS, parts, settings.part_grouping)
    depths, heads = [], []
    for i in range(8):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(b)}model\.stages\.{i}\.blocks\.(\d+)\.", k))}
        if not blocks:
            break
        depths.append(max(blocks) + 1)
        heads.append(int(state[f"{b}model.stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table"].shape[1]))
    semantic = -1.0 if settings.semantic_weight is None else settings.semantic_weight
    args = {"embed_dim": int(swin_dim), "depths": depths, "num_heads": heads, "semantic_weight": semantic}
    values: dict[str, Any] = {
        "num_classes": num_classes,
        "prompt_grouping": prompt_grouping,
        "num_parts": parts,
        "part_grouping": part_grouping,
        "embed_dim": int(embed),
        "backbone_args": args,
        **settings.config_changes(),
    }
    sie = state.get(b + "sie_embed")
    if sie is not None and settings.camera_embedding:
        values.update(camera_embeddings=int(sie.shape[0]), camera_embedding_scale=settings.camera_scale,
                      camera_dataset=settings.dataset)
    values.update(changes)
    return KPRConfig.solider_swin_base(**values)


def _grouping(kind: str, known: dict[str, dict], count: int, named: str | None) -> str:
    """The grouping the file's config names, which must have the ``count`` groups its tensors hold; without a
    name, the only known grouping of that size."""
    if named is not None:
        if len(known[named]) != count:
            raise OfficialImportError(f"the checkpoint's config names the {named!r} grouping ({len(known[named])} "
                                      f"{kind}) but its tensors hold {count} {kind}")
        return named
    sized = [name for name, groups in known.items() if len(groups) == count]
    if len(sized) != 1:
        sizes = ", ".join(f"{name} ({len(groups)})" for name, groups in known.items())
        raise OfficialImportError(f"official model has {count} {kind}; the project runs {sizes}")
    return sized[0]


def map_official_state_dict(state: dict[str, torch.Tensor], config: KPRConfig) -> dict[str, torch.Tensor]:
    """Our state dict (names of ``KPR(config)``) from an official one; strict bookkeeping, see module doc."""
    if config.backbone not in SOLIDER_ARCHS:
        raise OfficialImportError(f"official import needs a SOLIDER Swin config, got backbone {config.backbone!r}")
    b = OFFICIAL_BACKBONE
    if not any(k.startswith(b + "model.stages.") for k in state):
        raise OfficialImportError(
            "state dict has no backbone_appearance_feature_extractor.model.stages.*: only official checkpoints "
            "with a SOLIDER Swin backbone can be imported"
        )
    mapped: dict[str, torch.Tensor] = {}
    leftovers = []
    semantic = float(config.backbone_args.get("semantic_weight", -1.0)) >= 0
    for key, value in state.items():
        if key.startswith(b + "model.semantic_embed_") and not semantic:
            continue
        if key.startswith(b + "model."):
            mapped["backbone.features.model." + key[len(b + "model."):]] = value
        elif key.startswith(b + "masks_patch_embed."):
            rest = key[len(b + "masks_patch_embed."):]
            if rest == "projection.weight":
                if value.shape[1] != config.num_prompt_channels:
                    raise OfficialImportError(
                        f"official prompt tokenizer takes {value.shape[1]} channels, config has "
                        f"{config.num_prompt_channels} ({config.prompt_grouping})"
                    )
                value = value[:, official_prompt_order(value.shape[1])]
            mapped["backbone.masks_patch_embed." + rest] = value
        elif key.startswith("msf.dim_reduce.layers."):
            mapped["backbone.msf.dim_reduce." + key[len("msf.dim_reduce.layers."):]] = value
        elif key.startswith(b + "patch_embed."):
            twin = b + "model." + key[len(b):]
            if twin not in state or not torch.equal(state[twin], value):
                raise OfficialImportError(f"{key} should be an alias of {twin} but differs from it (or it is missing)")
        elif key == b + "parts_embed":
            continue
        elif key == b + "sie_embed":
            if config.camera_embeddings:
                mapped["backbone.sie_embed"] = value
        elif key.startswith(b):
            leftovers.append(key)
        elif config.num_classes == 0 and re.search(r"identity_classifier(\.\d+)?\.classifier\.weight$", key):
            continue
        else:
            mapped[key] = value
    if leftovers:
        raise OfficialImportError(f"official backbone tensors with no counterpart: {leftovers[:5]}")
    return mapped


def import_official_state_dict(state: dict[str, torch.Tensor], config: KPRConfig | None = None) -> KPR:
    """KPR model (eval mode) holding the official weights; ``config`` defaults to ``infer_config(state)``."""
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    config = infer_config(state) if config is None else config
    mapped = map_official_state_dict(state, config)
    model = KPR(config)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(mapped))
    unexpected = sorted(set(mapped) - set(ours))
    wrong = [(k, tuple(mapped[k].shape), tuple(ours[k].shape)) for k in set(mapped) & set(ours)
             if mapped[k].shape != ours[k].shape]
    if missing or unexpected or wrong:
        raise OfficialImportError(
            f"official weights do not fit KPR({config.backbone}, num_classes={config.num_classes}): "
            f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"shape mismatches {sorted(wrong)[:3]}"
        )
    model.load_state_dict(mapped, strict=True)
    return model.eval()


@dataclass
class OfficialFile:
    """An official checkpoint file's contents: the state dict (``module.`` stripped), its config, its other records."""

    state: dict[str, torch.Tensor]
    config: dict | None
    records: dict[str, Any]


def read_official_file(path: str | Path) -> OfficialFile:
    """The state dict, config and records (epoch, rank1, mAP) of a torchreid checkpoint or a bare state dict."""
    path = Path(path)
    data = read_torch_file(path)
    if not isinstance(data, dict):
        raise OfficialImportError(f"{path} holds a {type(data).__name__}, not a checkpoint or state dict")
    state = next((data[key] for key in ("state_dict", "model") if isinstance(data.get(key), dict)), data)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfficialImportError(f"{path} does not hold a state dict of tensors")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    records = {key: _plain_number(data[key]) for key in ("epoch", "rank1", "mAP") if state is not data and key in data}
    config = data.get("config") if state is not data else None
    return OfficialFile(state, config, {k: v for k, v in records.items() if v is not None})


def _plain_number(value: Any) -> float | int | None:
    """A number saved as a Python, numpy or one-element torch value, as a plain float or int (None otherwise)."""
    if isinstance(value, torch.Tensor):
        value = value.numpy() if value.numel() == 1 else None
    if isinstance(value, (int, float, np.number, np.ndarray)) and np.size(value) == 1 and not isinstance(value, bool):
        number = np.asarray(value).item()
        return number if isinstance(number, int) else float(number)
    return None


def import_official_checkpoint(path: str | Path, config: KPRConfig | None = None) -> KPR:
    """KPR model (eval mode) from an official KPR file; ``config`` defaults to the file's own (``infer_config``)."""
    official = read_official_file(path)
    return import_official_state_dict(official.state, config or infer_config(official.state,
                                                                             official_settings(official.config)))


@dataclass
class OfficialImport:
    """An imported official checkpoint: the model, its config, the metadata to save and what to tell the user."""

    model: KPR
    config: KPRConfig
    metadata: dict[str, Any]
    notes: list[str]


def import_official_file(path: str | Path, semantic_weight: float | None = None,
                         dataset_cameras: int | None = None) -> OfficialImport:
    """Import an official file under its own config; ``semantic_weight`` overrides the config's, ``dataset_cameras``
    (the training dataset's camera count) must match the file's camera embedding when given."""
    path = Path(path)
    official = read_official_file(path)
    settings = official_settings(official.config)
    source = "the checkpoint's config" if settings.semantic_weight is not None else "the official test configuration"
    if settings.dataset in OFFICIAL_TEST_SEMANTIC_WEIGHT and set(settings.targets) <= {settings.dataset}:
        source = f"the official {settings.dataset} test configuration"
        settings = replace(settings, semantic_weight=OFFICIAL_TEST_SEMANTIC_WEIGHT[settings.dataset])
    if semantic_weight is not None:
        settings, source = replace(settings, semantic_weight=float(semantic_weight)), "the override"
    sie = official.state.get(OFFICIAL_BACKBONE + "sie_embed")
    if dataset_cameras is not None and (sie is None or sie.shape[0] != dataset_cameras):
        held = "no camera embedding" if sie is None else f"a camera embedding of {sie.shape[0]} cameras"
        raise OfficialImportError(f"{path} holds {held}, but its training dataset was said to have {dataset_cameras}")
    config = infer_config(official.state, settings)
    weight = float(config.backbone_args["semantic_weight"])
    if weight >= 0 and not any(k.startswith(OFFICIAL_BACKBONE + "model.semantic_embed_") for k in official.state):
        raise OfficialImportError(f"semantic weight {weight} (from {source}) needs SOLIDER's semantic layers, "
                                  f"which {path} does not hold; use semantic weight -1")
    model = import_official_state_dict(official.state, config)
    notes = [f"semantic weight {weight:g} (from {source}){'; semantic layers unused' if weight < 0 else ''}"]
    if config.camera_embeddings:
        dataset = config.camera_dataset or "its training dataset"
        notes.append(f"camera embedding of {config.camera_embeddings} cameras ({dataset}) imported; left out when "
                     f"embedding crops without camera ids (search, ingestion), added by kpr bench on {dataset}")
    elif sie is not None:
        notes.append("camera embedding dropped: the checkpoint's config turns it off")
    metadata = {"official_import": {"file": path.name, **official.records, "trained_on": settings.dataset,
                                    "semantic_weight_from": source}}
    return OfficialImport(model, config, metadata, notes)


def write_official_model(path: str | Path, out: str | Path, semantic_weight: float | None = None,
                         dataset_cameras: int | None = None) -> tuple[str, list[str]]:
    """Import official file ``path`` as a project checkpoint folder ``out`` (which must not exist yet).

    Returns (model_id, notes). Nothing is left at ``out`` when anything fails.
    """
    out = Path(out)
    if out.exists():
        raise OfficialImportError(f"{out} already exists; give a new folder for the imported model")
    imported = import_official_file(path, semantic_weight, dataset_cameras)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        model_id = save_checkpoint(imported.model, imported.config, partial, imported.metadata)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return model_id, imported.notes
