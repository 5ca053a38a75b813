"""The orthonormal 2-D DCT-II basis: the one basis of the frequency view.

Spectra, the spectral oracle and blurring diffusion all work in it. The DCT is the eigenbasis of
the Laplacian with reflecting (Neumann) boundaries, so the heat equation is diagonal in it
(Rissanen et al. 2023), and it implies a mirrored rather than a periodic extension of the image, so
a photograph's spectrum carries no artefact of the jump between opposite edges (no window needed).

Coefficient (i, j) of an H x W image oscillates at i / (2H) and j / (2W) cycles per pixel; its radial
frequency is the length of that vector, from 0 (the mean) to sqrt(2) / 2. Being orthonormal, the
transform keeps white noise of variance sigma^2 white with variance sigma^2 per coefficient.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["dct2", "idct2", "frequencies", "heat_rates", "MIN_SIZE"]

MIN_SIZE = 4
"""Smallest image side with a spectrum worth the name (a handful of distinct radial frequencies)."""


@functools.cache
def _matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    m = math.sqrt(2.0 / n) * torch.cos(math.pi * (j + 0.5) * k / n)
    m[0] /= math.sqrt(2.0)
    return m.to(dtype=dtype, device=device)


def _check(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim < 2 or min(x.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"images too small for a spectrum: shape {tuple(x.shape)}, need the last two sides "
                         f">= {MIN_SIZE}")


def dct2(x: Tensor) -> Tensor:
    """Orthonormal DCT-II over the last two axes of x (..., H, W); differentiable, in x's dtype/device."""
    _check(x)
    mh, mw = _matrix(x.shape[-2], x.dtype, x.device), _matrix(x.shape[-1], x.dtype, x.device)
    return mh @ x @ mw.T


def idct2(u: Tensor) -> Tensor:
    """Inverse of :func:`dct2` (its transpose)."""
    _check(u)
    mh, mw = _matrix(u.shape[-2], u.dtype, u.device), _matrix(u.shape[-1], u.dtype, u.device)
    return mh.T @ u @ mw


def frequencies(h: int, w: int) -> np.ndarray:
    """Radial frequency (cycles per pixel) of each DCT coefficient of an h x w image, (h, w) float64."""
    fi = np.arange(h, dtype=np.float64)[:, None] / (2 * h)
    fj = np.arange(w, dtype=np.float64)[None, :] / (2 * w)
    return np.sqrt(fi**2 + fj**2)


def heat_rates(h: int, w: int) -> np.ndarray:
    """Decay rates of the DCT coefficients under the heat equation du/dt = Laplacian(u) on the pixel
    grid (unit spacing, reflecting boundaries), (h, w): pi^2 (i^2 / h^2 + j^2 / w^2) = (2 pi f)^2."""
    return (2 * math.pi * frequencies(h, w)) ** 2
