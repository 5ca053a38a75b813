"""Exponential moving averages of the weights.

* ``exp``: theta_ema <- beta theta_ema + (1 - beta) theta with beta_k = min(decay, (1 + k) / (10 + k))
  after update k (the warm-up used by TensorFlow's ExponentialMovingAverage and many diffusion codes).
* ``power``: Karras et al. 2024 (EDM2), Alg. 2: beta_k = (1 - 1/k)^(gamma + 1), which averages
  the whole trajectory with weights growing as k^gamma; gamma is set from the relative standard
  deviation sigma_rel of the averaging profile, sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))
  (EDM2 eq. 3). It needs no warm-up and suits runs whose length is not known in advance (a
  wall-clock budget).

The average is a function of the update count only, so it resumes exactly from a checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["power_gamma", "ema_beta", "update_ema"]


def power_gamma(sigma_rel: float) -> float:
    """EDM2's exponent gamma for a relative std sigma_rel: the real root of
    sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1, i.e. of g^3 + 7 g^2 + (16 - r) g + (12 - r)
    with r = 1 / sigma_rel^2."""
    if not (0 < sigma_rel < 0.28):
        raise ValueError(f"sigma_rel must lie in (0, 0.28), got {sigma_rel}")
    r = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - r, 12.0 - r])
    return float(roots.real[np.abs(roots.imag) < 1e-9].max())


def ema_beta(kind: str, k: int, *, decay: float = 0.999, sigma_rel: float = 0.05) -> float:
    """Decay used at update number k >= 1 (k = 1 copies the weights)."""
    if k < 1:
        raise ValueError(f"update number must be >= 1, got {k}")
    if kind == "exp":
        return min(decay, (1 + k) / (10 + k)) if k > 1 else 0.0
    if kind == "power":
        return (1 - 1 / k) ** (power_gamma(sigma_rel) + 1)
    if kind == "none":
        return 0.0
    raise ValueError(f"unknown ema kind {kind!r}; choose one of: power, exp, none")


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta ema + (1 - beta) model for parameters; buffers are copied."""
    if not (0 <= beta <= 1 and math.isfinite(beta)):
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    ep, mp = list(ema.parameters()), list(model.parameters())
    if beta == 0.0:
        torch._foreach_copy_(ep, [p.detach() for p in mp])
    else:
        torch._foreach_lerp_(ep, [p.detach() for p in mp], 1.0 - beta)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)
