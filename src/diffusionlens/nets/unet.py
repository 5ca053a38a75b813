"""A compact UNet for small images (DDPM / ADM style): residual blocks with GroupNorm and
scale-shift noise conditioning, optional self-attention at low resolution, optional class
embedding with a null label for classifier-free guidance.

Shapes: ``x`` (batch, C, H, W) with H and W divisible by 2^(len(channel_mult) - 1); ``cond`` (batch,).
The default configuration for 8x8 digits (``channels=32, channel_mult=(1, 2, 2), blocks=1``:
resolutions 8, 4, 2 with self-attention at 4x4 and in the 2x2 middle block) has 1.17M parameters
and costs about 79 MFLOP per image for a forward and backward pass. Most parameters sit at the
low resolutions and in the per-block embedding projections, where they are cheap; resolution
changes are 2x2 average pooling and nearest-neighbour upsampling without convolutions (as in
k-diffusion's small image models), which saves a fifth of the FLOPs of ADM's strided/upsampling
convolutions at equal depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embedding import ClassEmbedding, Embedding, NoiseEmbedding, with_estimate

__all__ = ["UNet"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class ResBlock(nn.Module):
    """GN-SiLU-conv, then GN with (1 + scale, shift) from the embedding, SiLU, dropout, conv; 1x1 skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = _norm(c_out, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, pre-norm, residual, zero-initialised output."""

    def __init__(self, channels: int, groups: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """``net(x_in, cond, y=None) -> (batch, C, H, W)``.

    Args:
        in_channels: image channels C. image_size: H (= W), used to place attention.
        channels: base width; channel_mult: width multiplier per resolution level.
        blocks: residual blocks per level (the decoder has blocks + 1, ADM style).
        attn_resolutions: resolutions (in pixels) that get self-attention, also in the middle block.
        groups: GroupNorm groups (capped by, and dividing, the channel count).
        emb_dim: noise-embedding width (default 6 * channels); embedding: sinusoidal or fourier.
        num_classes: if set, class-conditional with a null label at index num_classes.
        dropout: dropout in residual blocks.
        self_condition: take a second input ``x0_prev`` (a previous estimate of x0, shaped like x;
            zeros when not given) as C extra input channels (self-conditioning, Chen et al. 2022).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        *,
        channels: int = 32,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 2),
        blocks: int = 1,
        attn_resolutions: tuple[int, ...] | list[int] = (4,),
        groups: int = 8,
        emb_dim: int | None = None,
        embedding: Embedding | str = Embedding.SINUSOIDAL,
        num_classes: int | None = None,
        dropout: float = 0.0,
        self_condition: bool = False,
    ):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("image_size", image_size), ("channels", channels),
                        ("blocks", blocks), ("groups", groups)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        channel_mult = tuple(channel_mult)
        if not channel_mult or not all(isinstance(m, int) and m >= 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive integers, got {channel_mult!r}")
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(channel_mult) - 1} "
                             f"(one halving per level of channel_mult={channel_mult})")
        if not (0 <= dropout < 1):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        emb_dim = emb_dim or 6 * channels
        attn = set(attn_resolutions)
        self.embed = NoiseEmbedding(channels, emb_dim, embedding)
        self.label = ClassEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.self_condition = bool(self_condition)
        self.inp = nn.Conv2d(2 * in_channels if self.self_condition else in_channels, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, c, res = [channels], channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(blocks):
                layer = nn.ModuleList([ResBlock(c, channels * mult, emb_dim, groups, dropout)])
                c = channels * mult
                if res in attn:
                    layer.append(Attention(c, groups))
                self.down.append(layer)
                skips.append(c)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.AvgPool2d(2)]))
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, groups, dropout), Attention(c, groups),
                                  ResBlock(c, c, emb_dim, groups, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(blocks + 1):
                layer = nn.ModuleList([ResBlock(c + skips.pop(), channels * mult, emb_dim, groups, dropout)])
                c = channels * mult
                if res in attn:
                    layer.append(Attention(c, groups))
                if level > 0 and i == blocks:
                    layer.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    res *= 2
                self.up.append(layer)
        self.out_norm = _norm(c, groups)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _run(layer: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for m in layer:
            h = m(h, emb) if isinstance(m, (ResBlock, Attention)) else m(h)
        return h

    def forward(self, x: Tensor, cond: Tensor, y: Tensor | None = None, x0_prev: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.image_size:
            raise ValueError(
                f"UNet built for (batch, {self.in_channels}, {self.image_size}, {self.image_size}) input, "
                f"got {tuple(x.shape)}"
            )
        emb = self.embed(cond)
        if self.label is not None:
            emb = emb + self.label(y, x.shape[0], x.device)
        elif y is not None:
            raise ValueError("labels given to an unconditional UNet (build it with num_classes)")
        emb = F.silu(emb)
        h = self.inp(with_estimate(self.self_condition, x, x0_prev, 1, type(self).__name__))
        hs = [h]
        for layer in self.down:
            h = self._run(layer, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for layer in self.up:
            h = self._run(layer, torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))
