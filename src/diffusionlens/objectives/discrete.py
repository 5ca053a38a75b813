"""Training objectives of discrete diffusion, registered in :data:`diffusionlens.objectives.OBJECTIVES`.

* ``masked``: the continuous-time masked-diffusion ELBO (MDLM / MD4),
  :func:`~diffusionlens.discrete.ctmc.masked_loss` at
  stratified times over the batch (MDLM's low-discrepancy sampler).
* ``ctmc-uniform``: uniform corruption in continuous time, trained on its path-space ELBO
  (:func:`~diffusionlens.discrete.ctmc.ctmc_loss`, Campbell et al. 2022 / SEDD's bound in the
  x0-parameterisation) at stratified times; the network's logits are weighted by the visible tokens'
  likelihood (:func:`~diffusionlens.discrete.process.likelihood_weighted`), as the run opens it too.
* ``analog-bits``: tokens as +-1 bits (Chen et al. 2022), bits as channels, through the denoising or
  self-conditioning objective (a continuous run; :mod:`diffusionlens.discrete.analog`).
* ``d3pm-absorbing`` / ``d3pm-uniform``: D3PM's hybrid loss with ``T = 1000`` steps (Austin et al. 2021;
  lambda = 0.01).

Losses are per token (nats / L) so that learning rates carry over between sequence lengths. The
network is the raw ``net(x_t, t)`` inside the loop's Denoiser wrapper (a discrete model has no sigma);
the time and corruption of the whole global batch are drawn on every rank, each rank evaluates its rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..discrete import analog
from ..discrete.ctmc import ctmc_loss, masked_loss, stratified_times
from ..discrete.d3pm import D3PM
from ..discrete.process import Corruption, Kind, likelihood_weighted
from .base import Batch, Objective, Streams

__all__ = ["MaskedDiffusion", "UniformDiffusion", "D3PMObjective", "AnalogBits", "corruption_of", "build_masked",
           "build_ctmc_uniform", "build_analog_bits", "build_d3pm_absorbing", "build_d3pm_uniform", "D3PM_STEPS",
           "HYBRID_LAMBDA", "DISCRETE_OBJECTIVES"]

D3PM_STEPS = 1000
HYBRID_LAMBDA = 0.01
DISCRETE_OBJECTIVES = ("masked", "ctmc-uniform", "d3pm-absorbing", "d3pm-uniform")


def _raw(model):
    """The network ``net(x_t, t)`` of the loop's model (a Denoiser wrapper, possibly around DDP)."""
    return getattr(model, "net", model)


class _ContinuousTime(Objective):
    """A continuous-time discrete diffusion: per-sample loss = the ELBO integrand of :meth:`loss` at a
    stratified time / L (nats per token)."""

    streams = ("t", "noise")
    kind: Kind
    needs: str

    def __init__(self, process: Corruption):
        if process.kind is not self.kind:
            raise ValueError(f"{self.needs}, got {process.kind.value!r}")
        self.process = process

    def loss(self, net, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        x0 = batch.x0
        t = stratified_times(batch.size, rng["t"], x0.device)
        x_t = self.process.corrupt(x0, t, rng["noise"])
        L = math.prod(x0.shape[1:])
        return self.loss(_raw(model), batch.local(x0), batch.local(x_t), batch.local(t)).float() / L


class MaskedDiffusion(_ContinuousTime):
    """Masked diffusion in continuous time: the masked ELBO integrand (a weighted cross-entropy)."""

    kind, needs = Kind.MASK, "masked diffusion needs the masking process"

    def loss(self, net, x0, x_t, t):
        return masked_loss(net, x0, x_t, t, self.process)


class UniformDiffusion(_ContinuousTime):
    """Uniform corruption in continuous time: the CTMC ELBO integrand of the network's logits weighted by the
    visible tokens' likelihood (:func:`~.process.likelihood_weighted`)."""

    kind, needs = Kind.UNIFORM, "ctmc-uniform needs the uniform process"

    def loss(self, net, x0, x_t, t):
        return ctmc_loss(likelihood_weighted(net, self.process), x0, x_t, t, self.process)


class D3PMObjective(Objective):
    """D3PM's hybrid loss / L per sample (one step k ~ U{1..T} per sample)."""

    streams = ("t", "noise")

    def __init__(self, d3pm: D3PM, lam: float = HYBRID_LAMBDA):
        self.d3pm, self.lam = d3pm, float(lam)

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        x0 = batch.x0
        k = torch.randint(1, self.d3pm.T + 1, (batch.size,), generator=rng["t"]).to(x0.device)
        x_k = self.d3pm.corrupt(x0, k, rng["noise"])
        L = math.prod(x0.shape[1:])
        per = self.d3pm.loss_at(_raw(model), batch.local(x0), batch.local(x_k), batch.local(k), lam=self.lam)
        return per.float() / L


def corruption_of(objective: str, vocab: int):
    """(Corruption, D3PM or None) that a discrete objective name trains."""
    if objective == "masked":
        return Corruption(Kind.MASK, vocab), None
    if objective == "ctmc-uniform":
        return Corruption(Kind.UNIFORM, vocab), None
    if objective in ("d3pm-absorbing", "d3pm-uniform"):
        kind = Kind.MASK if objective == "d3pm-absorbing" else Kind.UNIFORM
        pr = Corruption(kind, vocab)
        return pr, D3PM(pr, D3PM_STEPS)
    raise ValueError(f"{objective!r} is not a discrete objective; choose one of: {', '.join(DISCRETE_OBJECTIVES)}")


def _vocab(cfg, data) -> int:
    vocab = getattr(data, "vocab", None)
    if vocab is None:
        raise ValueError(f"objective {cfg.objective!r} needs token data (digits17, mnist-binary, text), "
                         f"got dataset {cfg.dataset!r}")
    return vocab


def build_masked(cfg, data) -> MaskedDiffusion:
    return MaskedDiffusion(corruption_of("masked", _vocab(cfg, data))[0])


def build_ctmc_uniform(cfg, data) -> UniformDiffusion:
    return UniformDiffusion(corruption_of("ctmc-uniform", _vocab(cfg, data))[0])


def build_d3pm_absorbing(cfg, data) -> D3PMObjective:
    return D3PMObjective(corruption_of("d3pm-absorbing", _vocab(cfg, data))[1])


def build_d3pm_uniform(cfg, data) -> D3PMObjective:
    return D3PMObjective(corruption_of("d3pm-uniform", _vocab(cfg, data))[1])


class AnalogBits(Objective):
    """The continuous objective ``inner`` on the analog bits of token batches (bits as channels).

    Built by :func:`build_analog_bits`; the network sees (batch, bits, *shape) real values.
    """

    def __init__(self, inner, vocab: int):
        self.inner, self.vocab = inner, vocab
        self.streams = inner.streams

    def __call__(self, model, batch, rng) -> Tensor:
        x = analog.channels(analog.encode(batch.x0, self.vocab))
        return self.inner(model, Batch(x, batch.labels, batch.rows), rng)

    def initialise(self, net) -> None:
        self.inner.initialise(net)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def build_analog_bits(cfg, data) -> AnalogBits:
    """The ``analog-bits`` objective: denoising (or self-conditioning, with ``"self_condition": true`` in
    the net spec) on ``data``'s analog bits. Needs token data, ``sigma_data = 1`` and a network whose
    input is (bits, *shape) (:func:`~diffusionlens.discrete.analog.config` sets both)."""
    from . import denoising, selfcond

    vocab = getattr(data, "vocab", None)
    if vocab is None:
        raise ValueError(f"objective 'analog-bits' needs token data (digits17, mnist-binary, text), "
                         f"got dataset {cfg.dataset!r}")
    if cfg.sigma_data is None or abs(cfg.sigma_data - 1) > 1e-9:
        raise ValueError(f"analog bits are +-1: train them with sigma_data = 1, got {cfg.sigma_data!r}")
    want = [analog.bits(vocab), *data.data_shape]
    net = cfg.net or {}
    got = [net.get("in_channels"), net.get("image_size"), net.get("image_size")] if net.get("kind") == "unet" \
        else net.get("data_shape")
    if net.get("kind") not in ("unet", "mlp") or list(got or []) != want:
        raise ValueError(f"analog bits of {cfg.dataset!r} need a unet or mlp network with input shape {want}, "
                         f"got {net.get('kind')!r} with {got}; analog.config(cfg) sets one")
    inner = selfcond.build(cfg, data) if net.get("self_condition") else denoising.build(cfg, data)
    return AnalogBits(inner, vocab)
