"""Rectified flow with reflow (Liu et al. 2023): retrain the velocity on the model's own (sample,
source) pairs so its paths straighten, and sample in one step afterwards.

A round: draw source samples x1, transport them with the current velocity to x0 = T(x1), then fit a
new velocity on the pairs (x0, x1) with the linear interpolant (the ``paired`` coupling: the pairs
are the data). The new flow transports the same source to the same marginal (the pairs' x0 law),
its paths cross less, and its straightness (:func:`~diffusionlens.interpolants.core.straightness`)
falls; a straight flow is solved exactly by one Euler step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .core import Interpolant, Velocity, straightness, transport
from .objective import fit, net_velocity

__all__ = ["reflow_pairs", "ReflowRound", "reflow"]


def reflow_pairs(velocity: Velocity, x1: Tensor, *, steps: int = 32, method: str = "heun") -> tuple[Tensor, Tensor]:
    """(x0, x1): the flow's samples x0 = T(x1) from source samples ``x1``."""
    return transport(velocity, x1, steps=steps, method=method).x.detach(), x1


@dataclass
class ReflowRound:
    """One round's network, its final fitting loss and its mean straightness on held-out sources."""

    net: torch.nn.Module
    loss: float
    straightness: float


def reflow(velocity: Velocity, make_net: Callable[[], torch.nn.Module],
           source: Callable[[int, torch.Generator], Tensor], *, rounds: int = 1, n_pairs: int = 4096,
           solve_steps: int = 32, fit_steps: int = 500, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
           n_eval: int = 512) -> list[ReflowRound]:
    """``rounds`` reflow rounds from ``velocity``; each fits a fresh ``make_net()`` on its predecessor's
    pairs (``source(n, generator)`` draws the x1). Returns the rounds in order."""
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    g = torch.Generator().manual_seed(seed)
    held_out = source(n_eval, g)
    out = []
    for k in range(rounds):
        x0, x1 = reflow_pairs(velocity, source(n_pairs, g), steps=solve_steps)

        def draw(n, gen, x0=x0, x1=x1):
            idx = torch.randint(x0.shape[0], (n,), generator=gen)
            return x0[idx], x1[idx]

        net = make_net()
        losses = fit(net, draw, interpolant=Interpolant(), steps=fit_steps, batch_size=batch_size, lr=lr,
                     seed=seed + 1 + k)
        velocity = net_velocity(copy.deepcopy(net).eval())
        s = float(straightness(velocity, held_out, steps=solve_steps).mean())
        out.append(ReflowRound(net, sum(losses[-50:]) / len(losses[-50:]), s))
    return out
