"""Adaptive-step probability-flow ODE solver with error control, in log-sigma time.

Conventions: with tau = log sigma the PF-ODE ``dx/dsigma = (x - D)/sigma`` becomes

    dx / dtau = x - D(x, e^tau),

an autonomous-looking system whose linear part has unit rate at every noise level, so an embedded
Runge–Kutta pair takes steps of comparable size from sigma = 80 down to 0.002 (in sigma itself the
natural step would shrink by 4e4). It is integrated by :func:`diffusionlens.ode.solve` with
per-sample step control (each sample's steps are as if it were solved alone), from
``log sigmas[0]`` to the log of the last positive entry; interior grid points are not used. On a
grid ending at 0 a final Tweedie step x = D(x, sigma_last) follows (1 NFE). An increasing grid
integrates data -> noise (encoding).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..ode import Method, solve
from ._common import Callback, call, check_finite, grid_floats

__all__ = ["adaptive"]


def adaptive(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    generator=None,
    callback: Callback | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    method: Method | str = Method.DOPRI5,
    max_steps: int = 10_000,
) -> Tensor:
    """Adaptive embedded Runge–Kutta (Dormand–Prince 5(4) by default) on dx/dlog(sigma) = x - D.

    Args:
        denoiser: canonical D(x, sigma), sigma a (batch,) tensor (called on the samples still running).
        x: (batch, ...) at sigmas[0]. sigmas: grid whose first and last positive entries are the ends.
        rtol, atol: per-sample tolerances on x in the RMS norm (``diffusionlens.ode``).
        method: ``"dopri5"`` or ``"bosh3"``.
    Returns x at sigmas[-1]. The per-sample NFE (including the final denoising step) is passed to
    ``callback`` under the key ``"nfe"`` (tensor (batch,)); it varies from sample to sample.
    """
    s = grid_floats(sigmas)
    s_end = s[-1] if s[-1] > 0 else s[-2]
    t0, t1 = math.log(s[0]), math.log(s_end)

    def f(t: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        return y - denoiser(y, torch.exp(t))

    if t0 != t1:
        try:
            x, info = solve(f, x, t0, t1, rtol=rtol, atol=atol, method=method, max_steps=max_steps)
        except FloatingPointError as err:
            raise FloatingPointError(f"adaptive sampler: {err} (t is log sigma)") from None
        nfe = info.nfe.clone()
    else:
        nfe = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    check_finite(x, 0, s_end)
    denoised = None
    if s[-1] == 0:
        denoised = call(denoiser, x, s_end)
        x = denoised
        nfe += 1
        check_finite(x, 1, 0.0)
    if callback is not None:
        callback({"i": 0, "x": x, "sigma": s[0], "sigma_next": s[-1], "denoised": denoised, "nfe": nfe})
    return x
