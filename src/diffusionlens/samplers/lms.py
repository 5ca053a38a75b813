"""Linear multistep (Adams–Bashforth on a non-uniform grid) for the PF-ODE in sigma, with the
derivative interpolated in sigma (LMS) or in log sigma (DEIS).

Conventions: ``d = (x - D(x, sigma)) / sigma = dx/dsigma`` (the noise prediction). Step i integrates
the Lagrange polynomial through the last ``k`` derivatives (at sigma_i, sigma_{i-1}, ...) over
[sigma_i, sigma_{i+1}]; the order ramps up 1, 2, ..., ``order`` while the history fills. The history
is a tuple of past derivatives, most recent first. Two interpolation variables (:class:`Basis`):

* ``SIGMA``: d as a polynomial in sigma (Karras et al. 2022 / k-diffusion's ``sample_lms``),
  coefficients from exact polynomial antiderivatives in float64;
* ``LOG_SIGMA``: d as a polynomial in tau = log sigma, integrated exactly against
  d sigma = e^tau d tau — the log-rho multistep DEIS (rhoAB-DEIS, Zhang & Chen 2023, sec. 4;
  diffusers' ``DEISMultistepScheduler``). On the geometric grids used for sampling the nodes are
  equally spaced in tau, where the noise prediction varies smoothly at every noise level, while in
  sigma the nodes of one step span orders of magnitude. The coefficients
  ``int_{tau_i}^{tau_next} L_j(tau) e^tau d tau`` are computed by 24-point Gauss–Legendre quadrature
  (error below float64 roundoff for any step up to |h| = 20). The step into sigma = 0 (tau = -inf)
  returns D, the limit of every exponential-type step.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from .._util import Choice
from ..parameterization import eps_from_denoiser
from ._common import Callback, call, grid_floats, lincomb, run
from .spec import sampler

__all__ = ["Basis", "lms_coefficients", "lms_coefficients_log", "lms_update", "lms", "deis"]

_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)


class Basis(Choice, what="basis"):
    """The variable in which the multistep derivative is interpolated."""

    SIGMA = "sigma"  # LMS (k-diffusion)
    LOG_SIGMA = "log_sigma"  # DEIS, log-rho multistep


def lms_coefficients(nodes: list[float], a: float, b: float) -> list[float]:
    """Integrals over [a, b] of the Lagrange basis polynomials on ``nodes`` (most recent first)."""
    out = []
    P = np.polynomial.polynomial
    for j, tj in enumerate(nodes):
        poly = np.array([1.0])
        for m, tm in enumerate(nodes):
            if m != j:
                poly = P.polymul(poly, np.array([-tm, 1.0]) / (tj - tm))
        anti = P.polyint(poly)
        out.append(float(P.polyval(b, anti) - P.polyval(a, anti)))
    return out


def lms_coefficients_log(nodes: list[float], a: float, b: float) -> list[float]:
    """``int_a^b L_j(log u) du`` for the Lagrange basis in log sigma on ``nodes`` (sigmas > 0, most
    recent first), a, b > 0: the DEIS weights of a derivative interpolated in log sigma."""
    t = [math.log(v) for v in nodes]
    lo, hi = math.log(a), math.log(b)
    tau = 0.5 * (hi - lo) * _GL_X + 0.5 * (hi + lo)
    w = 0.5 * (hi - lo) * _GL_W * np.exp(tau)  # d sigma = e^tau d tau
    out = []
    for j, tj in enumerate(t):
        basis = np.ones_like(tau)
        for m, tm in enumerate(t):
            if m != j:
                basis = basis * (tau - tm) / (tj - tm)
        out.append(float((w * basis).sum()))
    return out


def lms_update(
    x: Tensor, history: tuple[Tensor, ...], nodes: list[float], sigma_next: float, basis: Basis = Basis.SIGMA
) -> Tensor:
    """x + sum_j c_j d_j with ``history`` = (d_i, d_{i-1}, ...) at ``nodes`` = (sigma_i, sigma_{i-1}, ...)."""
    if basis is Basis.SIGMA:
        coefs = lms_coefficients(nodes, nodes[0], sigma_next)
    else:
        coefs = lms_coefficients_log(nodes, nodes[0], sigma_next)
    return lincomb((1.0, x), *zip(coefs, history))


@sampler(order=4)
def lms(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    generator=None,
    callback: Callback | None = None,
    order: int = 4,
    basis: Basis | str = Basis.SIGMA,
) -> Tensor:
    """Linear multistep method of order ``order`` (default 4) in sigma (k-diffusion's ``sample_lms``).

    Args:
        denoiser: canonical D(x, sigma). x: (batch, ...). sigmas: (steps + 1,) decreasing or increasing.
        order: 1 (Euler) to 6.
        basis: ``"sigma"`` (LMS) or ``"log_sigma"`` (DEIS; see :func:`deis`).
    Returns x at sigmas[-1]. NFE = steps. Deterministic (``generator`` unused).
    """
    if not (isinstance(order, int) and 1 <= order <= 6):
        raise ValueError(f"order must be an integer in [1, 6], got {order!r}")
    basis = Basis.parse(basis)
    s = grid_floats(sigmas)

    def step(i, x, sigma, sigma_next, history):
        denoised = call(denoiser, x, sigma)
        history = (eps_from_denoiser(denoised, x, sigma),) + history[: order - 1]
        if sigma_next == 0 and basis is Basis.LOG_SIGMA:
            return denoised, history, denoised
        nodes = [s[i - j] for j in range(len(history))]
        return lms_update(x, history, nodes, sigma_next, basis), history, denoised

    return run(step, x, s, state=(), callback=callback)


@sampler(order=3)
def deis(denoiser, x: Tensor, sigmas, *, generator=None, callback: Callback | None = None, order: int = 3) -> Tensor:
    """DEIS, log-rho multistep (Zhang & Chen 2023; diffusers ``DEISMultistepScheduler``): Adams–Bashforth
    for dx/dsigma with the noise prediction interpolated in log sigma. Order ``order`` (default 3,
    ramping up from 1). NFE = steps. Deterministic; accepts increasing grids (encoding)."""
    return lms(denoiser, x, sigmas, generator=generator, callback=callback, order=order, basis=Basis.LOG_SIGMA)
