"""Promptable backbone: timm image model + zero-initialised prompt tokenizer + multi-stage fusion.

Spec section 2. The prompt tokenizer is a second "patch embedding": a conv with kernel = stride =
the stem's stride and as many output channels as the stem, initialised to zero, whose output is
added to the image tokens right after the stem (so an untrained tokenizer leaves the backbone
unchanged). The selected stage outputs are resized (bilinear) to the resolution of the first
selected stage, concatenated and reduced by 1x1 conv + BN + ReLU to the last stage's depth.

Shapes (ResNet, input [N, 3, H, W], prompt [N, P + 2, H, W], last_stride 1):
stem tokens [N, C0, H/4, W/4]; stage s output [N, C_s, H/2^(s+1), W/2^(s+1)] except stage 4 at
H/16 x W/16; spatial features F [N, C_last, Hf, Wf] with (Hf, Wf) the first selected stage's size.

Backbone families plug in through ``BackboneAdapter`` (stem + stages); only timm ResNets exist now.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.resnet import ResNet
from torch import nn

from kpr_model.config import KPRConfig, KPRModelError


class BackboneWeightsNotFoundError(KPRModelError, FileNotFoundError):
    """A backbone weight file that was asked for does not exist."""


class BackboneAdapter(nn.Module):
    """Uniform view of a backbone family: a stem producing image tokens, then up to 4 stages."""

    stem_channels: int
    stem_stride: int
    stage_channels: tuple[int, ...]

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """Image tokens [N, stem_channels, H / stem_stride, W / stem_stride]."""
        raise NotImplementedError

    def stages(self, tokens: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Outputs [N, C_s, H_s, W_s] of stages 1..upto applied in turn to the tokens."""
        raise NotImplementedError

    def load_timm_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict of the plain timm model (classifier keys are ignored)."""
        raise NotImplementedError


class TimmResNetAdapter(BackboneAdapter):
    """timm ResNet family (resnet10t/18/34/50/...): stem = conv1..maxpool, stages = layer1..layer4."""

    def __init__(self, model: ResNet, last_stride: int) -> None:
        super().__init__()
        self.model = model
        info = {f["module"]: f for f in model.feature_info}
        self.stem_channels = int(model.bn1.num_features)
        self.stem_stride = int(info["layer1"]["reduction"])
        self.stage_channels = tuple(int(info[f"layer{i}"]["num_chs"]) for i in range(1, 5))
        if last_stride == 1:
            _remove_downsampling(model.layer4[0])

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.maxpool(m.act1(m.bn1(m.conv1(images))))

    def stages(self, tokens: torch.Tensor, upto: int) -> list[torch.Tensor]:
        outputs = []
        x = tokens
        for layer in (self.model.layer1, self.model.layer2, self.model.layer3, self.model.layer4)[:upto]:
            x = layer(x)
            outputs.append(x)
        return outputs

    def load_timm_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        wanted = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = self.model.load_state_dict(wanted, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise KPRModelError(
                f"backbone weights do not fit {type(self.model).__name__}: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )


def _remove_downsampling(block: nn.Module) -> None:
    """Make a residual block keep its input resolution (ReID "last stride 1")."""
    for name, child in list(block.named_children()):
        if isinstance(child, nn.Conv2d) and child.stride != (1, 1):
            child.stride = (1, 1)
        elif isinstance(child, (nn.AvgPool2d, nn.MaxPool2d)) and child.stride not in (1, (1, 1)):
            setattr(block, name, nn.Identity())
        else:
            _remove_downsampling(child)


def build_adapter(config: KPRConfig) -> BackboneAdapter:
    """Backbone adapter for ``config.backbone`` built with random weights (never downloads)."""
    try:
        model = timm.create_model(config.backbone, pretrained=False, num_classes=0, global_pool="")
    except RuntimeError as exc:
        raise KPRModelError(f"unknown timm backbone {config.backbone!r}: {exc}") from exc
    if isinstance(model, ResNet):
        return TimmResNetAdapter(model, config.last_stride)
    raise KPRModelError(
        f"backbone {config.backbone!r} ({type(model).__name__}) is not supported yet; use a timm ResNet"
    )


class MultiStageFusion(nn.Module):
    """Resize stage outputs to the first one's size, concat, 1x1 conv + BN + ReLU to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.dim_reduce = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self.dim_reduce[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.dim_reduce[0].bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        resized = [features[0]] + [
            F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in features[1:]
        ]
        return self.dim_reduce(torch.cat(resized, dim=1))


class PromptableBackbone(nn.Module):
    """Image + keypoint prompt -> spatial features F [N, C, Hf, Wf]."""

    def __init__(self, config: KPRConfig) -> None:
        super().__init__()
        self.features = build_adapter(config)
        self.stages_used = config.fusion_stages
        stride = self.features.stem_stride
        self.masks_patch_embed = nn.Conv2d(
            config.num_prompt_channels, self.features.stem_channels, kernel_size=stride, stride=stride
        )
        nn.init.zeros_(self.masks_patch_embed.weight)
        nn.init.zeros_(self.masks_patch_embed.bias)
        depths = [self.features.stage_channels[s - 1] for s in self.stages_used]
        self.out_channels = depths[-1]
        self.msf = MultiStageFusion(sum(depths), depths[-1]) if len(depths) > 1 else None

    def forward(self, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        tokens = self.features.stem(images)
        if prompts.shape[-2:] != images.shape[-2:]:
            prompts = F.interpolate(prompts, size=images.shape[-2:], mode="bilinear", align_corners=False)
        tokens = tokens + self.masks_patch_embed(prompts.to(tokens.dtype))
        outputs = self.features.stages(tokens, upto=self.stages_used[-1])
        selected = [outputs[s - 1] for s in self.stages_used]
        return self.msf(selected) if self.msf is not None else selected[0]

    def load_backbone_weights(self, path: str | Path) -> None:
        """Load local timm weights (.safetensors, or a torch file read with weights_only=True) into the backbone."""
        self.features.load_timm_state_dict(read_state_dict(path))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensor dict from a .safetensors file or a torch file (weights_only, no pickle code runs)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsNotFoundError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise KPRModelError(f"{path} does not hold a state dict")
    return state
