"""Optimised KPR inference: the same outputs as ``KPR.forward_reid``, fewer operations and kernels.

``FastKPR`` rebuilds the test-time pass of a trained (eval-mode) KPR from its weights:

- every eval-mode batch norm is folded into the layer before it (fusion conv, pixel classifier,
  the Linear of each after-pooling reduction);
- the multi-stage fusion's 1x1 conv is applied to each stage at the stage's own resolution and
  the results are upsampled and summed: bilinear interpolation (weights summing to 1) commutes with
  a per-pixel linear map, so this equals conv(concat(upsampled stages)) while doing ~8x fewer
  multiply-adds on Swin-B at 384x128 (the 1920-channel concatenation is never built);
- foreground and part pooling are one batched contraction of the features with K + 1 weight maps;
- with ``channels_last`` the weights and the inputs use the NHWC layout; the Swin attention uses
  PyTorch's fused SDPA kernel (``kpr_model.solider_swin``), as timm's Swin does.

``FastKPREncoder`` runs it as the product's encoder: crops are resized on the host, the uint8
pixels are copied (pinned) to the device and normalised there, the prompts are rendered on the
device, every call sees the same batch shape (the last chunk is padded, so a compiled graph is
reused), under bf16 autocast on CUDA and optionally ``torch.compile`` (static shapes).

Tolerances against the eager fp32 model (tests/test_fast_inference.py): fp32 max abs difference
<= 1e-4 on the L2-normalised embeddings and visibility; bf16 cosine >= 0.999 per embedding.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kpr_model.config import KPRConfig
from kpr_model.embeddings import ReIDEmbeddings
from kpr_model.encoder import KPREncoder, prepare_crops
from kpr_model.model import KPR, part_visibility

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def folded_affine(weight: torch.Tensor, bias: torch.Tensor | None,
                  bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a linear map [O, ...] followed by eval-mode ``bn``, as one linear map."""
    scale, shift = folded_bn_affine(bn)
    base = torch.zeros_like(shift) if bias is None else bias
    return weight * scale.view(-1, *([1] * (weight.ndim - 1))), base * scale + shift


def folded_bn_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode batch norm: bn(x) = x * scale + shift."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class StagewiseFusion(nn.Module):
    """Multi-stage fusion as sum over stages of upsample(W_s x_s), + folded BN bias, ReLU (= ``MultiStageFusion``)."""

    def __init__(self, fusion: nn.Module, stage_channels: Sequence[int]) -> None:
        super().__init__()
        conv, bn = fusion.dim_reduce[0], fusion.dim_reduce[1]
        weight, bias = folded_affine(conv.weight.detach()[:, :, 0, 0], conv.bias.detach(), bn)
        self.weights = nn.ParameterList(nn.Parameter(w.clone(), requires_grad=False)
                                        for w in weight.split(list(stage_channels), dim=1))
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        out = _pixelwise(features[0], self.weights[0])
        for feats, weight in zip(features[1:], list(self.weights)[1:]):
            out = out + F.interpolate(_pixelwise(feats, weight), size=size, mode="bilinear", align_corners=True)
        return torch.relu(out + self.bias.view(1, -1, 1, 1).to(out.dtype))


def _pixelwise(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The bias-free 1x1 convolution of [N, C, H, W] by ``weight`` [O, C]."""
    return F.conv2d(x, weight[:, :, None, None].to(x.dtype))


class FastKPR(nn.Module):
    """(images, prompts[, cameras]) -> (global_emb [N, D], parts [N, K, D], visibility [N, K]) as ``KPR.forward_reid``.

    Built from a copy of ``model`` in eval mode (the model itself is untouched); weights are frozen.
    """

    def __init__(self, model: KPR) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()
        self.config = model.config
        self.backbone = model.backbone
        stage_channels = [self.backbone.features.stage_channels[s - 1] for s in self.backbone.stages_used]
        self.fusion = StagewiseFusion(self.backbone.msf, stage_channels) if self.backbone.msf is not None else None
        self.backbone.msf = None
        classifier = model.pixel_classifier
        scale, shift = folded_bn_affine(classifier.bn)
        weight = classifier.classifier.weight[:, :, 0, 0]
        self.pixel_weight = nn.Parameter((weight * scale).detach().clone(), requires_grad=False)
        self.pixel_bias = nn.Parameter((classifier.classifier.bias + weight @ shift).detach().clone(),
                                       requires_grad=False)
        fg_weight, fg_bias = _folded_reduction(model.foreground_after_pooling_dim_reduce)
        part_weight, part_bias = _folded_reduction(model.parts_after_pooling_dim_reduce)
        neck_scale, neck_shift = folded_bn_affine(model.foreground_identity_classifier.bn)
        for name, value in (("fg_weight", fg_weight), ("fg_bias", fg_bias), ("part_weight", part_weight),
                            ("part_bias", part_bias), ("neck_scale", neck_scale), ("neck_shift", neck_shift)):
            setattr(self, name, nn.Parameter(value.detach().clone(), requires_grad=False))
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor, prompts: torch.Tensor,
                cameras: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        selected = self.backbone.selected_stages(images, prompts, cameras)
        feats = self.fusion(selected) if self.fusion is not None else selected[0]
        logits = F.conv2d(feats, self.pixel_weight[:, :, None, None].to(feats.dtype), self.pixel_bias.to(feats.dtype))
        maps = logits.float().softmax(dim=1)
        part_maps = maps[:, 1:]
        area = maps.shape[-2] * maps.shape[-1]
        weights = torch.cat([part_maps.amax(dim=1, keepdim=True) / area,
                             part_maps / part_maps.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)], dim=1)
        pooled = torch.einsum("nkhw,nchw->nkc", weights.to(feats.dtype), feats).float()  # [N, K + 1, C]
        foreground = torch.relu(F.linear(pooled[:, 0], self.fg_weight, self.fg_bias))
        parts = torch.relu(F.linear(pooled[:, 1:], self.part_weight, self.part_bias))
        holistic = foreground * self.neck_scale + self.neck_shift
        return F.normalize(holistic, dim=-1), F.normalize(parts, dim=-1), part_visibility(maps)


def _folded_reduction(reduce: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of an ``AfterPoolingDimReduce``'s Linear with its BN folded in (its ReLU stays)."""
    linear, bn = reduce.layers[0], reduce.layers[1]
    return folded_affine(linear.weight, linear.bias, bn)


CompileBackend = str | Callable | None


def optimised_kpr(model: KPR, device: str | torch.device, channels_last: bool = True,
                  compile_backend: CompileBackend = None) -> nn.Module:
    """``FastKPR`` of ``model`` on ``device`` (NHWC weights with ``channels_last``), compiled for static shapes by
    ``compile_backend`` ("inductor"; "eager" only traces) unless it is None."""
    fast = FastKPR(model).to(device)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return static_compile(fast, compile_backend)


def static_compile(module: nn.Module, backend: CompileBackend) -> nn.Module:
    """``torch.compile`` of ``module`` for static shapes by ``backend``; ``module`` itself when it is None."""
    return module if backend is None else torch.compile(module, dynamic=False, backend=backend)


def autocast_for(device: torch.device, dtype: str):
    """bf16 autocast on ``device`` for dtype "bf16"; no autocast for "fp32"."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


class FastKPREncoder(KPREncoder):
    """``KPREncoder`` that embeds with ``FastKPR``: device-side preprocessing, fixed batch shape, bf16, compile."""

    def __init__(self, model: KPR, config: KPRConfig, device: str | torch.device = "cuda",
                 model_id: str | None = None, dtype: str = "bf16", compile_backend: CompileBackend = "inductor",
                 channels_last: bool = True) -> None:
        super().__init__(model, config, device=device, model_id=model_id)
        self.dtype = dtype
        self.channels_last = channels_last
        self.fast = optimised_kpr(self.model, self.device, channels_last)
        self.graph = static_compile(self.fast, compile_backend)
        autocast_for(self.device, dtype)  # refuses an unknown dtype now, not at the first batch
        self.batch_shape: int | None = None

    def embed(self, crops: Sequence[np.ndarray], keypoints: Sequence[np.ndarray | None] | None = None,
              negative_keypoints: Sequence[np.ndarray | None] | None = None, batch_size: int = 64,
              cameras: Sequence[int] | None = None) -> ReIDEmbeddings:
        """As ``KPREncoder.embed``; every forward pass has ``batch_size`` rows (the first call's size)."""
        self.batch_shape = self.batch_shape or batch_size
        return super().embed(crops, keypoints, negative_keypoints, batch_size, cameras)

    @torch.inference_mode()
    def _embed_batch(self, crops: Sequence[np.ndarray], keypoints: Sequence[np.ndarray | None] | None,
                     negative_keypoints: Sequence[np.ndarray | None] | None,
                     cameras: Sequence[int] | None = None) -> ReIDEmbeddings:
        n = len(crops)
        images, prompts = prepare_crops(crops, keypoints, negative_keypoints, self.config, device=self.device)
        camera_ids = None if cameras is None else torch.as_tensor(np.asarray(cameras, np.int64), device=self.device)
        rows = max(self.batch_shape or n, n)
        if rows > n:  # padding rows (copies of the first) keep the shape the graph was compiled for
            images, prompts = (_padded(t, rows) for t in (images, prompts))
            camera_ids = None if camera_ids is None else _padded(camera_ids, rows)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
            prompts = prompts.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device, self.dtype):
            try:
                holistic, parts, visibility = self.graph(images, prompts, camera_ids)
            except Exception as exc:  # no C++ compiler, an inductor bug...: the uncompiled graph gives the same outputs
                if self.graph is self.fast:
                    raise
                warnings.warn(f"torch.compile failed, embedding without it: {str(exc).strip().splitlines()[0][:200]}",
                              RuntimeWarning, stacklevel=2)
                self.graph = self.fast
                holistic, parts, visibility = self.graph(images, prompts, camera_ids)
        return ReIDEmbeddings(holistic[:n].float().cpu().numpy(), parts[:n].float().cpu().numpy(),
                              visibility[:n].float().cpu().numpy())


def _padded(batch: torch.Tensor, rows: int) -> torch.Tensor:
    """``batch`` grown to ``rows`` rows by repeating its first row."""
    extra = batch[:1].expand(rows - len(batch), *batch.shape[1:])
    return torch.cat([batch, extra])
