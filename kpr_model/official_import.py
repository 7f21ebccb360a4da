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

Official tensors deliberately NOT loaded (``IGNORED`` documents each rule):

- ``B.patch_embed.*``: the official ``PromptableTransformerBackbone`` stores ``self.patch_embed =
  model.patch_embed``, the very same module as ``B.model.patch_embed``, so the state dict lists its
  4 tensors twice. They must equal the ``B.model.patch_embed.*`` copies (checked; a mismatch means
  the file is not an official one and raises).
- ``B.parts_embed`` [P + 2, 1, D]: the learned part tokens of the alternative prompt strategy
  "spatialize_part_tokens"; the default "embed_heatmaps_patches" (ours) never reads it.
- ``*_identity_classifier.classifier.weight`` (+ ``parts_identity_classifier.<k>.classifier``) only
  when the config has ``num_classes == 0``: training-time id classifiers, no effect on embeddings.

Anything else that is left over, or any parameter / buffer of ours without a source, raises
``OfficialImportError``: the import is strict.

Only the SOLIDER Swin layout (``B.model.stages.*``) is handled; official checkpoints with timm
Swin / ViT / ResNet / HRNet backbones use other names and are rejected with a clear error.
Files are read with ``torch.load(weights_only=True)``: a file holding pickled non-tensor objects
(e.g. a yacs training config) is refused instead of unpickling code (see ``load_official_file``).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from kpr_model.config import KPRConfig, KPRModelError
from kpr_model.keypoints import PROMPT_GROUPINGS
from kpr_model.model import KPR
from kpr_model.solider_swin import SOLIDER_ARCHS

OFFICIAL_BACKBONE = "backbone_appearance_feature_extractor."
IGNORED: dict[str, str] = {
    OFFICIAL_BACKBONE + "parts_embed": "part tokens of the unused 'spatialize_part_tokens' prompt strategy",
    OFFICIAL_BACKBONE + "patch_embed.*": "alias of backbone_appearance_feature_extractor.model.patch_embed.* "
    "(same module registered twice); checked equal, loaded once",
    "*identity_classifier*.classifier.weight": "training-only id classifiers, dropped when config.num_classes == 0",
}


class OfficialImportError(KPRModelError):
    """An official KPR checkpoint cannot be read or does not map onto the KPR model."""


def official_prompt_order(num_prompt_channels: int) -> list[int]:
    """OFFICIAL_CHANNEL_OF: official prompt channel index of each of our prompt channels."""
    groups = num_prompt_channels - 2
    return [0] + [2 + g for g in range(groups)] + [1]


def infer_config(state: dict[str, torch.Tensor], **changes) -> KPRConfig:
    """KPRConfig for an official SOLIDER state dict: the ``solider_swin_base`` preset with num_classes,
    prompt grouping, embedding size and Swin shape read from the tensors (image size stays 384x128)."""
    b = OFFICIAL_BACKBONE
    try:
        prompt_channels = state[b + "masks_patch_embed.projection.weight"].shape[1]
        parts = state["pixel_classifier.classifier.weight"].shape[0] - 1
        embed = state["global_after_pooling_dim_reduce.layers.0.weight"].shape[0]
        swin_dim = state[b + "model.patch_embed.projection.weight"].shape[0]
    except KeyError as exc:
        raise OfficialImportError(f"not an official KPR SOLIDER state dict: missing {exc}") from exc
    classifier = state.get("global_identity_classifier.classifier.weight")
    num_classes = int(classifier.shape[0]) if classifier is not None else 0
    grouping = [name for name, groups in PROMPT_GROUPINGS.items() if len(groups) + 2 == prompt_channels]
    if not grouping:
        raise OfficialImportError(f"no prompt grouping has {prompt_channels - 2} groups")
    depths, heads = [], []
    for i in range(8):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(b)}model\.stages\.{i}\.blocks\.(\d+)\.", k))}
        if not blocks:
            break
        depths.append(max(blocks) + 1)
        heads.append(int(state[f"{b}model.stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table"].shape[1]))
    # semantic_weight is a config value, not a tensor: -1 (off) unless the file has the semantic layers,
    # then SOLIDER's ReID default 0.2 (pass backbone_args to override).
    semantic = any(".semantic_embed_w." in k for k in state)
    args = {"embed_dim": int(swin_dim), "depths": depths, "num_heads": heads, "semantic_weight": 0.2 if semantic else -1.0}
    values = {
        "num_classes": num_classes,
        "prompt_grouping": grouping[0],
        "embed_dim": int(embed),
        "backbone_args": args,
    }
    if parts != 8:
        raise OfficialImportError(f"official model has K={parts} parts; only the 'eight' grouping (K=8) is supported")
    values.update(changes)
    return KPRConfig.solider_swin_base(**values)


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
    for key, value in state.items():
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


def load_official_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensor dict of an official ``.pth`` read with ``torch.load(weights_only=True)`` (``state_dict`` unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise OfficialImportError(f"official checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise OfficialImportError(
            f"{path} holds pickled Python objects besides tensors (e.g. the training config), which "
            "torch.load(weights_only=True) refuses; it is not unpickled here because that can run arbitrary code. "
            "If you trust the file, extract its weights once, e.g. "
            "torch.save(torch.load(path, weights_only=False)['state_dict'], 'kpr_state_dict.pth'), "
            f"and import that file. ({str(exc).splitlines()[0]})"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise OfficialImportError(f"{path} does not hold a state dict of tensors")
    return data


def import_official_checkpoint(path: str | Path, config: KPRConfig | None = None) -> KPR:
    """KPR model (eval mode) from an official KPR ``.pth`` file (see ``load_official_file``)."""
    return import_official_state_dict(load_official_file(path), config)
