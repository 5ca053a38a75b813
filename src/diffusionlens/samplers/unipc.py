"""UniPC: unified predictor (UniP) and corrector (UniC) in data prediction (Zhao et al. 2023).

Conventions: lambda = -log sigma, h = lambda_next - lambda, scale-free x (a VP model's x_t / alpha).
With data prediction D, both stages start from the exponential-Euler step
``e^{-h} x + (1 - e^{-h}) D_i`` and add ``-B(h) sum_k rho_k (D_k - D_i) / r_k`` where
r_k = (lambda_k - lambda_i) / h are the relative positions of the other evaluations and the rho_k
solve the order conditions ``sum_k rho_k r_k^{m-1} = b_m`` (Zhao et al. 2023, Thm. 3.1; B(h) is
``bh1``: -h... or ``bh2``: e^{-h} - 1). The corrector UniC re-does the last step with the new
evaluation D(x_next) included, raising the order by one at no extra NFE (that evaluation is the
next step's anyway), so UniPC-p is of order p + 1. Coefficients are float64 on the host.

State between steps: (history of (D, sigma) most recent first, previous x, previous order).
Like diffusers' ``UniPCMultistepScheduler`` (``lower_order_final``), the order ramps up at the
start and down to the number of remaining steps at the end; the last step into sigma = 0 returns D.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from .._util import Choice
from ._common import Callback, call, grid_floats, lincomb, run
from .spec import Grid, sampler

__all__ = ["BFunction", "unipc_coefficients", "unip_update", "unic_update", "unipc"]


class BFunction(Choice, what="B(h)"):
    """The B(h) choice of UniPC (Zhao et al. 2023, sec. 3.3)."""

    BH1 = "bh1"
    BH2 = "bh2"


def unipc_coefficients(rks: list[float], h: float, b_fn: BFunction, predictor: bool) -> tuple[list[float], float]:
    """(rho, B(h)) for relative nodes ``rks`` (the other evaluations, then 1.0 for the corrector's new one).

    Solves the UniPC order conditions in float64. ``predictor`` drops the last node (r = 1)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    B_h = hh if b_fn is BFunction.BH1 else h_phi_1
    order = len(rks)
    R, b = [], []
    fact = 1
    for i in range(1, order + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * fact / B_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    R, b = np.array(R), np.array(b)
    if predictor:
        if order == 1:
            return [], B_h
        if order == 2:
            return [0.5], B_h
        return np.linalg.solve(R[:-1, :-1], b[:-1]).tolist(), B_h
    if order == 1:
        return [0.5], B_h
    return np.linalg.solve(R, b).tolist(), B_h


def _weights(sigma, history, k, h):
    """Relative nodes r_j = (lambda_j - lambda_i) / h of the k - 1 previous evaluations (most recent first)."""
    return [math.log(sigma / history[j][1]) / h for j in range(k - 1)]


def _combine(x, denoised, sigma, sigma_next, history, rks, rho, B_h, new=None):
    """e^{-h} x + (1 - e^{-h}) D - B(h) sum_j rho_j (D_j - D) / r_j [- B(h) rho_new (D_new - D)],
    assembled as one linear combination (host float64 coefficients)."""
    w = sigma_next / sigma
    c_d = 1.0 - w
    terms = [(w, x)]
    for r, c, (d_j, _) in zip(rks, rho, history):  # zip stops at the k - 1 previous nodes
        a = B_h * c / r
        terms.append((-a, d_j))
        c_d += a
    if new is not None:
        a = B_h * rho[-1]
        terms.append((-a, new))
        c_d += a
    terms.append((c_d, denoised))
    return lincomb(*terms)


def unip_update(
    x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, history=(), order: int = 2, b_fn=BFunction.BH2
) -> Tensor:
    """UniP-``order`` predictor step from sigma to sigma_next given D(x, sigma) and past (D, sigma) pairs."""
    if sigma_next == 0:
        return denoised
    h = math.log(sigma / sigma_next)
    rks = _weights(sigma, history, order, h)
    rho, B_h = unipc_coefficients(rks + [1.0], h, b_fn, predictor=True)
    return _combine(x, denoised, sigma, sigma_next, history, rks, rho, B_h)


def unic_update(
    x_prev: Tensor,
    denoised_prev: Tensor,
    sigma_prev: float,
    sigma: float,
    denoised_new: Tensor,
    history=(),
    order: int = 2,
    b_fn=BFunction.BH2,
) -> Tensor:
    """UniC-``order`` corrector: redo the step sigma_prev -> sigma from ``x_prev`` using D(x, sigma) too."""
    h = math.log(sigma_prev / sigma)
    rks = _weights(sigma_prev, history, order, h)
    rho, B_h = unipc_coefficients(rks + [1.0], h, b_fn, predictor=False)
    return _combine(x_prev, denoised_prev, sigma_prev, sigma, history, rks, rho, B_h, new=denoised_new)


@sampler(order=4, grid=Grid.LOGSNR)
def unipc(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    generator=None,
    callback: Callback | None = None,
    order: int = 3,
    b_fn: BFunction | str = BFunction.BH2,
    corrector: bool = True,
    lower_order_final: bool = True,
) -> Tensor:
    """UniPC (Zhao et al. 2023, Alg. 2/3): UniP-``order`` predictor with the UniC corrector.

    Args:
        denoiser: canonical D(x, sigma). x: (batch, ...). sigmas: (steps + 1,) decreasing or increasing.
        order: predictor order 1-3 (the corrected method has order ``order + 1``).
        b_fn: ``"bh2"`` (default, diffusers' choice) or ``"bh1"``.
        corrector: apply UniC after every step but the last (no extra NFE).
        lower_order_final: cap the order by the number of remaining steps (as diffusers does).
    Returns x at sigmas[-1]. NFE = steps. Deterministic.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    b_fn = BFunction.parse(b_fn)
    s = grid_floats(sigmas)
    n = len(s) - 1

    def step(i, x, sigma, sigma_next, state):
        history, x_prev, order_prev = state
        denoised = call(denoiser, x, sigma)
        if corrector and history:
            d_prev, s_prev = history[0]
            x = unic_update(x_prev, d_prev, s_prev, sigma, denoised, history[1:], order_prev, b_fn)
        k = min(order, 1 + len(history))
        if lower_order_final:
            k = min(k, n - i)
        x_next = unip_update(x, denoised, sigma, sigma_next, history, k, b_fn)
        history = ((denoised, sigma),) + history[: order - 1]
        return x_next, (history, x, k), denoised

    return run(step, x, s, state=((), None, 1), callback=callback)
