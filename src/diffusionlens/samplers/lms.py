"""Linear multistep (Adams–Bashforth on a non-uniform grid) for the PF-ODE in sigma.

Conventions: ``d = (x - D(x, sigma)) / sigma = dx/dsigma``. Step i integrates the Lagrange
polynomial through the last ``k`` derivatives (at sigma_i, sigma_{i-1}, ...) over [sigma_i,
sigma_{i+1}] (Karras et al. 2022 / k-diffusion's ``sample_lms``); the coefficients are computed
exactly (polynomial antiderivatives in float64), and the order ramps up 1, 2, ..., ``order`` while
the history fills. The history is a tuple of past derivatives, most recent first.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ._common import Callback, call, grid_floats, lincomb, run

__all__ = ["lms_coefficients", "lms_update", "lms"]


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


def lms_update(x: Tensor, history: tuple[Tensor, ...], nodes: list[float], sigma_next: float) -> Tensor:
    """x + sum_j c_j d_j with ``history`` = (d_i, d_{i-1}, ...) at ``nodes`` = (sigma_i, sigma_{i-1}, ...)."""
    coefs = lms_coefficients(nodes, nodes[0], sigma_next)
    return lincomb((1.0, x), *zip(coefs, history))


def lms(denoiser, x: Tensor, sigmas, *, generator=None, callback: Callback | None = None, order: int = 4) -> Tensor:
    """Linear multistep method of order ``order`` (default 4) in sigma (k-diffusion's ``sample_lms``).

    Args:
        denoiser: canonical D(x, sigma). x: (batch, ...). sigmas: (steps + 1,) decreasing or increasing.
        order: 1 (Euler) to 6.
    Returns x at sigmas[-1]. NFE = steps. Deterministic (``generator`` unused).
    """
    if not (isinstance(order, int) and 1 <= order <= 6):
        raise ValueError(f"order must be an integer in [1, 6], got {order!r}")
    s = grid_floats(sigmas)

    def step(i, x, sigma, sigma_next, history):
        denoised = call(denoiser, x, sigma)
        history = ((x - denoised) / sigma,) + history[: order - 1]
        nodes = [s[i - j] for j in range(len(history))]
        return lms_update(x, history, nodes, sigma_next), history, denoised

    return run(step, x, s, state=(), callback=callback)
