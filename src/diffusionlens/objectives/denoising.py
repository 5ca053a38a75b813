"""The denoising objective: a weighted denoising loss (:class:`diffusionlens.losses.Loss`, every
parameterization x density x weighting) with label dropout for classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses import Loss
from .base import Batch, Objective, Streams

__all__ = ["Denoising", "build"]


@dataclass(frozen=True)
class Denoising(Objective):
    """Per-sample ``loss`` of the model at noise levels from stream ``t`` and noise from ``noise``.

    With labels, each is replaced by ``null_label`` with probability ``label_dropout`` (drawn from
    the ``noise`` stream after the noise), so one network learns the conditional and the
    unconditional denoiser (Ho & Salimans 2022).
    """

    loss: Loss
    label_dropout: float = 0.0
    null_label: int | None = None
    streams = ("t", "noise")

    def draw(self, batch: Batch, rng: Streams) -> tuple[Tensor, Tensor, dict]:
        """This rank's (t (local,), noise (local, ...), conditioning) of the global batch's draws."""
        x0, n = batch.x0, batch.size
        t = self.loss.sample_t(n, rng["t"])
        noise = torch.randn(x0.shape, generator=rng["noise"], dtype=x0.dtype).to(x0.device)
        cond = {}
        if batch.labels is not None:
            if self.null_label is None:
                raise ValueError("a labelled batch needs the objective's null_label")
            y = batch.labels
            drop = torch.rand(n, generator=rng["noise"]) < self.label_dropout
            cond["y"] = batch.local(torch.where(drop.to(y.device), torch.full_like(y, self.null_label), y))
        return batch.local(t).to(x0.device), batch.local(noise), cond

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        t, noise, cond = self.draw(batch, rng)
        return self.loss(model, batch.local(batch.x0), t=t, noise=noise, **cond)


def build(cfg, data) -> Denoising:
    """The denoising objective a (resolved) TrainConfig describes, for data set ``data``."""
    return Denoising(cfg.loss(), cfg.label_dropout if cfg.conditional else 0.0,
                     data.num_classes if cfg.conditional else None)
