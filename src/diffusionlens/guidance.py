"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around a canonical denoiser.

A class-conditional denoiser ``D(x_hat, sigma, y=labels)`` trained with label dropout knows the
unconditional model under the *null label* (index ``num_classes`` in :mod:`diffusionlens.nets`).
:class:`ClassifierFree` is again a canonical denoiser,

    D_w(x_hat, sigma, y) = D(x_hat, sigma, null) + w (D(x_hat, sigma, y) - D(x_hat, sigma, null)),

so every sampler, the likelihood code and every other view use it unchanged (guidance is a
denoiser wrapper, never a sampler flag). ``w = 1`` is the conditional model, ``w = 0`` the
unconditional one; in score form the guided score is the same combination (the map D -> score is
affine with coefficients independent of the label). Both branches run in one batch of 2B.
Shapes: x_hat (batch, *data_shape), sigma float or (batch,), y (batch,) int64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._util import as_sigma

__all__ = ["ClassifierFree"]


class ClassifierFree(nn.Module):
    """Guided denoiser ``D_uncond + scale (D_cond - D_uncond)``.

    Args:
        denoiser: class-conditional canonical denoiser accepting ``y=`` labels (batch,).
        scale: guidance weight w (finite, >= 0).
        null_label: label index of the unconditional branch; default: ``num_classes`` read from
            the denoiser's network (``denoiser.net.num_classes``).
    """

    def __init__(self, denoiser, scale: float, *, null_label: int | None = None):
        super().__init__()
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
            raise ValueError(f"guidance scale must be a finite number >= 0, got {scale!r}")
        if null_label is None:
            null_label = getattr(getattr(denoiser, "net", None), "num_classes", None)
            if null_label is None:
                raise ValueError(
                    "cannot find the null label: the denoiser's network has no num_classes; pass null_label="
                )
        self.denoiser = denoiser
        self.scale = float(scale)
        self.null_label = int(null_label)

    def forward(self, x_hat: Tensor, sigma, y: Tensor | None = None, **cond) -> Tensor:
        B = x_hat.shape[0]
        null = torch.full((B,), self.null_label, dtype=torch.long, device=x_hat.device)
        if y is None:
            return self.denoiser(x_hat, sigma, y=null, **cond)
        if y.shape != (B,):
            raise ValueError(f"labels must have shape ({B},), got {tuple(y.shape)}")
        if self.scale == 1.0:
            return self.denoiser(x_hat, sigma, y=y, **cond)
        s = as_sigma(sigma, x_hat)
        # per-sample conditioning tensors (batch, ...) are duplicated along with the batch
        cond = {k: torch.cat([v, v]) if isinstance(v, Tensor) and v.shape[:1] == (B,) else v for k, v in cond.items()}
        both = self.denoiser(torch.cat([x_hat, x_hat]), torch.cat([s, s]), y=torch.cat([y.long(), null]), **cond)
        d_cond, d_uncond = both[:B], both[B:]
        return d_uncond + self.scale * (d_cond - d_uncond)
