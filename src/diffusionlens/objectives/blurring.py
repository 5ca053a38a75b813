"""The blurring-diffusion objective: the denoising loss on blurred-and-noisy inputs
(:mod:`diffusionlens.frequency.blurring` defines the corruption and its sampler)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..frequency.blurring import Blur
from ..losses import Loss
from .base import Batch, Objective, Streams

__all__ = ["Blurring", "build"]


@dataclass(frozen=True)
class Blurring(Objective):
    """The denoising loss on blurred-and-noisy inputs: ``loss``'s noise levels (stream ``t``) and
    weighting of ||D - x0||^2, with x_hat = B(sigma) x0 + sigma n (noise from stream ``noise``)."""

    loss: Loss
    blur: Blur = Blur()
    streams = ("t", "noise")

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        x0 = batch.x0
        if x0.ndim != 4:
            raise ValueError(f"blurring diffusion needs images (batch, C, H, W), got shape {tuple(x0.shape)}")
        t = self.loss.sample_t(x0.shape[0], rng["t"])
        noise = torch.randn(x0.shape, generator=rng["noise"], dtype=x0.dtype).to(x0.device)
        c = self.loss.process.coefs(t)
        w = batch.local(self.loss.x0_space_weight(c)).to(device=x0.device, dtype=x0.dtype)
        sigma = batch.local(c.sigma).to(device=x0.device, dtype=x0.dtype)
        x0 = batch.local(x0)
        out = model(self.blur.corrupt(x0, sigma, batch.local(noise)), sigma)
        loss = w * (out - x0).pow(2).flatten(1).mean(1)
        bad = ~torch.isfinite(loss)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise FloatingPointError(f"non-finite loss {loss[i].item()} at sigma={sigma[i].item():.6g}")
        return loss


def build(cfg, data) -> Blurring:
    """The blurring objective of a (resolved) TrainConfig: its loss's noise levels and weighting."""
    if not data.is_image:
        raise ValueError(f"objective 'blurring' needs an image data set, got {data.name!r} of shape {data.data_shape}")
    if cfg.conditional:
        raise ValueError("objective 'blurring' trains unconditional models; drop conditional (--conditional)")
    return Blurring(cfg.loss())
