"""The velocity objective of an interpolant (flow matching / stochastic interpolants), on the
training loop, and a small fitting routine for pairs that live outside a data set (reflow).

Per sample: ||v(x_t, t) - (alpha' x0 + beta' x1 + gamma' z)||^2 (mean over coordinates), t uniform
in [t_min, t_max], x1 from the objective's source re-paired by its coupling. The network is called
as ``net(x_t, t)``: for the linear Gaussian-source case this is exactly what
:class:`~diffusionlens.model.Denoiser` feeds a ``Param.VELOCITY`` network of the ``flow`` process
(x_in = s x_hat = x_t, conditioning t), so such a run is also a canonical denoiser and the run
layer, samplers and report apply unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..objectives.base import Batch, Objective, Streams
from .core import Interpolant
from .couplings import COUPLINGS, Gaussian, couple

__all__ = ["VelocityMatching", "velocity_loss", "net_velocity", "fit", "build_independent", "build_ot",
           "build_sinkhorn"]


def velocity_loss(net, interpolant: Interpolant, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor | None) -> Tensor:
    """Per-sample mean squared error of ``net(x_t, t)`` against the interpolant's velocity target."""
    pred = net(interpolant.sample(x0, x1, t, z), t)
    return (pred - interpolant.target(x0, x1, t, z)).flatten(1).pow(2).mean(1)


def net_velocity(net) -> Callable[[Tensor, Tensor], Tensor]:
    """The velocity field v(x, t) = net(x, t) of a network trained by this objective (no gradients)."""

    def v(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return net(x, t.to(x.dtype))

    return v


@dataclass(frozen=True, eq=False)
class VelocityMatching(Objective):
    """Velocity regression on an interpolant between the batch (targets) and ``source`` samples.

    Streams: ``t`` (times), ``noise`` (source samples and z), ``coupling`` (Sinkhorn's draws). The
    coupling is computed on the global batch, so every rank pairs the same way.
    """

    interpolant: Interpolant = field(default_factory=Interpolant)
    source: Callable = field(default_factory=Gaussian)
    coupling: str = "independent"
    t_min: float = 0.0
    t_max: float = 1.0
    streams = ("t", "noise", "coupling")

    def __post_init__(self):
        if self.coupling not in COUPLINGS:
            raise ValueError(f"unknown coupling {self.coupling!r}; choose one of: {', '.join(COUPLINGS)}")
        if (self.coupling == "paired") != bool(getattr(self.source, "paired", False)):
            raise ValueError(f"the 'paired' coupling goes with a paired source (a degraded copy of x0) and only "
                             f"with one; got coupling {self.coupling!r} with source {type(self.source).__name__}")
        if not (0 <= self.t_min < self.t_max <= 1):
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        if batch.labels is not None:
            raise ValueError("the interpolant objective is unconditional; train without labels")
        x0 = batch.x0
        x1 = couple(self.coupling, x0, self.source(x0, rng["noise"]), rng["coupling"])
        t = self.t_min + (self.t_max - self.t_min) * torch.rand(batch.size, generator=rng["t"], dtype=torch.float64)
        t = t.to(dtype=x0.dtype, device=x0.device)
        z = torch.randn(x0.shape, generator=rng["noise"], dtype=x0.dtype).to(x0.device) \
            if self.interpolant.noise else None
        net = getattr(model, "net", model)  # the training loop hands over the run's Denoiser
        loc = batch.local
        return velocity_loss(net, self.interpolant, loc(x0), loc(x1), loc(t), None if z is None else loc(z))


def fit(net, draw: Callable[[int, torch.Generator], tuple[Tensor, Tensor]], *, interpolant: Interpolant | None = None,
        steps: int = 500, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
        progress: bool = False, budget_s: float | None = None) -> list[float]:
    """Train ``net(x_t, t)`` by velocity regression on pairs ``draw(n, generator) -> (x0, x1)``, with Adam;
    returns the losses. For pairs that are not a data set (reflow's (sample, source) table).
    ``budget_s``: also stop after this much CPU time of this process (machines shared with other jobs)."""
    import time

    from tqdm.auto import tqdm

    interpolant = interpolant or Interpolant()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    start = time.process_time()
    for _ in tqdm(range(steps), disable=not progress, desc="fit velocity"):
        if budget_s is not None and time.process_time() - start > budget_s:
            break
        x0, x1 = draw(batch_size, g)
        t = torch.rand(batch_size, generator=g, dtype=torch.float64).to(x0.dtype)
        z = torch.randn(x0.shape, generator=g, dtype=x0.dtype) if interpolant.noise else None
        loss = velocity_loss(net, interpolant, x0, x1, t, z).mean()
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite velocity loss at fitting step {len(losses)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _build(coupling: str):
    def build(cfg, data) -> VelocityMatching:
        """The linear Gaussian-source interpolant's velocity objective with this coupling."""
        if cfg.process != "flow" or cfg.param != "velocity":
            raise ValueError(f"the interpolant objectives train a velocity network of the flow process "
                             f"(process='flow', param='velocity'), got process={cfg.process!r}, param={cfg.param!r}")
        return VelocityMatching(Interpolant(), Gaussian(), coupling, cfg.t_min, cfg.t_max)

    return build


build_independent, build_ot, build_sinkhorn = _build("independent"), _build("ot"), _build("sinkhorn")
