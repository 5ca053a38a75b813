"""Self-conditioning (Chen et al. 2022, "Analog Bits", Sec. 3; Jabri et al. 2023, RIN): the network
also sees a previous estimate of x0. Training composes with the denoising objective: on a random half
of the batch a first pass without gradient, fed zeros, gives the estimate at the same noisy input; the
loss is then the denoising loss of a second pass fed that estimate (zeros on the other half, so the
network also learns the first step of a sampler, where there is no estimate yet).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._util import expand
from . import denoising
from .base import Batch, Objective, Streams
from .denoising import Denoising

__all__ = ["SelfConditioning", "build"]


@dataclass(frozen=True)
class SelfConditioning(Objective):
    """The ``inner`` denoising objective with the network's own estimate fed back on a ``rate`` fraction.

    The model must accept ``x0_prev`` (a network built with ``self_condition=True``). Which samples
    get the estimate is drawn from the stream ``self-condition`` for the global batch, so distributed
    runs reproduce single-process ones.
    """

    inner: Denoising
    rate: float = 0.5
    streams = ("t", "noise", "self-condition")

    def __post_init__(self):
        if not (isinstance(self.rate, (int, float)) and 0 <= self.rate <= 1):
            raise ValueError(f"the self-conditioning rate must lie in [0, 1], got {self.rate!r}")

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        t, noise, cond = self.inner.draw(batch, rng)
        use = batch.local(torch.rand(batch.size, generator=rng["self-condition"]) < self.rate).to(noise.device)
        x0 = batch.local(batch.x0)
        est = torch.zeros_like(x0)
        if bool(use.any()):
            # the noisy input exactly as the loss forms it (float64 coefficients rounded to the data's dtype)
            sigma = self.inner.loss.process.coefs(t.to(torch.float64)).sigma.to(x0.dtype)
            x_hat = x0 + expand(sigma, x0) * noise
            sub = {k: v[use] for k, v in cond.items()}
            with torch.no_grad():
                est[use] = model(x_hat[use], sigma[use], **sub).detach()
        return self.inner.loss(model, x0, t=t, noise=noise, x0_prev=est, **cond)


def build(cfg, data) -> SelfConditioning:
    """Self-conditioning around the denoising objective ``cfg`` describes; the network must take the estimate."""
    if not (isinstance(cfg.net, dict) and cfg.net.get("self_condition")):
        raise ValueError("the self-conditioning objective needs a network with the extra input: set "
                         "\"self_condition\": true in the net spec (train --self-condition sets both)")
    return SelfConditioning(denoising.build(cfg, data))
