"""Adaptive-step probability-flow ODE solvers with error control, in log-sigma time.

Conventions: lambda = -log sigma (half the log-SNR), h = lambda_next - lambda (> 0 when sampling),
scale-free x. The PF-ODE ``dx/dsigma = (x - D)/sigma`` is, in tau = log sigma,

    dx / dtau = x - D(x, e^tau),

whose linear part has unit rate at every noise level. Two kinds of solver, both with per-sample
step control (each sample's steps are as if it were solved alone; the denoiser is called on the
samples still running, each at its own sigma):

* ``method="dpm3"`` (default): an exponential Runge–Kutta 3(2) pair. The variation-of-constants
  form ``x_next = e^{-h} x + sigma_next int e^lambda D dlambda`` integrates the linear part exactly,
  and D is approximated from three evaluations at lambda + (0, 1/3, 2/3) h: the third-order
  DPM-Solver-3 step (Lu et al. 2022a, Alg. 2, r1 = 1/3, r2 = 2/3) in data prediction, with the
  second-order step through the first two evaluations as the embedded estimate (the pair of
  k-diffusion's ``dpm_solver_adaptive``). Error control spends steps only on the variation of D,
  never on the exponential growth of the linear part, which an explicit Runge–Kutta method in x
  must resolve at large sigma (where D is nearly constant). 3 NFE per accepted step, 2 per rejected
  one (D at the current point is kept).
* ``method="dopri5"`` / ``"bosh3"``: the generic embedded pairs of :func:`diffusionlens.ode.solve` on
  dx/dtau = x - D.

Error norm (both): per-sample RMS of err / (atol + rtol * max(|x_n|, |x_{n+1}|)); controller
h <- h * clip(0.9 err^(-1/q), 0.2, 10) with q the order of the error estimate + 1 (at most 1 after
a rejection). Integration runs from ``log sigmas[0]`` to the log of the last positive entry; interior
grid points are not used. On a grid ending at 0 a final Tweedie step x = D(x, sigma_last) follows
(1 NFE). An increasing grid integrates data -> noise (encoding).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._util import Choice, expand
from ..ode import Method, StepControl, check_output, solve
from ._common import Callback, call, check_finite, grid_floats

__all__ = ["AdaptiveMethod", "adaptive", "exp_rk32_step", "solve_exp_rk32"]


class AdaptiveMethod(Choice, what="method"):
    """Embedded pairs of the adaptive sampler."""

    DPM3 = "dpm3"  # exponential Runge-Kutta 3(2) in log sigma, data prediction (3 NFE / step)
    DOPRI5 = "dopri5"  # Dormand-Prince 5(4) on dx/dlog(sigma) = x - D (6 NFE / step, FSAL)
    BOSH3 = "bosh3"  # Bogacki-Shampine 3(2) on the same (3 NFE / step, FSAL)

_R1, _R2 = 1.0 / 3.0, 2.0 / 3.0


def exp_rk32_step(denoiser, x: Tensor, d0: Tensor, lam: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """One exponential Runge–Kutta 3(2) step in data prediction (DPM-Solver-3, Lu et al. 2022a Alg. 2).

    Args:
        denoiser: canonical D(x, sigma), sigma a (batch,) tensor.
        x: (batch, ...) at lambda = -log sigma; d0: D(x, sigma) (batch, ...).
        lam, h: (batch,) float64 current lambda and step (negative h integrates towards noise).
    Returns ``(x_high, x_low)`` at lambda + h: the third-order step and the embedded second-order
    one; 2 NFE (at lambda + h/3 and lambda + 2h/3).
    """

    def e(v: Tensor) -> Tensor:  # per-sample float64 coefficient -> broadcastable in x's dtype
        return expand(v.to(x.dtype), x)

    def D(y: Tensor, lm: Tensor) -> Tensor:
        return denoiser(y, torch.exp(-lm).to(y.dtype))

    em1, em2, em = torch.expm1(-_R1 * h), torch.expm1(-_R2 * h), torch.expm1(-h)  # e^{-rh} - 1, float64
    u1 = d0 + e(1.0 + em1) * (x - d0)  # exponential Euler to lambda + h/3
    d1 = D(u1, lam + _R1 * h)
    phi2_2 = em2 / (_R2 * h) + 1.0  # phi_2(r2 h) = (e^{-r2 h} - 1) / (r2 h) + 1
    u2 = d0 + e(1.0 + em2) * (x - d0) + e((_R2 / _R1) * phi2_2) * (d1 - d0)
    d2 = D(u2, lam + _R2 * h)
    base = d0 + e(1.0 + em) * (x - d0)  # e^{-h} x + (1 - e^{-h}) D0
    x_high = base + e((em / h + 1.0) / _R2) * (d2 - d0)  # + phi_2(h) h D' from the node at 2h/3
    x_low = base - e(em / (2.0 * _R1)) * (d1 - d0)  # midpoint-type second-order step through h/3
    return x_high, x_low


def solve_exp_rk32(
    denoiser,
    x: Tensor,
    sigma_start: float,
    sigma_end: float,
    *,
    rtol: float,
    atol: float,
    max_steps: int = 10_000,
    trace: list | None = None,
    control: StepControl | None = None,
) -> tuple[Tensor, Tensor]:
    """Integrate the PF-ODE from sigma_start to sigma_end (> 0) with the exponential RK 3(2) pair.

    Per-sample step control (see the module docstring) by ``control`` (default
    ``StepControl(rtol, atol, 3)``: the plain controller). The first trial step is tol^(1/3) in
    lambda (capped by the span), tol = max(rtol, atol): the step whose local error is tol for a
    denoiser varying at unit rate in log sigma; the controller corrects it from the first estimate.
    ``trace``, if a list, receives one ``(lambda_start, lambda_end, err)`` triple of (accepted,) float64
    tensors per solver iteration: the accepted steps and their error estimates in the tolerance norm
    (used by :func:`diffusionlens.samplers.fitted_grid`).
    Returns ``(x, nfe)`` with nfe (batch,) int64. Raises FloatingPointError naming the sigma of a
    non-finite denoiser output and RuntimeError past ``max_steps`` steps for a sample.
    """
    ctl = StepControl(rtol, atol, 3) if control is None else control
    B, dev = x.shape[0], x.device
    lam0, lam1 = -math.log(sigma_start), -math.log(sigma_end)
    direction = 1.0 if lam1 >= lam0 else -1.0
    lam = torch.full((B,), lam0, dtype=torch.float64, device=dev)
    h = torch.full((B,), ctl.unit_first_step(abs(lam1 - lam0)), dtype=torch.float64, device=dev)
    nfe = torch.zeros(B, dtype=torch.long, device=dev)
    steps = torch.zeros(B, dtype=torch.long, device=dev)
    done = torch.full((B,), lam0 == lam1, dtype=torch.bool, device=dev)
    prev = torch.ones(B, dtype=torch.float64, device=dev)  # last accepted error norm (PI control)
    x = x.clone()
    d0 = torch.empty_like(x)
    fresh = torch.zeros(B, dtype=torch.bool, device=dev)  # d0 holds D at the current point

    def counted(y: Tensor, sigma: Tensor, idx: Tensor) -> Tensor:
        out = denoiser(y, sigma)
        nfe[idx] += 1
        return check_output(out, sigma, idx, "denoiser output at sigma")

    while True:
        run = torch.nonzero(~done)[:, 0]
        if run.numel() == 0:
            break
        if int(steps[run].max()) >= max_steps:
            raise RuntimeError(
                f"adaptive solver exceeded max_steps={max_steps} (sigma={math.exp(-lam[run][0].item()):.6g}); "
                f"loosen rtol/atol"
            )
        need = run[~fresh[run]]
        if need.numel():
            d0[need] = counted(x[need], torch.exp(-lam[need]).to(x.dtype), need)
            fresh[need] = True
        lr, xr = lam[run], x[run]
        remaining = (lam1 - lr) * direction
        last = h[run] >= remaining * (1 - 1e-12)
        hr = torch.where(last, remaining, h[run])
        hs = hr * direction

        def D(y: Tensor, sigma: Tensor, _run=run) -> Tensor:
            return counted(y, sigma, _run)

        x_high, x_low = exp_rk32_step(D, xr, d0[run], lr, hs)
        err = ctl.norm(x_high - x_low, xr, x_high)
        ok, fac = ctl.update(err, prev[run])
        ia = run[ok]
        if trace is not None:
            trace.append((lr[ok].clone(), lr[ok] + hs[ok], err[ok]))
        x[ia] = x_high[ok]
        lam[ia] = torch.where(last[ok], torch.full_like(lr[ok], lam1), lr[ok] + hs[ok])
        fresh[ia] = False
        prev[ia] = err[ok]
        steps[run] += 1
        h[run] = hr * fac
        done[ia] = last[ok]
    return x, nfe


def adaptive(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    generator=None,
    callback: Callback | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    method: AdaptiveMethod | Method | str = AdaptiveMethod.DPM3,
    max_steps: int = 10_000,
) -> Tensor:
    """Adaptive PF-ODE solver with error control in log sigma (exponential RK 3(2) by default).

    Args:
        denoiser: canonical D(x, sigma), sigma a (batch,) tensor (called on the samples still running).
        x: (batch, ...) at sigmas[0]. sigmas: grid whose first and last positive entries are the ends.
        rtol, atol: per-sample tolerances on x in the RMS norm.
        method: ``"dpm3"`` (exponential RK 3(2), default), ``"dopri5"`` or ``"bosh3"`` (explicit pairs
            on dx/dlog(sigma) = x - D, :func:`diffusionlens.ode.solve`).
    Returns x at sigmas[-1]. The per-sample NFE (including the final denoising step) is passed to
    ``callback`` under the key ``"nfe"`` (tensor (batch,)); it varies from sample to sample.
    """
    method = AdaptiveMethod.parse(method.value if isinstance(method, Method) else method)
    s = grid_floats(sigmas)
    s_end = s[-1] if s[-1] > 0 else s[-2]
    t0, t1 = math.log(s[0]), math.log(s_end)

    if t0 == t1:
        nfe = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    elif method is AdaptiveMethod.DPM3:
        try:
            x, nfe = solve_exp_rk32(denoiser, x, s[0], s_end, rtol=rtol, atol=atol, max_steps=max_steps)
        except FloatingPointError as err:
            raise FloatingPointError(f"adaptive sampler: {err}") from None
    else:

        def f(t: Tensor, y: Tensor, idx: Tensor) -> Tensor:
            return y - denoiser(y, torch.exp(t))

        try:
            x, info = solve(f, x, t0, t1, rtol=rtol, atol=atol, method=Method(method.value), max_steps=max_steps)
        except FloatingPointError as err:
            raise FloatingPointError(f"adaptive sampler: {err} (t is log sigma)") from None
        nfe = info.nfe.clone()
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
