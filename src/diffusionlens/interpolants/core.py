"""Interpolants between a target sample x0 and a source sample x1, and ODE transport along them.

Notation (the package's time direction: t = 0 is the target, t = 1 the source):

    x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z,    z ~ N(0, I) independent of (x0, x1),

with alpha(0) = beta(1) = 1, alpha(1) = beta(0) = gamma(0) = gamma(1) = 0. The velocity whose
ODE dx/dt = b(x, t) carries the law of x_1 to that of x_0 (run from t = 1 down to 0) is the
conditional expectation b(x, t) = E[alpha' x0 + beta' x1 + gamma' z | x_t = x] (Albergo &
Vanden-Eijnden 2023; Liu et al. 2023), the minimiser of E||v(x_t, t) - (alpha' x0 + beta' x1 +
gamma' z)||^2, whatever the joint law (the coupling) of (x0, x1).

The Gaussian special case: with x1 = n ~ N(0, I) independent of x0, the linear interpolant
(alpha = 1 - t, beta = t, gamma = 0) is :class:`~diffusionlens.processes.Flow`, x_t = s(t)(x0 +
sigma(t) n) with s = 1 - t, sigma = t / (1 - t), and its velocity is ``Param.VELOCITY`` of the
canonical denoiser (:func:`velocity_from_denoiser`); :func:`as_denoiser` goes the other way, so the
package's samplers run any velocity model of that case.

Shapes: ``x`` (batch, *data_shape); ``t`` (batch,) or a float; velocities ``v(x, t)`` with t (batch,).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ode
from .._util import Choice, as_sigma, expand
from ..parameterization import Param, from_denoiser, to_denoiser
from ..processes import Flow

__all__ = ["Path", "Interpolant", "Velocity", "Transported", "transport", "straightness", "FIXED_METHODS",
           "velocity_from_denoiser", "as_denoiser"]

Velocity = Callable[[Tensor, Tensor], Tensor]
"""A velocity field ``v(x, t)``: x (batch, *data_shape), t (batch,) -> (batch, *data_shape)."""


class Path(Choice, what="interpolant path"):
    """alpha, beta of the interpolant: ``linear`` (1 - t, t) or ``trig`` (cos, sin of pi t / 2)."""

    LINEAR = "linear"
    TRIG = "trig"


@dataclass(frozen=True)
class Interpolant:
    """x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z with gamma(t) = ``noise`` * t (1 - t).

    gamma vanishes at both ends, so the end laws are the target and the source exactly; its
    t (1 - t) form keeps gamma' bounded (sqrt(t (1 - t)) would not).
    """

    path: Path | str = Path.LINEAR
    noise: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "path", Path.parse(self.path))
        if not (isinstance(self.noise, (int, float)) and math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise (gamma's scale) must be finite and >= 0, got {self.noise!r}")

    def coefs(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(alpha, beta, gamma, alpha', beta', gamma') at times ``t`` (any shape)."""
        if self.path is Path.LINEAR:
            a, b, da, db = 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
        else:
            h = 0.5 * math.pi
            a, b, da, db = torch.cos(h * t), torch.sin(h * t), -h * torch.sin(h * t), h * torch.cos(h * t)
        g, dg = self.noise * t * (1 - t), self.noise * (1 - 2 * t)
        return a, b, g, da, db, dg

    def _check(self, x0: Tensor, x1: Tensor) -> None:
        if x0.shape != x1.shape:
            raise ValueError(f"target and source samples differ in shape: {tuple(x0.shape)} vs {tuple(x1.shape)}")

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor | None = None) -> Tensor:
        """x_t for pairs (x0, x1) (batch, ...), times t (batch,) and noise z (needed when noise > 0)."""
        self._check(x0, x1)
        a, b, g, *_ = self.coefs(t)
        x = expand(a, x0) * x0 + expand(b, x0) * x1
        return x + expand(g, x0) * self._z(z, x0) if self.noise else x

    def target(self, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor | None = None) -> Tensor:
        """The regression target d x_t / dt = alpha' x0 + beta' x1 + gamma' z."""
        self._check(x0, x1)
        *_, da, db, dg = self.coefs(t)
        v = expand(da, x0) * x0 + expand(db, x0) * x1
        return v + expand(dg, x0) * self._z(z, x0) if self.noise else v

    @staticmethod
    def _z(z: Tensor | None, x0: Tensor) -> Tensor:
        if z is None or z.shape != x0.shape:
            raise ValueError(f"an interpolant with noise > 0 needs z of shape {tuple(x0.shape)}, got "
                             f"{None if z is None else tuple(z.shape)}")
        return z


# ---------------------------------------------------------------------- the Gaussian special case


def velocity_from_denoiser(denoiser, x: Tensor, t: Tensor) -> Tensor:
    """The linear Gaussian-source interpolant's velocity at x_t = ``x``, 0 < t < 1, from a canonical
    denoiser: ``Param.VELOCITY`` of Flow at x_hat = x / (1 - t), sigma = t / (1 - t)."""
    c = Flow().coefs(t)
    x_hat = x / expand(c.scale, x)
    return from_denoiser(Param.VELOCITY, denoiser(x_hat, c.sigma), x_hat, c)


def as_denoiser(velocity: Velocity):
    """The canonical denoiser D(x_hat, sigma) of a velocity model of the linear Gaussian-source
    interpolant (:class:`~diffusionlens.processes.Flow` time), for the package's samplers."""
    flow = Flow()

    def denoiser(x_hat: Tensor, sigma, **cond) -> Tensor:
        s = as_sigma(sigma, x_hat)
        t = flow.t_of_sigma(s)
        c = flow.coefs(t)
        return to_denoiser(Param.VELOCITY, velocity(expand(c.scale, x_hat) * x_hat, t), x_hat, c)

    return denoiser


# ---------------------------------------------------------------------- transport

FIXED_METHODS = {"euler": 1, "midpoint": 2, "heun": 2}
"""Fixed-step methods and their orders; ``dopri5`` and ``bosh3`` go through :func:`diffusionlens.ode.solve`."""


@dataclass
class Transported:
    """``x`` at t_end; ``nfe`` velocity evaluations per sample; ``path`` (steps + 1, batch, ...) when kept."""

    x: Tensor
    nfe: float
    path: Tensor | None = None


def _checked(velocity: Velocity, x: Tensor, t: float) -> Tensor:
    v = velocity(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
    if v.shape != x.shape:
        raise ValueError(f"velocity returned shape {tuple(v.shape)} for input {tuple(x.shape)}")
    return ode.check_output(v, torch.full((x.shape[0],), t, dtype=torch.float64), torch.arange(x.shape[0]),
                            "velocity at t")


def transport(velocity: Velocity, x: Tensor, *, steps: int = 32, method: str = "heun", t_start: float = 1.0,
              t_end: float = 0.0, rtol: float = 1e-5, atol: float = 1e-5, keep_path: bool = False) -> Transported:
    """Integrate dx/dt = velocity(x, t) from t_start (the source, by default) to t_end.

    ``method``: a fixed-step method of :data:`FIXED_METHODS` on ``steps`` uniform steps, or an
    adaptive pair of :class:`diffusionlens.ode.Method` (``dopri5``, ``bosh3``) with ``rtol``/``atol``.
    """
    if method in ode.Method._value2member_map_:
        if keep_path:
            raise ValueError("keep_path needs a fixed-step method; the adaptive solver keeps no grid")
        y, info = ode.solve(lambda tt, yy, idx: velocity(yy, tt), x, t_start, t_end, rtol=rtol, atol=atol,
                            method=method)
        return Transported(y, float(info.nfe.double().mean()))
    if method not in FIXED_METHODS:
        raise ValueError(f"unknown transport method {method!r}; choose one of: "
                         f"{', '.join([*FIXED_METHODS, *ode.Method._value2member_map_])}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    ts = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()
    path = [x] if keep_path else None
    nfe = 0
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = t_next - t
        k1 = _checked(velocity, x, t)
        if method == "euler":
            x, nfe = x + h * k1, nfe + 1
        elif method == "midpoint":
            x, nfe = x + h * _checked(velocity, x + 0.5 * h * k1, t + 0.5 * h), nfe + 2
        else:
            x, nfe = x + 0.5 * h * (k1 + _checked(velocity, x + h * k1, t_next)), nfe + 2
        if keep_path:
            path.append(x)
    return Transported(x, float(nfe), torch.stack(path) if keep_path else None)


def straightness(velocity: Velocity, x: Tensor, *, steps: int = 32, method: str = "heun", t_start: float = 1.0,
                 t_end: float = 0.0) -> Tensor:
    """Per-sample straightness (batch,): the mean over the path of ||v(x_t, t) - chord||^2, where the
    chord is (x_end - x_start) / (t_end - t_start) (Liu et al. 2023's S; 0 for straight paths).

    The path is solved with ``method`` on ``steps`` uniform steps and v is evaluated at its
    ``steps + 1`` nodes (trapezoidal rule over t).
    """
    out = transport(velocity, x, steps=steps, method=method, t_start=t_start, t_end=t_end, keep_path=True)
    chord = (out.x - x) / (t_end - t_start)
    ts = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()
    dev = torch.stack([(_checked(velocity, p, t) - chord).flatten(1).pow(2).sum(1) for p, t in zip(out.path, ts)])
    w = torch.full((steps + 1,), 1.0 / steps, dtype=dev.dtype, device=dev.device)
    w[0] = w[-1] = 0.5 / steps
    return (w[:, None] * dev).sum(0)
