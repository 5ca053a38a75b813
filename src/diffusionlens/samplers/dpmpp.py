"""DPM-Solver++ multistep (2M, 3M) and its SDE variants: exponential integrators in log-sigma.

Conventions: lambda = -log sigma (half the log-SNR), h = lambda_next - lambda = log(sigma / sigma_next).
In scale-free coordinates the PF-ODE has the exact variation-of-constants form::

    x_next = (sigma_next / sigma) x + sigma_next * int_lambda^lambda_next e^u D(u) du

and DPM-Solver++ (Lu et al. 2022, Alg. 2) approximates D by the polynomial through the last 1-3
denoiser outputs. The SDE variants (Lu et al. 2022 sec. 4; k-diffusion's ``sample_dpmpp_2m_sde`` and
``sample_dpmpp_3m_sde``) solve the reverse SDE of the same marginals with noise fraction ``eta``:
with H = (1 + eta) h,

    x_next = e^{-H} x + (1 - e^{-H}) D + [higher-order terms in H] + sigma_next sqrt(1 - e^{-2 eta h}) z.

All coefficients (``expm1``, phi functions) are computed in float64 on the host. History is a tuple
of past (denoised, sigma) pairs, most recent first. The step into sigma = 0 returns D (the limit
h -> inf of the first-order step; higher orders would diverge there). Increasing grids (encoding)
are accepted when eta = 0.
"""

from __future__ import annotations

import math

from torch import Tensor

from .._util import Choice
from ._common import Callback, NoiseStream, call, grid_floats, lincomb, run
from .spec import Grid, sampler

__all__ = ["SecondOrder", "dpmpp_update", "dpmpp", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde"]


class SecondOrder(Choice, what="solver_type"):
    """The two second-order corrections of DPM-Solver++(2M) (diffusers/k-diffusion ``solver_type``)."""

    MIDPOINT = "midpoint"  # 0.5 (1 - e^{-H}) * d1, Lu et al. 2022 Alg. 2
    HEUN = "heun"  # phi_2(H) * d1 with phi_2(H) = (e^{-H} - 1)/H + 1, the exact weight of a linear D

History = tuple[tuple[Tensor, float], ...]


def dpmpp_update(
    x: Tensor,
    denoised: Tensor,
    sigma: float,
    sigma_next: float,
    history: History = (),
    *,
    order: int = 2,
    eta: float = 0.0,
    z: Tensor | None = None,
    s_noise: float = 1.0,
    solver_type: SecondOrder = SecondOrder.MIDPOINT,
    peer_3m: bool = False,
) -> Tensor:
    """One DPM-Solver++ multistep step (order min(order, 1 + len(history))) from sigma to sigma_next.

    Args:
        x: (batch, ...) state at sigma; denoised: D(x, sigma).
        history: ((D_{i-1}, sigma_{i-1}), (D_{i-2}, sigma_{i-2}), ...) earlier evaluations.
        eta: SDE noise fraction (0: the PF-ODE); z: standard normal noise when eta > 0.
        peer_3m: use diffusers'/k-diffusion's third-order weight (half the exact one), for conformance.
    Returns x at sigma_next.
    """
    if sigma_next == 0:
        return denoised
    h = math.log(sigma / sigma_next)
    H = h * (1.0 + eta)
    em = math.expm1(-H)  # e^{-H} - 1, float64
    # the step is a linear combination of x, D and the history; its coefficients are host float64
    c_x, c_d, c_p, c_pp = 1.0 + em, -em, 0.0, 0.0  # e^{-H} x + (1 - e^{-H}) D
    k = min(order, 1 + len(history))
    if k >= 2:
        d_prev, s_prev = history[0]
        r0 = math.log(s_prev / sigma) / h
        phi2 = em / H + 1.0
        if k == 2:
            # + c d1_0, d1_0 = (D - D_prev) / r0
            c = (-0.5 * em if solver_type is SecondOrder.MIDPOINT else phi2) / r0
            c_d, c_p = c_d + c, -c
        else:
            d_prev2, s_prev2 = history[1]
            r1 = math.log(s_prev2 / s_prev) / h
            # d1_0 = (D - D_p) / r0, d1_1 = (D_p - D_pp) / r1, d2 = (d1_0 - d1_1) / (r0 + r1),
            # d1 = d1_0 + r0 (d1_0 - d1_1) / (r0 + r1): the derivative at the current node (times h)
            diff = (1.0 / r0, -1.0 / r0 - 1.0 / r1, 1.0 / r1)  # d1_0 - d1_1 on (D, D_p, D_pp)
            d2 = tuple(v / (r0 + r1) for v in diff)
            d1 = (1.0 / r0 + r0 * diff[0] / (r0 + r1), -1.0 / r0 + r0 * diff[1] / (r0 + r1), r0 * diff[2] / (r0 + r1))
            phi3 = phi2 / H - 0.5  # -h phi_3(-h) in the usual exponential-integrator notation
            # int_0^h e^{-(h-u)} (u^2/2) D'' du = -2 phi3 * (h^2 D''/2) = -2 phi3 * d2: the weight is 2 phi3.
            # diffusers and k-diffusion use phi3 (half), which leaves a local O(h^3) error (2nd order).
            w2 = phi3 if peer_3m else 2.0 * phi3
            c_d += phi2 * d1[0] - w2 * d2[0]
            c_p = phi2 * d1[1] - w2 * d2[1]
            c_pp = phi2 * d1[2] - w2 * d2[2]
    terms = [(c_x, x), (c_d, denoised)]
    if c_p != 0.0:
        terms.append((c_p, history[0][0]))
    if c_pp != 0.0:
        terms.append((c_pp, history[1][0]))
    if eta > 0:
        terms.append((sigma_next * math.sqrt(-math.expm1(-2.0 * eta * h)) * s_noise, z))
    return lincomb(*terms)


def dpmpp(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    order: int = 2,
    eta: float = 0.0,
    s_noise: float = 1.0,
    solver_type: SecondOrder | str = SecondOrder.MIDPOINT,
    peer_3m: bool = False,
    generator=None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(kM) for k = ``order`` in {1, 2, 3}, ODE (eta = 0) or SDE (eta > 0).

    Args:
        denoiser: canonical D(x, sigma). x: (batch, ...) at sigmas[0]. sigmas: (steps + 1,) grid.
        order: multistep order; the first steps ramp up from order 1 as history accumulates.
        eta: SDE noise fraction (1 is the SDE of Lu et al. 2022); needs a decreasing grid.
        s_noise: scale of the injected noise. solver_type: second-order correction.
        peer_3m: reproduce diffusers'/k-diffusion's 3M exactly (their second-difference weight is half
            the exact one, so their 3M is locally O(h^3), i.e. second order; ours is third order).
        generator: torch.Generator or per-sample seeds (used when eta > 0).
    Returns x at sigmas[-1]. NFE = steps.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    solver_type = SecondOrder.parse(solver_type)
    s = grid_floats(sigmas, allow_increasing=eta == 0, name="DPM-Solver++ SDE")
    noise = NoiseStream.make(generator, x) if eta > 0 else None

    def step(i, x, sigma, sigma_next, history):
        denoised = call(denoiser, x, sigma)
        z = noise.normal(i, x) if (eta > 0 and sigma_next > 0) else None
        x = dpmpp_update(
            x, denoised, sigma, sigma_next, history,
            order=order, eta=eta, z=z, s_noise=s_noise, solver_type=solver_type, peer_3m=peer_3m,
        )
        return x, ((denoised, sigma),) + history[: order - 2] if order > 1 else (), denoised

    return run(step, x, s, state=(), callback=callback)


@sampler(order=2, grid=Grid.LOGSNR)
def dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None, solver_type=SecondOrder.MIDPOINT) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): second-order multistep on the PF-ODE. NFE = steps."""
    return dpmpp(denoiser, x, sigmas, order=2, solver_type=solver_type, generator=generator, callback=callback)


@sampler(order=3, grid=Grid.LOGSNR)
def dpmpp_3m(
    denoiser, x, sigmas, *, generator=None, callback=None, solver_type=SecondOrder.HEUN, peer_3m: bool = False
) -> Tensor:
    """DPM-Solver++(3M): third-order multistep on the PF-ODE. NFE = steps.

    The second step (history of one) uses the ``heun`` (phi_2) correction as k-diffusion does;
    ``solver_type="midpoint", peer_3m=True`` reproduces diffusers' ``solver_order=3`` and
    ``peer_3m=True`` k-diffusion's ``sample_dpmpp_3m_sde(eta=0)``."""
    return dpmpp(
        denoiser, x, sigmas, order=3, solver_type=solver_type, peer_3m=peer_3m, generator=generator, callback=callback
    )


@sampler(order=2, deterministic=False, grid=Grid.LOGSNR)
def dpmpp_2m_sde(
    denoiser, x, sigmas, *, generator=None, callback=None, eta=1.0, s_noise=1.0, solver_type=SecondOrder.MIDPOINT
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022; k-diffusion ``sample_dpmpp_2m_sde``). NFE = steps."""
    return dpmpp(
        denoiser, x, sigmas, order=2, eta=eta, s_noise=s_noise, solver_type=solver_type,
        generator=generator, callback=callback,
    )


@sampler(order=3, deterministic=False, grid=Grid.LOGSNR)
def dpmpp_3m_sde(
    denoiser, x, sigmas, *, generator=None, callback=None, eta=1.0, s_noise=1.0, peer_3m: bool = False
) -> Tensor:
    """SDE-DPM-Solver++(3M) (k-diffusion ``sample_dpmpp_3m_sde``, with the exact third-order weight). NFE = steps."""
    return dpmpp(
        denoiser, x, sigmas, order=3, eta=eta, s_noise=s_noise, solver_type=SecondOrder.HEUN, peer_3m=peer_3m,
        generator=generator, callback=callback,
    )
