"""Iterative alpha-(de)blending (Heitz et al. 2023, IADB): a deterministic map between two arbitrary
distributions. It is the linear interpolant's Euler sampler, so this module only converts notation
and names the two maps; training and transport are :func:`~diffusionlens.interpolants.objective.fit`
and :func:`~diffusionlens.interpolants.core.transport`.

IADB blends a ~ p_a (its x0, where the iteration starts) with b ~ p_b (its x1, where it ends):

    x_alpha = (1 - alpha) a + alpha b,    D(x, alpha) ~ E[b - a | x_alpha = x]    (trained by regression on b - a)
    deblending:  x <- x + (alpha_{k+1} - alpha_k) D(x, alpha_k),  alpha_k = k / T  (sampling)

In the package's notation (t = 0 the target x0 = b, t = 1 the source x1 = a) this is the linear
interpolant x_t = (1 - t) x0 + t x1 at t = 1 - alpha, whose regression target dx_t/dt = x1 - x0 is
-(b - a), so

    D(x, alpha) = -v(x, 1 - alpha),    v(x, t) = -D(x, 1 - t)

(:func:`difference_from_velocity`, :func:`velocity_from_difference`), and a deblending step from
alpha_k to alpha_{k+1} is the Euler step of dx/dt = v from t_k = 1 - alpha_k to t_{k+1}: the
iteration *is* ``transport(v, a, steps=T, method="euler")`` (:func:`forward_map`; the test
``test_deblending_is_the_linear_interpolants_euler_sampler`` checks it to rounding). The difference
regression ||D(x_alpha, alpha) - (b - a)||^2 is the velocity regression of the linear interpolant
with independent pairs, so a model is trained by :func:`fit_blending` (``fit`` on pairs drawn from
the two distributions). Run the other way, from t = 0 to 1, the same field maps p_b back to p_a
(:func:`backward_map`, IADB's inversion); forward then backward is the identity up to the solver's
error (order 1 for IADB's Euler iteration, 2 for ``heun``).

On the training loop the same model is ``VelocityMatching(Interpolant(), TableSource(x_a),
"independent")`` with p_b as the data set. Shapes: samples (batch, *data_shape), of one shape on both sides.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..oracle import GaussianMixture
from .core import Interpolant, Transported, Velocity, transport
from .couplings import couple
from .objective import fit

__all__ = ["Difference", "difference_from_velocity", "velocity_from_difference", "blend_pairs", "fit_blending",
           "forward_map", "backward_map"]

Difference = Callable[[Tensor, Tensor], Tensor]
"""IADB's model ``D(x, alpha)``: x (batch, *data_shape), alpha (batch,) -> E[b - a | x_alpha = x]."""

Sampler = Callable[[int, torch.Generator], Tensor]


def difference_from_velocity(velocity: Velocity) -> Difference:
    """IADB's D(x, alpha) = -v(x, 1 - alpha) of a velocity of the linear interpolant (package time)."""
    return lambda x, alpha: -velocity(x, 1 - alpha)


def velocity_from_difference(difference: Difference) -> Velocity:
    """The package's v(x, t) = -D(x, 1 - t) of an IADB model D(x, alpha) (e.g. one trained in IADB's code)."""
    return lambda x, t: -difference(x, 1 - t)


def _sampler(dist, name: str) -> Sampler:
    """``draw(n, generator)`` for a distribution given as a table of samples, a mixture or a callable."""
    if isinstance(dist, GaussianMixture):
        return lambda n, g: dist.sample(n, g)
    if isinstance(dist, Tensor):
        if dist.ndim < 2 or dist.shape[0] < 1:
            raise ValueError(f"{name} samples need shape (n >= 1, *data_shape), got {tuple(dist.shape)}")
        return lambda n, g: dist[torch.randint(dist.shape[0], (n,), generator=g)]
    if callable(dist):
        return dist
    raise TypeError(f"{name} must be a tensor of samples, a GaussianMixture or a callable (n, generator) -> "
                    f"samples, got {type(dist).__name__}")


Pairs = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]


def blend_pairs(target, source, coupling: str = "independent") -> Pairs:
    """``draw(n, generator) -> (x0, x1)``: n target and n source samples, re-paired by ``coupling``
    (IADB uses ``independent``; ``ot`` and ``sinkhorn`` straighten the map).

    ``target``, ``source``: each a tensor of samples (rows drawn uniformly, with replacement), a
    :class:`~diffusionlens.oracle.GaussianMixture`, or a callable ``(n, generator) -> (n, *data_shape)``.
    """
    if coupling == "paired":
        raise ValueError("alpha-blending pairs two independent distributions; coupling 'paired' needs a "
                         "source made from the target (use Degraded with VelocityMatching)")
    draw_target, draw_source = _sampler(target, "target"), _sampler(source, "source")

    def draw(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        x0, x1 = draw_target(n, g), draw_source(n, g)
        if x0.shape != x1.shape:
            raise ValueError(f"target and source samples differ in shape: {tuple(x0.shape)} vs {tuple(x1.shape)}")
        return x0, couple(coupling, x0, x1.to(x0.dtype), g)

    return draw


def fit_blending(net, target, source, *, coupling: str = "independent", **fit_kwargs) -> list[float]:
    """Train ``net(x_t, t)`` as the velocity of the linear interpolant between ``target`` and ``source``
    (IADB's difference regression, in package time): :func:`~diffusionlens.interpolants.objective.fit`
    on :func:`blend_pairs`. ``fit_kwargs``: fit's ``steps``, ``batch_size``, ``lr``, ``seed``,
    ``progress``, ``budget_s``. Returns the losses."""
    if "interpolant" in fit_kwargs:
        raise ValueError("alpha-blending is the linear interpolant without noise; do not pass an interpolant")
    return fit(net, blend_pairs(target, source, coupling), interpolant=Interpolant(), **fit_kwargs)


def forward_map(velocity: Velocity, x1: Tensor, *, steps: int = 128, method: str = "euler", **kw) -> Transported:
    """Source samples ``x1`` -> target samples: IADB's deblending iteration with ``steps`` uniform steps
    (``method="euler"``), or any :func:`~diffusionlens.interpolants.core.transport` method on the same field."""
    return transport(velocity, x1, steps=steps, method=method, t_start=1.0, t_end=0.0, **kw)


def backward_map(velocity: Velocity, x0: Tensor, *, steps: int = 128, method: str = "euler", **kw) -> Transported:
    """Target samples ``x0`` -> source samples: the same field integrated from t = 0 to 1 (IADB's inversion)."""
    return transport(velocity, x0, steps=steps, method=method, t_start=0.0, t_end=1.0, **kw)
