"""Euler and Heun on the probability-flow ODE, with EDM's stochastic "churn".

Conventions: the PF-ODE in scale-free coordinates is ``dx/dsigma = (x - D(x, sigma)) / sigma``
(Karras et al. 2022, eq. 3 with s = 1), the same for every process. ``x`` is (batch, ...); grids
are (steps + 1,) as described in :mod:`diffusionlens.samplers._common`.

* Euler: ``x_next = D + (sigma_next / sigma) (x - D)`` (exactly DDIM with eta = 0).
* Heun: Karras et al. 2022, Alg. 1/2 — Euler predictor, trapezoidal corrector, Euler for the last
  step into sigma = 0. Two correctors (:class:`HeunForm`): ``EDM`` is the trapezoid in sigma,
  x_next = x_euler + (sigma - sigma_next) / (2 sigma_next) (D' - D), exactly as EDM, k-diffusion and
  diffusers; its weight (e^h - 1)/2 (h = log(sigma / sigma_next)) explodes on coarse grids, which is
  why those Heun samplers diverge at NFE <= 10 from sigma = 80. ``EXPONENTIAL`` (default) is the
  trapezoid in log-sigma with the linear part integrated exactly (the exponential-integrator Heun,
  DPM-Solver-2 with its midpoint at the end), x_next = x_euler + phi_2(h) (D' - D),
  phi_2(h) = 1 - (1 - e^{-h}) / h in [0, 1): second order as well, stable at any step size.
* Churn (Alg. 2): before a step at sigma in [s_tmin, s_tmax], raise the noise level to
  sigma_hat = sigma (1 + gamma), gamma = min(s_churn / steps, sqrt(2) - 1), by adding fresh
  noise of std s_noise sqrt(sigma_hat^2 - sigma^2). With ``s_churn = 0`` (default) both are
  deterministic and accept increasing grids (encoding).
"""

from __future__ import annotations

import math

from torch import Tensor

from .._util import Choice
from ..parameterization import eps_from_denoiser
from ._common import Callback, NoiseStream, call, grid_floats, lincomb, run
from .spec import sampler

__all__ = ["HeunForm", "euler_update", "heun_update", "churn_gamma", "churn", "euler", "heun"]


class HeunForm(Choice, what="Heun form"):
    """Which trapezoidal corrector :func:`heun` uses (see the module docstring)."""

    EXPONENTIAL = "exponential"
    EDM = "edm"


def euler_update(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One Euler step of the PF-ODE from sigma to sigma_next given D(x, sigma): D + (sigma_next/sigma)(x - D)."""
    w = sigma_next / sigma
    return lincomb((w, x), (1.0 - w, denoised))


def heun_update(
    x: Tensor,
    denoised: Tensor,
    x_euler: Tensor,
    denoised_next: Tensor,
    sigma: float,
    sigma_next: float,
    form: HeunForm = HeunForm.EXPONENTIAL,
) -> Tensor:
    """Heun's corrector given the Euler predictor ``x_euler`` and D at both ends.

    ``EDM``: x + (sigma_next - sigma) (d + d') / 2 with d = (x - D)/sigma at both ends (Karras Alg. 1).
    ``EXPONENTIAL``: x_euler + phi_2(h) (D' - D), the exact integral of a linearly interpolated D in log sigma.
    """
    if form is HeunForm.EDM:
        d = eps_from_denoiser(denoised, x, sigma)
        d_next = eps_from_denoiser(denoised_next, x_euler, sigma_next)
        return x + (0.5 * (sigma_next - sigma)) * (d + d_next)
    h = math.log(sigma / sigma_next)
    phi2 = 1.0 + math.expm1(-h) / h
    return lincomb((1.0, x_euler), (phi2, denoised_next), (-phi2, denoised))


def churn_gamma(sigma: float, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """EDM Alg. 2 line 4: the relative noise-level increase at sigma."""
    if s_churn <= 0 or not (s_tmin <= sigma <= s_tmax):
        return 0.0
    return min(s_churn / steps, math.sqrt(2.0) - 1.0)


def churn(x: Tensor, sigma: float, gamma: float, s_noise: float, z: Tensor) -> tuple[Tensor, float]:
    """EDM Alg. 2 lines 5-6: move x from sigma to sigma_hat = sigma (1 + gamma) with fresh noise ``z``."""
    sigma_hat = sigma * (1.0 + gamma)
    return x + (s_noise * math.sqrt(sigma_hat**2 - sigma**2)) * z, sigma_hat


def _check_churn(s_churn, s_noise, name):
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"{name}: s_churn and s_noise must be >= 0, got s_churn={s_churn}, s_noise={s_noise}")


def _churn_grid(sigmas, s_churn):
    return grid_floats(sigmas, allow_increasing=s_churn == 0, name="a sampler with churn")


@sampler(order=1)
def euler(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    generator=None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler's method on the PF-ODE (Karras et al. 2022, Alg. 2 without the corrector).

    Args:
        denoiser: canonical D(x, sigma) with sigma a (batch,) tensor.
        x: (batch, ...) starting state at sigmas[0] (noise * sigmas[0] when sampling).
        sigmas: (steps + 1,) grid, decreasing (possibly to 0) or, without churn, increasing.
        generator: torch.Generator or per-sample seeds, used only when s_churn > 0.
        s_churn, s_tmin, s_tmax, s_noise: EDM's stochasticity (off by default).
    Returns x at sigmas[-1]. NFE = steps.
    """
    _check_churn(s_churn, s_noise, "euler")
    s = _churn_grid(sigmas, s_churn)
    noise = NoiseStream.make(generator, x) if s_churn > 0 else None
    n = len(s) - 1

    def step(i, x, sigma, sigma_next, state):
        gamma = churn_gamma(sigma, n, s_churn, s_tmin, s_tmax)
        if gamma > 0:
            x, sigma = churn(x, sigma, gamma, s_noise, noise.normal(i, x))
        denoised = call(denoiser, x, sigma)
        return euler_update(x, denoised, sigma, sigma_next), None, denoised

    return run(step, x, s, callback=callback)


@sampler(order=2, nfe_per_step=2, nfe_extra=-1)
def heun(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    generator=None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    form: HeunForm | str = HeunForm.EXPONENTIAL,
) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1; Alg. 2 with ``s_churn > 0``).

    Arguments as :func:`euler`; ``form="edm"`` is EDM's / k-diffusion's / diffusers' corrector exactly,
    the default ``"exponential"`` its log-sigma form that stays stable on coarse grids.
    The step into sigma = 0 is an Euler step (the corrector would divide by 0), so NFE = 2 steps - 1
    on a grid ending at 0 and 2 steps otherwise.
    """
    _check_churn(s_churn, s_noise, "heun")
    form = HeunForm.parse(form)
    s = _churn_grid(sigmas, s_churn)
    noise = NoiseStream.make(generator, x) if s_churn > 0 else None
    n = len(s) - 1

    def step(i, x, sigma, sigma_next, state):
        gamma = churn_gamma(sigma, n, s_churn, s_tmin, s_tmax)
        if gamma > 0:
            x, sigma = churn(x, sigma, gamma, s_noise, noise.normal(i, x))
        denoised = call(denoiser, x, sigma)
        x_euler = euler_update(x, denoised, sigma, sigma_next)
        if sigma_next == 0:
            return x_euler, None, denoised
        denoised_next = call(denoiser, x_euler, sigma_next)
        return heun_update(x, denoised, x_euler, denoised_next, sigma, sigma_next, form), None, denoised

    return run(step, x, s, callback=callback)
