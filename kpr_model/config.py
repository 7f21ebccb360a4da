"""KPR model configuration (a JSON-safe dataclass) and the package's base error.

The defaults follow the KPR paper and its official code: a ResNet-50 backbone at 256x128, K = 8
target parts ("eight" grouping), cck8 keypoint prompts, 512-d embeddings and the GiLt + body-part
attention loss weights. The other official grouping pair, K = 5 "five_v" parts with cck6 prompts (the
Market-1501, Occluded-ReID and Partial-ReID releases), is ``num_parts=5, part_grouping="five_v",
prompt_grouping="cck6"`` (``kpr_model.keypoints``). ``KPRConfig.tiny()`` and ``KPRConfig.demo()``
are small variants for unit tests and the CPU demo.

Backbones (``backbone``): a timm ResNet name ("resnet50", "resnet10t", ...), a timm Swin / Swin-v2
name ("swin_base_patch4_window7_224", built at ``image_size``), a timm ViT name
("vit_base_patch16_224", built at ``image_size``), or a SOLIDER Swin ("solider_swin_tiny",
"solider_swin_small", "solider_swin_base"; mmcv layout, see ``kpr_model.solider_swin``).
``backbone_args`` are extra constructor keywords (e.g. ``{"embed_dim": 16, "depths": [1, 1, 1, 1]}``
for a tiny test Swin, ``{"semantic_weight": 0.2}`` for SOLIDER). Presets with the official settings:
``solider_swin_base()`` (Occluded-Duke SOLIDER test config), ``timm_swin_base()``, ``vit_base()``;
tiny variants ``tiny_swin()``, ``tiny_solider()``, ``tiny_vit()`` for tests.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kpr_model.config_check import checked_values
from kpr_model.keypoints import PART_GROUPINGS, PROMPT_GROUPINGS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOLIDER_MEAN_STD = (0.5, 0.5, 0.5)
CAMERA_FIELDS = ("camera_embeddings", "camera_embedding_scale", "camera_dataset")


class KPRModelError(Exception):
    """Base class of every error raised on purpose by ``kpr_model``."""


class KPRConfigError(KPRModelError, ValueError):
    """A model configuration that cannot be used: unknown keys, wrong types, impossible values."""


@dataclass(frozen=True)
class LossConfig:
    """Weights and hyper-parameters of the GiLt and body-part attention losses (spec section 4)."""

    id_global: float = 1.0
    id_foreground: float = 1.0
    id_concat_parts: float = 1.0
    id_background: float = 0.0
    id_parts: float = 0.0
    triplet_parts: float = 1.0
    triplet_margin: float = 0.3
    triplet_use_visibility: bool = False
    part_attention: float = 0.35
    label_smoothing: float = 0.1
    part_attention_label_smoothing: float = 0.1

    def id_weights(self) -> dict[str, float]:
        """Identity (cross-entropy) loss weight per embedding type, keyed like ``KPROutput.id_logits``."""
        return {
            "global": self.id_global,
            "foreground": self.id_foreground,
            "concat_parts": self.id_concat_parts,
            "background": self.id_background,
            "parts": self.id_parts,
        }


@dataclass(frozen=True)
class KPRConfig:
    """Everything needed to rebuild a KPR network and its preprocessing, serialisable to JSON.

    image_size is (H, W), both multiples of 32. fusion_stages lists the backbone stages (1-based)
    fused by the multi-stage fusion; a single stage means no fusion (its features are used as is).
    gaussian_scale sets the keypoint heatmap radius: int(W / gaussian_scale) pixels.
    camera_embeddings > 0 gives the backbone one learned camera embedding per camera of the dataset
    ``camera_dataset`` (TransReID's SIE, as official checkpoints trained with the dataset's cameras hold);
    a pass given camera ids adds ``camera_embedding_scale`` times that camera's embedding to the patch tokens.
    """

    backbone: str = "resnet50"
    image_size: tuple[int, int] = (256, 128)
    num_parts: int = 8
    part_grouping: str = "eight"
    prompt_grouping: str = "cck8"
    embed_dim: int = 512
    num_classes: int = 0
    vis_thresh: float = 0.3
    gaussian_scale: float = 11.0
    norm_mean: tuple[float, float, float] = IMAGENET_MEAN
    norm_std: tuple[float, float, float] = IMAGENET_STD
    last_stride: int = 1
    fusion_stages: tuple[int, ...] = (1, 2, 3, 4)
    loss: LossConfig = field(default_factory=LossConfig)
    backbone_args: dict[str, Any] = field(default_factory=dict)
    camera_embeddings: int = 0
    camera_embedding_scale: float = 3.0
    camera_dataset: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        object.__setattr__(self, "norm_mean", tuple(float(v) for v in self.norm_mean))
        object.__setattr__(self, "norm_std", tuple(float(v) for v in self.norm_std))
        object.__setattr__(self, "fusion_stages", tuple(sorted(int(v) for v in self.fusion_stages)))
        object.__setattr__(self, "backbone_args", _json_safe_args(self.backbone_args))
        self._validate()

    def _validate(self) -> None:
        if len(self.image_size) != 2 or min(self.image_size) < 32 or any(v % 32 for v in self.image_size):
            raise KPRConfigError(f"image_size must be (H, W), both positive multiples of 32, got {self.image_size}")
        if self.part_grouping not in PART_GROUPINGS:
            raise KPRConfigError(f"unknown part_grouping {self.part_grouping!r}; known: {sorted(PART_GROUPINGS)}")
        if self.num_parts != len(PART_GROUPINGS[self.part_grouping]):
            raise KPRConfigError(
                f"num_parts={self.num_parts} does not match part_grouping {self.part_grouping!r} "
                f"({len(PART_GROUPINGS[self.part_grouping])} parts)"
            )
        if self.prompt_grouping not in PROMPT_GROUPINGS:
            raise KPRConfigError(f"unknown prompt_grouping {self.prompt_grouping!r}; known: {sorted(PROMPT_GROUPINGS)}")
        if len(self.norm_mean) != 3 or len(self.norm_std) != 3 or min(self.norm_std) <= 0:
            raise KPRConfigError("norm_mean and norm_std must have 3 values, std > 0")
        if not self.fusion_stages or not set(self.fusion_stages) <= {1, 2, 3, 4}:
            raise KPRConfigError(f"fusion_stages must be a non-empty subset of (1, 2, 3, 4), got {self.fusion_stages}")
        if self.last_stride not in (1, 2):
            raise KPRConfigError(f"last_stride must be 1 or 2, got {self.last_stride}")
        if self.embed_dim <= 0 or self.num_classes < 0 or self.gaussian_scale <= 0:
            raise KPRConfigError("embed_dim and gaussian_scale must be > 0 and num_classes >= 0")
        if self.camera_embeddings < 0:
            raise KPRConfigError(f"camera_embeddings must be >= 0, got {self.camera_embeddings}")

    @property
    def num_prompt_channels(self) -> int:
        """Prompt tensor depth: background + one channel per prompt group + negative."""
        return len(PROMPT_GROUPINGS[self.prompt_grouping]) + 2

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def with_updates(self, **changes: Any) -> "KPRConfig":
        """A copy with some fields changed (validated like a new config)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists) that ``from_dict`` turns back into an equal config."""
        data = asdict(self)
        # Left out when empty, so configs (and model ids) of checkpoints saved before the field existed are unchanged.
        if self.backbone_args:
            data["backbone_args"] = json.loads(json.dumps(self.backbone_args))
        else:
            del data["backbone_args"]
        for name in CAMERA_FIELDS:  # likewise left out at their defaults
            if data[name] == KPRConfig.__dataclass_fields__[name].default:
                del data[name]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KPRConfig":
        """Config from ``to_dict`` output (e.g. parsed JSON).

        Unknown keys (typos, version skew), values of the wrong type and impossible values raise
        KPRConfigError (a ValueError) naming the key.
        """
        values = checked_values(cls, data, "KPRConfig", KPRConfigError)
        if "loss" in values:
            values["loss"] = LossConfig(**checked_values(LossConfig, values["loss"], "KPRConfig.loss", KPRConfigError))
        return cls(**values)

    @classmethod
    def tiny(cls, **changes: Any) -> "KPRConfig":
        """Very small, fast model for unit tests (resnet10t at 64x32, 32-d; ~0.13 s per batch-32 step on 2 cores)."""
        base = cls(backbone="resnet10t", image_size=(64, 32), embed_dim=32, fusion_stages=(2, 3, 4))
        return base.with_updates(**changes)

    @classmethod
    def demo(cls, **changes: Any) -> "KPRConfig":
        """Model that the demo trains from scratch on CPU in a few minutes (resnet10t at 128x64, 128-d).

        Stage 4 keeps its stride 2 (cheaper); the fusion brings every stage back to 16x8 anyway.
        Measured: ~0.37 s per training step of batch 32 on 2 CPU cores.
        """
        base = cls(
            backbone="resnet10t", image_size=(128, 64), embed_dim=128, fusion_stages=(2, 3, 4), last_stride=2
        )
        return base.with_updates(**changes)

    @classmethod
    def solider_swin_base(cls, **changes: Any) -> "KPRConfig":
        """Official Occluded-Duke SOLIDER test config (spec sections 8-9): SOLIDER Swin-B at 384x128,
        mean = std = 0.5, cck8 prompts (10 channels), K = 8 "eight" parts, 512-d, 702 training ids,
        fusion of the 4 stages -> features [N, 1024, 96, 32], semantic_weight -1 (unused)."""
        base = cls(
            backbone="solider_swin_base",
            image_size=(384, 128),
            num_parts=8,
            part_grouping="eight",
            prompt_grouping="cck8",
            embed_dim=512,
            num_classes=702,
            norm_mean=SOLIDER_MEAN_STD,
            norm_std=SOLIDER_MEAN_STD,
            fusion_stages=(1, 2, 3, 4),
            backbone_args={"semantic_weight": -1.0},
        )
        return base.with_updates(**changes)

    @classmethod
    def timm_swin_base(cls, **changes: Any) -> "KPRConfig":
        """ImageNet Swin-B (timm ``swin_base_patch4_window7_224`` built at 384x128), 4-stage fusion."""
        base = cls(backbone="swin_base_patch4_window7_224", image_size=(384, 128), fusion_stages=(1, 2, 3, 4))
        return base.with_updates(**changes)

    @classmethod
    def vit_base(cls, **changes: Any) -> "KPRConfig":
        """ViT-B/16 (timm ``vit_base_patch16_224`` built at 384x128): one stage, features [N, 768, 24, 8]."""
        base = cls(backbone="vit_base_patch16_224", image_size=(384, 128), fusion_stages=(1,))
        return base.with_updates(**changes)

    @classmethod
    def tiny_swin(cls, **changes: Any) -> "KPRConfig":
        """Tiny timm Swin for tests (64x32, embed 16, 1-2 blocks per stage, 32-d embeddings)."""
        base = cls(
            backbone="swin_tiny_patch4_window7_224",
            image_size=(64, 32),
            embed_dim=32,
            backbone_args={"embed_dim": 16, "depths": [1, 2, 1, 1], "num_heads": [1, 2, 2, 4]},
        )
        return base.with_updates(**changes)

    @classmethod
    def tiny_solider(cls, **changes: Any) -> "KPRConfig":
        """Tiny SOLIDER-layout Swin for tests (64x32, embed 16, 32-d embeddings, SOLIDER normalisation)."""
        base = cls(
            backbone="solider_swin_base",
            image_size=(64, 32),
            embed_dim=32,
            norm_mean=SOLIDER_MEAN_STD,
            norm_std=SOLIDER_MEAN_STD,
            backbone_args={"embed_dim": 16, "depths": [1, 2, 1, 1], "num_heads": [1, 2, 2, 4], "semantic_weight": -1.0},
        )
        return base.with_updates(**changes)

    @classmethod
    def tiny_vit(cls, **changes: Any) -> "KPRConfig":
        """Tiny timm ViT/16 for tests (64x32 -> 4x2 tokens, embed 32, depth 2, 32-d embeddings)."""
        base = cls(
            backbone="vit_tiny_patch16_224",
            image_size=(64, 32),
            embed_dim=32,
            fusion_stages=(1,),
            backbone_args={"embed_dim": 32, "depth": 2, "num_heads": 2},
        )
        return base.with_updates(**changes)


def _json_safe_args(args: Any) -> dict[str, Any]:
    """A private copy of backbone_args with tuples turned into lists (so to_dict/from_dict round-trips).

    Strict JSON: NaN and infinities are refused (they would make equal configs compare unequal).
    """
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise KPRConfigError(f"backbone_args must be a dict with str keys, got {args!r:.80}")
    try:
        return json.loads(json.dumps(args, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise KPRConfigError(f"backbone_args must be JSON-serialisable: {exc}") from exc
