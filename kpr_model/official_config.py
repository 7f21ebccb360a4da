"""The training config inside an official KPR checkpoint, read as plain data: what the import uses and checks.

torchreid saves its yacs config beside the weights (read as nested dicts by ``kpr_model.torch_file``).
The import takes from it what the network and the test settings need, by the official names:

- ``data.sources[0]``: the dataset the model was trained on (whose cameras the camera embedding knows)
- ``data.targets``: the datasets it was tested on
- ``data.height`` / ``data.width``, ``data.norm_mean`` / ``data.norm_std``: input size and normalisation
- ``model.kpr.keypoints.vis_thresh``: keypoints at or below it are not prompted
- ``model.kpr.keypoints.prompt_preprocess`` / ``model.kpr.masks.preprocess``: the prompt and part groupings
  (``GROUPINGS``: cck8 or cck6, eight or five_v; the project's names are the official ones)
- ``model.solider.semantic_weight``: SOLIDER's semantic weight (-1: semantic layers unused)
- ``model.transreid.sie_camera`` / ``sie_coe``: whether the camera embedding is built, and its coefficient

and refuses, one line each, a setting the project does not run (``REQUIRED``): another backbone or
prompt encoding, other test embeddings, distance or visibility rule, view embeddings, prompts without
background or negative channel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kpr_model.config import KPRModelError
from kpr_model.keypoints import PART_GROUPINGS, PROMPT_GROUPINGS

SOLIDER_BACKBONE = "solider_swin_base_patch4_window7_224"
REQUIRED: dict[str, Any] = {
    "model.kpr.backbone": SOLIDER_BACKBONE,
    "model.kpr.pooling": "gwap",
    "model.kpr.dim_reduce": "after_pooling",
    "model.kpr.enable_msf": True,
    "model.kpr.test_embeddings": ["bn_foreg", "parts"],
    "model.kpr.testing_binary_visibility_score": True,
    "model.kpr.keypoints.prompt_masks": "keypoints_gaussian",
    "model.kpr.keypoints.use_negative_keypoints": True,
    "model.promptable_trans.pose_encoding_strategy": "embed_heatmaps_patches",
    "model.promptable_trans.no_background_token": False,
    "model.promptable_trans.use_abs_pos_embed": False,
    "model.transreid.sie_view": False,
    "test.dist_metric": "euclidean",
    "test.normalize_feature": True,
}
GROUPINGS: dict[str, dict[str, dict]] = {
    "model.kpr.keypoints.prompt_preprocess": PROMPT_GROUPINGS,
    "model.kpr.masks.preprocess": PART_GROUPINGS,
}
_ABSENT = object()


class OfficialConfigError(KPRModelError):
    """An official checkpoint's training config asks for something the project cannot run."""


@dataclass(frozen=True)
class OfficialSettings:
    """What an official checkpoint's config says about the model and its test settings (None: not said)."""

    dataset: str = ""
    targets: tuple[str, ...] = ()
    image_size: tuple[int, int] | None = None
    norm_mean: tuple[float, float, float] | None = None
    norm_std: tuple[float, float, float] | None = None
    vis_thresh: float | None = None
    prompt_grouping: str | None = None
    part_grouping: str | None = None
    semantic_weight: float | None = None
    camera_embedding: bool = True
    camera_scale: float = 3.0

    def config_changes(self) -> dict[str, Any]:
        """KPRConfig fields these settings fix (input size, normalisation, keypoint threshold)."""
        changes = {"image_size": self.image_size, "norm_mean": self.norm_mean, "norm_std": self.norm_std,
                   "vis_thresh": self.vis_thresh}
        return {k: v for k, v in changes.items() if v is not None}


def setting(config: dict, dotted: str) -> Any:
    """The value at ``dotted`` (e.g. "model.solider.semantic_weight") in nested dicts, or ``_ABSENT``."""
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return _ABSENT
        node = node[key]
    return node


def _typed(config: dict, dotted: str, kind: type, count: int = 0) -> Any:
    """The setting as ``kind`` (a tuple of ``count`` of them when count > 0), None when absent; error when malformed."""
    value = setting(config, dotted)
    if value is _ABSENT:
        return None
    try:
        if count:
            if len(value) != count:
                raise ValueError(f"{count} values expected")
            return tuple(kind(v) for v in value)
        if kind is bool and not isinstance(value, bool):
            raise ValueError("true or false expected")
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise OfficialConfigError(f"official config has an unreadable {dotted}={value!r}: {exc}") from exc


def official_settings(config: dict | None) -> OfficialSettings:
    """The settings of an official checkpoint's config (defaults without one); OfficialConfigError if it cannot run."""
    if config is None:
        return OfficialSettings()
    if not isinstance(config, dict):
        raise OfficialConfigError(f"official checkpoint's config is a {type(config).__name__}, not a config tree")
    for dotted, wanted in REQUIRED.items():
        value = setting(config, dotted)
        if value is not _ABSENT and value != wanted:
            raise OfficialConfigError(
                f"the checkpoint's config sets {dotted}={value!r}; the project runs only {wanted!r}"
            )
    groupings = [_typed(config, dotted, str) for dotted in GROUPINGS]
    for (dotted, known), name in zip(GROUPINGS.items(), groupings):
        if name is not None and name not in known:
            raise OfficialConfigError(f"the checkpoint's config sets {dotted}={name!r}; the project runs only "
                                      f"{' or '.join(map(repr, known))}")
    sources, targets = setting(config, "data.sources"), setting(config, "data.targets")
    height, width = _typed(config, "data.height", int), _typed(config, "data.width", int)
    sie = _typed(config, "model.transreid.sie_camera", bool)
    coefficient = _typed(config, "model.transreid.sie_coe", float)
    return OfficialSettings(
        dataset=str(sources[0]).lower() if isinstance(sources, (list, tuple)) and sources else "",
        targets=tuple(str(t).lower() for t in targets) if isinstance(targets, (list, tuple)) else (),
        image_size=(height, width) if height is not None and width is not None else None,
        norm_mean=_typed(config, "data.norm_mean", float, 3),
        norm_std=_typed(config, "data.norm_std", float, 3),
        vis_thresh=_typed(config, "model.kpr.keypoints.vis_thresh", float),
        prompt_grouping=groupings[0],
        part_grouping=groupings[1],
        semantic_weight=_typed(config, "model.solider.semantic_weight", float),
        camera_embedding=True if sie is None else sie,
        camera_scale=3.0 if coefficient is None else coefficient,
    )
