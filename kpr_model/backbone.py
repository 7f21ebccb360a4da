"""Promptable backbone: timm image model + zero-initialised prompt tokenizer + multi-stage fusion.

Spec section 2. The prompt tokenizer is a second "patch embedding": a conv with kernel = stride =
the stem's stride and as many output channels as the stem, initialised to zero, whose output is
added to the image tokens right after the stem (so an untrained tokenizer leaves the backbone
unchanged). The selected stage outputs are resized (bilinear) to the resolution of the first
selected stage, concatenated and reduced by 1x1 conv + BN + ReLU to the last stage's depth.

Shapes (ResNet, input [N, 3, H, W], prompt [N, P + 2, H, W], last_stride 1):
stem tokens [N, C0, H/4, W/4]; stage s output [N, C_s, H/2^(s+1), W/2^(s+1)] except stage 4 at
H/16 x W/16; spatial features F [N, C_last, Hf, Wf] with (Hf, Wf) the first selected stage's size.

Backbone families plug in through ``BackboneAdapter`` (stem + stages + prompt tokenizer):

- timm ResNets: tokens NCHW; prompt tokenizer = a bare zero-initialised conv (``masks_patch_embed``).
- timm Swin / Swin-v2 (built at the config's image size): stem = ``patch_embed`` (conv + LayerNorm,
  NHWC tokens [N, H/4, W/4, C]); stages = ``layers.0..3`` (raw outputs, as the official
  ``promptable_timm_swin.py``).
- timm ViT (built at the config's image size): stem = ``patch_embed`` reshaped to NHWC [N, H/16,
  W/16, C]; a single "stage" = position embedding (+ class token), blocks, final norm, patch
  tokens back to [N, C, H/16, W/16] (official ``promptable_timm_vit.py``).
- SOLIDER Swin (``kpr_model.solider_swin``, mmcv names): stem = ``patch_embed``; stage i output =
  ``norm_i`` of the tokens before patch merging (official ``promptable_solider.py``).

For the transformer families the prompt tokenizer ("embed_heatmaps_patches") is a second patch
embedding with the image one's patch size, embed dim and norm (``masks_patch_embed.projection`` +
``masks_patch_embed.norm``), its projection initialised to zero, its NHWC output added to the image
patch tokens right after the image patch embedding. Prompts of another size than the image are
resized bilinearly with align_corners=True (as the official ``_mask_embed``).

Camera embedding (SIE, from TransReID, in the official ``PromptableTransformerBackbone``): with
``config.camera_embeddings`` = cams > 0 the backbone holds ``sie_embed`` [cams, 1, C]; a pass given
camera ids adds ``config.camera_embedding_scale`` x ``sie_embed[camera]`` to every token right after
the prompt tokens; a pass without camera ids adds nothing (the official feature extractor's way).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.resnet import ResNet
from torch import nn

from kpr_model.config import KPRConfig, KPRModelError
from kpr_model.onnx_trunk import OnnxTrunk
from kpr_model.solider_swin import SOLIDER_ARCHS, PatchEmbed, build_solider_swin, convert_original_swin


ONNX_TRUNK = "onnx_trunk"


class BackboneWeightsNotFoundError(KPRModelError, FileNotFoundError):
    """A backbone weight file that was asked for does not exist."""


class BackboneAdapter(nn.Module):
    """Uniform view of a backbone family: a stem producing image tokens, then up to 4 stages."""

    stem_channels: int
    stem_stride: int
    stage_channels: tuple[int, ...]
    channels_last: bool = True

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """Image tokens at 1 / stem_stride of the input: [N, C, h, w] (ResNet) or [N, h, w, C] (transformers)."""
        raise NotImplementedError

    def stages(self, tokens: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Outputs [N, C_s, H_s, W_s] of stages 1..upto applied in turn to the tokens."""
        raise NotImplementedError

    def prompt_tokenizer(self, in_channels: int) -> nn.Module:
        """Zero-initialised module mapping prompts [N, in_channels, H, W] to tokens laid out like ``stem``'s."""
        raise NotImplementedError

    def load_timm_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict of the plain backbone (timm, or SOLIDER for SOLIDER Swin; classifier keys ignored)."""
        raise NotImplementedError


class TimmResNetAdapter(BackboneAdapter):
    """timm ResNet family (resnet10t/18/34/50/...): stem = conv1..maxpool, stages = layer1..layer4."""

    channels_last = False

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

    def prompt_tokenizer(self, in_channels: int) -> nn.Module:
        return _zero_conv(in_channels, self.stem_channels, self.stem_stride)

    def load_timm_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        wanted = {k: v for k, v in state.items() if not k.startswith("fc.")}
        _load_exact(self.model, wanted)


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], optional: tuple[str, ...] = ()) -> None:
    """load_state_dict that raises KPRModelError on missing / unexpected keys (bar names ending in ``optional``)."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise KPRModelError(f"backbone weights do not fit {type(model).__name__}: {exc}".splitlines()[0]) from exc
    missing = [k for k in result.missing_keys if not k.endswith(optional)]
    unexpected = [k for k in result.unexpected_keys if not k.endswith(optional)]
    if missing or unexpected:
        raise KPRModelError(
            f"backbone weights do not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _strip_prefixes(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _new_patch_embed_like(
    in_channels: int, embed_dim: int, patch: int, norm: bool, bias: bool = True
) -> PatchEmbed:
    tokenizer = PatchEmbed(in_channels, embed_dim, patch, norm=norm, bias=bias)
    tokenizer.zero_init()
    return tokenizer


def _timm_patch_embed_geometry(model: nn.Module) -> tuple[int, int, bool]:
    """(embed dim, patch stride, has patch norm) of a timm transformer's square patch embedding."""
    pe = model.patch_embed
    stride = int(pe.patch_size[0])
    if tuple(pe.patch_size) != (stride, stride):
        raise KPRModelError(f"non-square patches {pe.patch_size} are not supported")
    return int(model.embed_dim), stride, not isinstance(pe.norm, nn.Identity)


class TimmSwinAdapter(BackboneAdapter):
    """timm Swin / Swin-v2 built at the KPR image size: stem = patch_embed (NHWC), stages = layers.0..3."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.stem_channels, self.stem_stride, self._patch_norm = _timm_patch_embed_geometry(model)
        self.stage_channels = tuple(int(f["num_chs"]) for f in model.feature_info)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.patch_embed(images)

    def stages(self, tokens: torch.Tensor, upto: int) -> list[torch.Tensor]:
        outputs = []
        x = tokens
        for layer in self.model.layers[:upto]:
            x = layer(x)
            outputs.append(x.permute(0, 3, 1, 2).contiguous())
        return outputs

    def prompt_tokenizer(self, in_channels: int) -> nn.Module:
        return _new_patch_embed_like(in_channels, self.stem_channels, self.stem_stride, self._patch_norm)

    def load_timm_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = {k: v for k, v in _strip_prefixes(state, ("module.",)).items() if not k.startswith("head.")}
        module = __import__(type(self.model).__module__, fromlist=["checkpoint_filter_fn"])
        if hasattr(module, "checkpoint_filter_fn"):  # original-format keys, resized tables / masks
            state = module.checkpoint_filter_fn(state, self.model)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        _load_exact(self.model, state, optional=("attn_mask", "relative_position_index", "relative_coords_table"))


class TimmViTAdapter(BackboneAdapter):
    """timm ViT built at the KPR image size: one stage at 1/patch resolution (pos embed, blocks, final norm)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.stem_channels, self.stem_stride, self._patch_norm = _timm_patch_embed_geometry(model)
        self.stage_channels = (int(model.embed_dim),)
        self._patch_bias = model.patch_embed.proj.bias is not None

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.model.patch_embed(images)  # [N, h*w, C]
        h, w = images.shape[-2] // self.stem_stride, images.shape[-1] // self.stem_stride
        return tokens.view(tokens.shape[0], h, w, -1)

    def stages(self, tokens: torch.Tensor, upto: int) -> list[torch.Tensor]:
        m = self.model
        n, h, w, c = tokens.shape
        x = m._pos_embed(tokens.reshape(n, h * w, c))
        x = m.norm(m.blocks(m.norm_pre(m.patch_drop(x))))
        x = x[:, m.num_prefix_tokens :]
        return [x.transpose(1, 2).reshape(n, c, h, w)]

    def prompt_tokenizer(self, in_channels: int) -> nn.Module:
        return _new_patch_embed_like(
            in_channels, self.stem_channels, self.stem_stride, self._patch_norm, bias=self._patch_bias
        )

    def load_timm_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = {k: v for k, v in _strip_prefixes(state, ("module.",)).items() if not k.startswith("head.")}
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, self.model)  # resizes the position embedding to our grid
        _load_exact(self.model, {k: v for k, v in state.items() if not k.startswith("head.")})


class SoliderSwinAdapter(BackboneAdapter):
    """SOLIDER Swin (``kpr_model.solider_swin``): stage outputs are norm_i of the tokens before merging."""

    def __init__(self, name: str, args: dict) -> None:
        super().__init__()
        try:
            self.model = build_solider_swin(name, **args)
        except TypeError as exc:
            raise KPRModelError(f"bad backbone_args for {name}: {exc}") from exc
        self.stem_channels = int(self.model.num_features[0])
        self.stem_stride = int(self.model.patch_size)
        self.stage_channels = tuple(int(c) for c in self.model.num_features)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.patch_embed(images)

    def stages(self, tokens: torch.Tensor, upto: int) -> list[torch.Tensor]:
        return self.model.forward_stages(tokens, upto)

    def prompt_tokenizer(self, in_channels: int) -> nn.Module:
        return _new_patch_embed_like(in_channels, self.stem_channels, self.stem_stride, norm=True)

    def load_timm_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """SOLIDER / mmcv Swin weights (``backbone.`` / ``module.`` prefixes stripped), or original Swin names."""
        state = _strip_prefixes(state, ("module.", "backbone."))
        if any(k.startswith("layers.") for k in state):
            state = convert_original_swin(state)
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc.", "classifier."))}
        if self.model.semantic_weight < 0:  # SOLIDER reid weights carry semantic layers; unused without them
            state = {k: v for k, v in state.items() if not k.startswith(("semantic_embed_w.", "semantic_embed_b."))}
        _load_exact(self.model, state, optional=("relative_position_index",))


class OnnxTrunkAdapter(BackboneAdapter):
    """A global ReID ONNX model's trunk (``kpr_model.onnx_trunk``): stem = up to its first max-pooling, one stage.

    Its images are RGB pixels 0..255 (the config's normalisation undoes itself); the trunk codes them as the ONNX
    model wants.
    """

    channels_last = False

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.model = OnnxTrunk(spec)
        self.stem_channels = int(spec["stem_channels"])
        self.stem_stride = int(spec["stem_stride"])
        self.stage_channels = (int(spec["feature_channels"]),)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.stem(images)

    def stages(self, tokens: torch.Tensor, upto: int) -> list[torch.Tensor]:
        return [self.model.body(tokens)]

    def prompt_tokenizer(self, in_channels: int) -> nn.Module:
        return _zero_conv(in_channels, self.stem_channels, self.stem_stride)

    def load_timm_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_weights(state)


def _zero_conv(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    """A zero-initialised conv with kernel = stride: prompt tokens that leave an untrained backbone unchanged."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=stride, stride=stride)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


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
    args = dict(config.backbone_args)
    if config.backbone in SOLIDER_ARCHS:
        return SoliderSwinAdapter(config.backbone, args)
    if config.backbone == ONNX_TRUNK:
        if not isinstance(args.get("trunk"), dict):
            raise KPRModelError(f"backbone {ONNX_TRUNK!r} needs backbone_args {{'trunk': <kpr_model.onnx_trunk spec>}}")
        return OnnxTrunkAdapter(args["trunk"])
    try:
        family = timm.models.model_entrypoint(config.backbone).__module__.rsplit(".", 1)[-1]
    except RuntimeError as exc:
        raise KPRModelError(f"unknown backbone {config.backbone!r}: {exc}") from exc
    if family in ("swin_transformer", "swin_transformer_v2", "vision_transformer"):
        args["img_size"] = tuple(config.image_size)
    try:
        model = timm.create_model(config.backbone, pretrained=False, num_classes=0, global_pool="", **args)
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise KPRModelError(f"cannot build timm backbone {config.backbone!r} with {args}: {exc}") from exc
    if isinstance(model, ResNet):
        return TimmResNetAdapter(model, config.last_stride)
    if family in ("swin_transformer", "swin_transformer_v2"):
        return TimmSwinAdapter(model)
    if family == "vision_transformer":
        return TimmViTAdapter(model)
    raise KPRModelError(
        f"backbone {config.backbone!r} ({type(model).__name__}) is not supported; use a timm ResNet, Swin or ViT, "
        f"or one of {sorted(SOLIDER_ARCHS)}"
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
        if self.stages_used[-1] > len(self.features.stage_channels):
            raise KPRModelError(
                f"fusion_stages {self.stages_used} are not supported by {config.backbone!r}: it has "
                f"{len(self.features.stage_channels)} stage(s) (ViT: use fusion_stages=(1,))"
            )
        self.masks_patch_embed = self.features.prompt_tokenizer(config.num_prompt_channels)
        depths = [self.features.stage_channels[s - 1] for s in self.stages_used]
        self.out_channels = depths[-1]
        self.msf = MultiStageFusion(sum(depths), depths[-1]) if len(depths) > 1 else None
        self.camera_scale = config.camera_embedding_scale
        self.sie_embed = None
        if config.camera_embeddings:
            self.sie_embed = nn.Parameter(torch.zeros(config.camera_embeddings, 1, self.features.stem_channels))
            nn.init.trunc_normal_(self.sie_embed, std=0.02)

    def forward(self, images: torch.Tensor, prompts: torch.Tensor, cameras: torch.Tensor | None = None) -> torch.Tensor:
        """Spatial features of ``images`` prompted by ``prompts`` (+ the camera term when ``cameras`` [N] is given)."""
        selected = self.selected_stages(images, prompts, cameras)
        return self.msf(selected) if self.msf is not None else selected[0]

    def selected_stages(self, images: torch.Tensor, prompts: torch.Tensor,
                        cameras: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Outputs of the ``fusion_stages`` of the prompted backbone, before the fusion."""
        tokens = self.features.stem(images)
        if prompts.shape[-2:] != images.shape[-2:]:
            prompts = F.interpolate(prompts, size=images.shape[-2:], mode="bilinear", align_corners=True)
        tokens = tokens + self.masks_patch_embed(prompts.to(tokens.dtype))
        if cameras is not None:
            tokens = tokens + self._camera_term(cameras.to(tokens.device)).to(tokens.dtype)
        outputs = self.features.stages(tokens, upto=self.stages_used[-1])
        return [outputs[s - 1] for s in self.stages_used]

    def _camera_term(self, cameras: torch.Tensor) -> torch.Tensor:
        """camera_scale x sie_embed[camera] per image, shaped to add onto the stem's tokens."""
        if self.sie_embed is None:
            raise ValueError("camera ids were given but this model has no camera embeddings")
        count = len(self.sie_embed)
        if cameras.ndim != 1 or (len(cameras) and not 0 <= int(cameras.min()) <= int(cameras.max()) < count):
            raise ValueError(f"camera ids must be a vector of values in [0, {count}), got {cameras.tolist()}")
        term = self.camera_scale * self.sie_embed[cameras.long(), 0]
        return term[:, None, None, :] if self.features.channels_last else term[:, :, None, None]

    def load_backbone_weights(self, path: str | Path) -> None:
        """Load local backbone weights (.safetensors, or a torch file read with weights_only=True).

        timm weights for timm backbones; SOLIDER (mmcv names) or original Swin weights for SOLIDER Swin.
        A missing file raises BackboneWeightsNotFoundError; weights that do not fit raise KPRModelError.
        """
        self.features.load_timm_state_dict(read_state_dict(path))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensor dict from a .safetensors file or a torch file (weights_only, no pickle code runs)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsNotFoundError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise KPRModelError(
            f"{path} holds more than tensors (pickled objects); it is not loaded, since unpickling can run code. "
            f"In a trusted environment, re-save just its state dict (torch.save(state_dict, ...)) and load that"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise KPRModelError(f"{path} does not hold a state dict")
    return state
