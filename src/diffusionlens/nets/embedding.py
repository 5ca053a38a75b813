"""Noise-level and class embeddings shared by the networks.

A network receives the noise conditioning ``cond`` of shape (batch,) that
:class:`~diffusionlens.model.Denoiser` hands it: the process time t in [0, 1] by default, or
EDM's c_noise = ln(sigma) / 4 (about [-1.6, 1.1]). Both are embedded by the same sinusoidal
map of ``scale * cond`` (scale 1000 by default, DDPM's convention of feeding 1000 t), so a
network need not know which of the two it gets.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._util import Choice

__all__ = ["Embedding", "NoiseEmbedding", "ClassEmbedding", "with_estimate"]


class Embedding(Choice, what="embedding"):
    """Kinds of noise embedding: fixed sinusoidal (Vaswani et al. 2017, as in DDPM) or random
    Fourier features (Tancik et al. 2020, as in score_sde's NCSN++ and EDM's VE networks)."""

    SINUSOIDAL = "sinusoidal"
    FOURIER = "fourier"


class NoiseEmbedding(nn.Module):
    """Embed the noise conditioning (batch,) into (batch, dim), then a 2-layer SiLU MLP to ``out_dim``.

    ``sinusoidal``: features sin/cos(scale * cond * f_k) with f_k = max_period^(-k / half), k < half.
    ``fourier``: sin/cos(2 pi * cond * w_k), w_k ~ N(0, fourier_scale^2) drawn once from a fixed
    seed and stored as a buffer (so it is part of every checkpoint).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        kind: Embedding | str = Embedding.SINUSOIDAL,
        *,
        scale: float = 1000.0,
        max_period: float = 10000.0,
        fourier_scale: float = 16.0,
    ):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be an even integer >= 2, got {dim}")
        self.kind = Embedding.parse(kind)
        self.scale = float(scale)
        half = dim // 2
        if self.kind is Embedding.SINUSOIDAL:
            freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half) * self.scale
        else:
            g = torch.Generator().manual_seed(0)
            freqs = 2 * math.pi * fourier_scale * torch.randn(half, generator=g)
        self.register_buffer("freqs", freqs)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def features(self, cond: Tensor) -> Tensor:
        """The fixed (parameter-free) features, (batch, dim)."""
        if cond.ndim != 1:
            raise ValueError(f"noise conditioning must have shape (batch,), got {tuple(cond.shape)}")
        arg = cond.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)

    def forward(self, cond: Tensor) -> Tensor:
        return self.mlp(self.features(cond))


class ClassEmbedding(nn.Module):
    """Learned class embedding with an extra *null* label (index ``num_classes``) for
    classifier-free guidance: ``y=None`` or a label equal to ``num_classes`` means unconditional."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor | None, batch: int, device) -> Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if y.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(y.shape)}")
        if y.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"labels must be integers, got {y.dtype}")
        if bool(((y < 0) | (y > self.num_classes)).any()):
            bad = y[(y < 0) | (y > self.num_classes)][0].item()
            raise ValueError(f"label {bad} outside [0, {self.num_classes}] (the last index is the null label)")
        return self.table(y.long())


def with_estimate(self_condition: bool, x: Tensor, x0_prev: Tensor | None, dim: int, name: str) -> Tensor:
    """The network input: x, with a self-conditioning network's previous x0 estimate concatenated along
    ``dim`` (zeros when none is given: the first pass and the estimate-free half of training)."""
    if not self_condition:
        if x0_prev is not None:
            raise ValueError(f"x0_prev given to a {name} without self-conditioning (build it with self_condition=True)")
        return x
    if x0_prev is None:
        x0_prev = torch.zeros_like(x)
    elif x0_prev.shape != x.shape:
        raise ValueError(f"x0_prev must have the input's shape {tuple(x.shape)}, got {tuple(x0_prev.shape)}")
    return torch.cat([x, x0_prev.to(x.dtype)], dim=dim)
