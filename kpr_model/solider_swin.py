"""SOLIDER Swin Transformer (mmcv/mmdet module layout), written for KPR's promptable backbone.

SOLIDER (CVPR 2023) ships its Swin weights with mmcv names, and the official KPR checkpoints keep
them under ``backbone_appearance_feature_extractor.model.*``. This module reproduces that layout
exactly, so a SOLIDER or official KPR state dict loads by name:

- ``patch_embed.projection`` (Conv2d k = s = patch) + ``patch_embed.norm`` (LayerNorm)
- ``stages.<i>.blocks.<j>``: ``norm1``, ``attn.w_msa.{relative_position_bias_table,
  relative_position_index, qkv, proj}``, ``norm2``, ``ffn.layers.0.0`` (fc1), ``ffn.layers.1`` (fc2)
- ``stages.<i>.downsample.{norm, reduction}`` for every stage but the last (patch merging)
- ``norm0..norm3``: LayerNorm on each stage output (the features before patch merging)
- ``semantic_embed_w.<i>`` / ``semantic_embed_b.<i>`` (Linear 2 -> C) only when semantic_weight >= 0

Behaviour that matters for matching the official outputs:
- Patch merging concatenates each 2x2 neighbourhood channel-major, like ``nn.Unfold``: merged
  channel index = c * 4 + dy * 2 + dx (original Swin uses (0,0), (1,0), (0,1), (1,1) blocks of C;
  ``convert_original_swin`` reorders such weights). Odd sizes are zero-padded bottom/right.
- Windows never shrink: a feature map smaller than the window is zero-padded up to the window
  (bottom/right) before the cyclic shift; the shifted-window mask (-100 between regions) is built
  on the padded map. Odd blocks (j % 2 == 1) shift by window // 2.
- Stage i returns (norm_i(x) before merging, merged x); with semantic_weight >= 0 the merged tokens
  are modulated by x * softplus(W_i s) + B_i s with s = (w, 1 - w).

Tokens travel as NHWC tensors [N, H, W, C] between modules (mmcv uses [N, H*W, C] + hw_shape).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# name -> (embed_dim, depths, num_heads), the SOLIDER releases (all patch 4, window 7).
SOLIDER_ARCHS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "solider_swin_tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "solider_swin_small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "solider_swin_base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}


class PatchEmbed(nn.Module):
    """Conv patch embedding (kernel = stride = patch) + optional LayerNorm: [N, C_in, H, W] -> [N, h, w, D].

    Inputs whose size is not a multiple of the patch are zero-padded bottom/right (mmcv "corner").
    Also used as KPR's prompt tokenizer, where ``projection`` starts at zero.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, norm: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def zero_init(self) -> None:
        """Zero the projection, so the module outputs LayerNorm(0) = norm bias (0 at init)."""
        nn.init.zeros_(self.projection.weight)
        if self.projection.bias is not None:
            nn.init.zeros_(self.projection.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        pad_h, pad_w = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.projection(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


def relative_position_index(window: int) -> torch.Tensor:
    """[w*w, w*w] index into the (2w-1)^2 bias table: (dy + w - 1) * (2w - 1) + (dx + w - 1)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # [2, w*w]
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, w*w, w*w]
    return rel[0] * (2 * window - 1) + rel[1]


class WindowMSA(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias (fused SDPA kernel).

    ``qkv`` and ``proj`` are per-token maps that ``ShiftWindowMSA`` applies outside the windows (to the real tokens
    only); ``attend`` is the part that needs the windows.
    """

    def __init__(self, dim: int, num_heads: int, window: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def attend(self, qkv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """qkv [B * nW, L, 3C] (L = window^2) -> attention output [B * nW, L, C] (before ``proj``); mask [nW, L, L]
        of 0 / -100 or None."""
        b, n, c3 = qkv.shape
        heads, c = self.num_heads, c3 // 3
        q, k, v = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # [B*nW, heads, L, d]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.view(n, n, heads).permute(2, 0, 1).unsqueeze(0)  # [1, heads, L, L]
        if mask is not None:  # windows of one image side by side as heads, so the [nW, L, L] mask broadcasts over B
            nw = mask.shape[0]
            bias = (bias + mask[:, None]).reshape(1, nw * heads, n, n)
            q, k, v = (t.reshape(b // nw, nw * heads, n, c // heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale,
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
        return out.reshape(b, heads, n, c // heads).transpose(1, 2).reshape(b, n, c)


def _partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of w) -> [B * nW, w * w, C], windows in row-major order."""
    b, h, wd, c = x.shape
    return x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)


def _unpartition(windows: torch.Tensor, w: int, b: int, h: int, wd: int) -> torch.Tensor:
    c = windows.shape[-1]
    return windows.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """[nW, L, L] attention mask for a cyclically shifted padded map: -100 between different regions."""
    labels = torch.zeros(h, w, device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    region = 0
    for ys in bounds:
        for xs in bounds:
            labels[ys, xs] = region
            region += 1
    wins = _partition(labels[None, :, :, None], window).squeeze(-1)  # [nW, L]
    diff = wins[:, None, :] - wins[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class ShiftWindowMSA(nn.Module):
    """(Shifted) window attention on NHWC tokens: pad to the window, roll, attend, roll back, crop."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.w_msa = WindowMSA(dim, num_heads, window, attn_drop, proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]. The map is zero-padded to whole windows, but a padded token's q, k, v are
        just the qkv bias: the projections run on the H x W real tokens only (at 384x128 the padding doubles stage 3's
        tokens), with results equal to projecting the padded map."""
        b, h, w, _ = x.shape
        win, msa = self.window, self.w_msa
        pad_b, pad_r = (-h) % win, (-w) % win
        qkv = F.pad(F.linear(x, msa.qkv.weight), (0, 0, 0, pad_r, 0, pad_b))
        if msa.qkv.bias is not None:
            qkv = qkv + msa.qkv.bias.to(qkv.dtype)  # fp32 bias under autocast would make q, k, v fp32
        hp, wp = h + pad_b, w + pad_r
        mask = None
        if self.shift > 0:
            qkv = torch.roll(qkv, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, win, self.shift, x.device).to(x.dtype)
        out = _unpartition(msa.attend(_partition(qkv, win), mask), win, b, hp, wp)
        if self.shift > 0:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        return msa.proj_drop(msa.proj(out[:, :h, :w]))


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (identity at eval)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        noise = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * noise / keep


class FFN(nn.Module):
    """mmcv FFN: layers = [Sequential(fc1, GELU, Dropout), fc2, Dropout]."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop)), nn.Linear(hidden, dim), nn.Dropout(drop)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SwinBlock(nn.Module):
    """Pre-norm Swin block: x + attn(norm1(x)), then x + ffn(norm2(x)) (drop path on both branches)."""

    def __init__(
        self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: int, drop: float, attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftWindowMSA(dim, num_heads, window, shift, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, mlp_ratio * dim, drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.ffn(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood merge in nn.Unfold channel order, LayerNorm(4C), Linear(4C -> 2C, no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        h2, w2 = (h + h % 2) // 2, (w + w % 2) // 2
        # [B, h2, dy, w2, dx, C] -> [B, h2, w2, C, dy, dx]: channel index c * 4 + dy * 2 + dx
        x = x.view(b, h2, 2, w2, 2, c).permute(0, 1, 3, 5, 2, 4).reshape(b, h2, w2, 4 * c)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks of one stage, then (except the last stage) patch merging."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: int, drop: float, attn_drop: float,
        drop_paths: Sequence[float], downsample: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, (window // 2) if j % 2 else 0, mlp_ratio, drop, attn_drop, drop_paths[j])
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stage output before merging, input of the next stage)."""
        for block in self.blocks:
            x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class SoliderSwinTransformer(nn.Module):
    """SOLIDER's Swin (mmcv names). ``forward_stages`` maps NHWC tokens to the 4 normalised stage outputs."""

    def __init__(
        self,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        patch_size: int = 4,
        window_size: int = 7,
        mlp_ratio: int = 4,
        in_channels: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        semantic_weight: float = -1.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        self.patch_size = patch_size
        self.num_features = tuple(embed_dim * 2**i for i in range(len(depths)))
        self.semantic_weight = float(semantic_weight)
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size, norm=True)
        self.drop_after_pos = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        start = 0
        for i, depth in enumerate(depths):
            self.stages.append(
                SwinStage(
                    self.num_features[i], depth, num_heads[i], window_size, mlp_ratio, drop_rate, attn_drop_rate,
                    rates[start : start + depth], downsample=i < len(depths) - 1,
                )
            )
            start += depth
        for i, dim in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        if self.semantic_weight >= 0:
            last = len(depths) - 1
            targets = [self.num_features[min(i + 1, last)] for i in range(len(depths))]
            self.semantic_embed_w = nn.ModuleList(nn.Linear(2, d) for d in targets)
            self.semantic_embed_b = nn.ModuleList(nn.Linear(2, d) for d in targets)
            for layer in list(self.semantic_embed_w) + list(self.semantic_embed_b):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
                layer.requires_grad_(False)
        self.apply(_init_weights)

    def forward_stages(self, tokens: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Stage outputs [N, C_i, H_i, W_i] (after norm_i) for stages 1..upto, from patch tokens [N, h, w, C]."""
        upto = len(self.stages) if upto is None else upto
        x = self.drop_after_pos(tokens)
        semantic = None
        if self.semantic_weight >= 0:
            w = torch.full((x.shape[0], 1), self.semantic_weight, device=x.device, dtype=x.dtype)
            semantic = torch.cat([w, 1 - w], dim=-1)
        outputs = []
        for i, stage in enumerate(self.stages[:upto]):
            out, x = stage(x)
            if semantic is not None:
                scale = self.semantic_embed_w[i](semantic)[:, None, None]
                shift = self.semantic_embed_b[i](semantic)[:, None, None]
                x = x * F.softplus(scale) + shift
            outputs.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous())
        return outputs

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_stages(self.patch_embed(images))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear) and module.weight.requires_grad:
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_solider_swin(name: str, **overrides) -> SoliderSwinTransformer:
    """A SOLIDER Swin by release name (``SOLIDER_ARCHS``); keyword overrides go to ``SoliderSwinTransformer``."""
    if name not in SOLIDER_ARCHS:
        raise KeyError(f"unknown SOLIDER Swin {name!r}; known: {sorted(SOLIDER_ARCHS)}")
    embed_dim, depths, heads = SOLIDER_ARCHS[name]
    args = {"embed_dim": embed_dim, "depths": depths, "num_heads": heads, **overrides}
    return SoliderSwinTransformer(**args)


def convert_original_swin(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original (Microsoft / timm-v0) Swin names -> mmcv names, reordering patch-merging weights.

    ``layers.i`` -> ``stages.i``, ``attn.`` -> ``attn.w_msa.``, ``mlp.fc1`` -> ``ffn.layers.0.0``,
    ``mlp.fc2`` -> ``ffn.layers.1``, ``patch_embed.proj`` -> ``patch_embed.projection``; the merged
    channels go from blocks [x(0,0), x(1,0), x(0,1), x(1,1)] of C to the Unfold order c*4 + dy*2 + dx.
    ``head.*``, the final ``norm.*`` and ``attn_mask`` buffers are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(("head.", "norm.")) or key.endswith("attn_mask"):
            continue
        new = key
        if key.startswith("layers."):
            new = "stages." + key[len("layers."):]
            new = new.replace(".attn.", ".attn.w_msa.").replace(".mlp.fc1.", ".ffn.layers.0.0.")
            new = new.replace(".mlp.fc2.", ".ffn.layers.1.")
            if ".downsample.reduction." in key:
                value = _unfold_order(value)
            elif ".downsample.norm." in key:
                value = _unfold_order(value)
        elif key.startswith("patch_embed.proj."):
            new = key.replace("patch_embed.proj.", "patch_embed.projection.")
        out[new] = value
    return out


def _unfold_order(x: torch.Tensor) -> torch.Tensor:
    """[..., 4C] in original-Swin block order -> [..., 4C] in Unfold order (last dim permuted)."""
    c = x.shape[-1] // 4
    # original block b holds offset (dy, dx) = [(0, 0), (1, 0), (0, 1), (1, 1)][b]; Unfold wants dy*2 + dx
    blocks = x.view(*x.shape[:-1], 4, c)[..., [0, 2, 1, 3], :]  # now indexed by dy*2 + dx
    return blocks.transpose(-1, -2).reshape(x.shape)
