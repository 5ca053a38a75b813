"""Sampling with self-conditioning: the previous x0 estimate threaded from one evaluation to the next.

A self-conditioned network takes ``x0_prev`` besides ``(x_hat, sigma)`` (Chen et al. 2022; Jabri et al.
2023); its sampler feeds each evaluation the estimate of the one before, zeros at first, so sampling is
a recurrent network whose state is the canvas and the estimate. :class:`SelfConditioned` is the
canonical denoiser of such a network: called directly it is a function of ``(x_hat, sigma)`` alone (the
estimate-free pass, zeros fed back; what likelihoods, ELBOs and encoders need), and
:meth:`SelfConditioned.trajectory` gives a stateful denoiser that threads the estimate. Every sampling
run makes a fresh one (``samplers.Counted`` asks a denoiser with a ``trajectory`` method for it), so
every sampler threads the state unchanged, the state resets per call, and each network evaluation is
one counted call (honest NFE).

Within a run a call continues a sample's trajectory when it has the batch of the previous call (shape,
dtype, device) and, for that sample, a noise level no higher than its previous one. Samples that do
not continue get zeros, so a result depends only on the sample's own trajectory: deterministic
samplers stay deterministic and a sample does not depend on the batch it is drawn in. Encoding (an
increasing grid) sees zeros at every call: the ODE of the estimate-free network, whose likelihood is
exact. The adaptive sampler calls the denoiser on the samples still running, a shrinking batch, so its
later calls get zeros too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._util import as_sigma, expand

__all__ = ["SelfConditioned", "Trajectory", "is_self_conditioned"]


def is_self_conditioned(net_spec) -> bool:
    """Whether a network spec (a run config's ``net``) takes the previous estimate as an extra input."""
    return isinstance(net_spec, dict) and bool(net_spec.get("self_condition"))


class SelfConditioned(nn.Module):
    """Canonical denoiser of a self-conditioned ``denoiser(x_hat, sigma, x0_prev=..., **cond)``.

    ``D(x_hat, sigma, **cond)`` feeds zeros (the first pass of a sampler; stateless). :meth:`trajectory`
    returns a fresh stateful denoiser that feeds back its own previous output (module docstring).
    """

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x_hat: Tensor, sigma, **cond) -> Tensor:
        return self.denoiser(x_hat, sigma, x0_prev=torch.zeros_like(x_hat), **cond)

    def trajectory(self) -> Trajectory:
        """A stateful denoiser for one sampling run, starting from zeros."""
        return Trajectory(self.denoiser)


class Trajectory:
    """One sampling run's stateful denoiser: each sample's last estimate and noise level (detached)."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self._key = None
        self._sigma: Tensor | None = None
        self._est: Tensor | None = None

    def __call__(self, x_hat: Tensor, sigma, **cond) -> Tensor:
        sigma = as_sigma(sigma, x_hat)
        key = (tuple(x_hat.shape), x_hat.dtype, x_hat.device)
        prev = torch.zeros_like(x_hat)
        if self._key == key:
            go_on = sigma <= self._sigma * (1 + 1e-12)
            prev = torch.where(expand(go_on, x_hat), self._est, prev)
        out = self.denoiser(x_hat, sigma, x0_prev=prev, **cond)
        if isinstance(out, Tensor) and out.shape == x_hat.shape:
            self._key, self._sigma, self._est = key, sigma.detach().clone(), out.detach()
        return out
