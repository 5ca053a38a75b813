"""Adaptive-step probability-flow ODE solvers with error control, in log-sigma time.

Conventions: lambda = -log sigma (half the log-SNR), h = lambda_next - lambda (> 0 when sampling),
scale-free x. The PF-ODE ``dx/dsigma = (x - D)/sigma`` is, in tau = log sigma,

    dx / dtau = x - D(x, e^tau),

whose linear part has unit rate at every noise level. Three solvers, all with per-sample step
control (each sample's steps are as if it were solved alone; the denoiser is called on the samples
still running, each at its own sigma):

* ``method="pc"`` (default): an exponential predictor-corrector in data prediction with variable
  steps, one evaluation of D per step. The same variation-of-constants form as below, with D
  replaced by the polynomial in lambda through the last known values of D: the predictor
  extrapolates the cubic through D at the current and three previous points, D is evaluated at the
  predicted point, and the corrector integrates the cubic through that value, the current and two
  previous ones (exponential Adams-Bashforth / Adams-Moulton, as in the multistep DPM-Solver++ and
  UniPC, here with steps chosen by error control; Newton form, so the nodes may be spaced freely).
  The corrected state is propagated; D is not evaluated again at it, so the next step starts from D
  at the predicted point (PEC mode). The error estimate is corrector minus predictor (Milne's
  device), of order min(known points + 2, 5): the method starts as a 1(2) pair and reaches its 4(5)
  form after three steps. Every step, accepted or rejected, costs one evaluation, against three for
  the pair below; the steps are smaller but far fewer evaluations are spent for the same error
  (benchmarks/adaptive.md, which also compares the quadratic form, ``points=3``). Controller: the
  shared :class:`diffusionlens.ode.StepControl` with a PI term, which keeps a multistep method's
  step sequence smooth (its error constants depend on step ratios), and a low safety factor: a
  rejected step wastes one evaluation here, but a step that only just passes leaves an error the
  next steps' extrapolation carries on.
* ``method="dpm3"``: an exponential Runge–Kutta 3(2) pair. The variation-of-constants
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

Error norm (all): per-sample RMS of err / (atol + rtol * max(|x_n|, |x_{n+1}|)); controller
(:class:`diffusionlens.ode.StepControl`, one for every adaptive solver of the package)
h <- h * clip(safety err^(-1/q) (err_prev / err)^(pi/q), 0.2, 10) with q the order of the error
estimate (at most 1 after a rejection); ``pc`` uses safety 0.7 and pi 0.6 (first trial step
tol^(1/3) in lambda), ``dpm3`` and the explicit pairs safety 0.9 without the PI term.
Integration runs from ``log sigmas[0]`` to the log of the last positive entry; interior grid
points are not used. On a grid ending at 0 a final Tweedie step x = D(x, sigma_last) follows
(1 NFE). An increasing grid integrates data -> noise (encoding).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._util import Choice, expand
from ..ode import Method, StepControl, check_output, solve
from ._common import Callback, call, check_finite, grid_floats

__all__ = ["AdaptiveMethod", "adaptive", "exp_pc_step", "exp_rk32_step", "solve_exp_pc", "solve_exp_rk32"]


class AdaptiveMethod(Choice, what="method"):
    """Embedded pairs of the adaptive sampler."""

    PC = "pc"  # exponential predictor-corrector, variable steps, data prediction (1 NFE / step)
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


class _Steps:
    """Per-sample step bookkeeping shared by the exponential solvers: position ``lam`` in lambda = -log
    sigma, trial step ``h``, evaluations ``nfe``, accepted-or-not step count, ``done``, and the last
    accepted error norm ``prev`` (PI control). All (batch,) tensors, updated in place."""

    def __init__(self, B: int, dev, sigma_start: float, sigma_end: float, ctl: StepControl, max_steps: int):
        lam0, self.lam1 = -math.log(sigma_start), -math.log(sigma_end)
        self.direction = 1.0 if self.lam1 >= lam0 else -1.0
        self.max_steps = max_steps
        self.lam = torch.full((B,), lam0, dtype=torch.float64, device=dev)
        self.h = torch.full((B,), ctl.unit_first_step(abs(self.lam1 - lam0)), dtype=torch.float64, device=dev)
        self.nfe = torch.zeros(B, dtype=torch.long, device=dev)
        self.steps = torch.zeros(B, dtype=torch.long, device=dev)
        self.done = torch.full((B,), lam0 == self.lam1, dtype=torch.bool, device=dev)
        self.prev = torch.ones(B, dtype=torch.float64, device=dev)

    def next(self):
        """The samples still running and their trial steps: ``(run, lam, last, |h|, signed h)``, the step cut
        to land on the end where it would pass it (``last``); None when every sample is done."""
        run = torch.nonzero(~self.done)[:, 0]
        if run.numel() == 0:
            return None
        if int(self.steps[run].max()) >= self.max_steps:
            raise RuntimeError(
                f"adaptive solver exceeded max_steps={self.max_steps} "
                f"(sigma={math.exp(-self.lam[run][0].item()):.6g}); loosen rtol/atol"
            )
        lr = self.lam[run]
        remaining = (self.lam1 - lr) * self.direction
        last = self.h[run] >= remaining * (1 - 1e-12)
        hr = torch.where(last, remaining, self.h[run])
        return run, lr, last, hr, hr * self.direction

    def advance(self, run: Tensor, accepted: Tensor, err: Tensor, h_next: Tensor, finished: Tensor) -> None:
        """After a trial of ``run``: the ``accepted`` samples' error norms and whether they reached the end,
        every trial's next step."""
        self.prev[accepted] = err
        self.steps[run] += 1
        self.h[run] = h_next
        self.done[accepted] = finished


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
    st = _Steps(B, dev, sigma_start, sigma_end, ctl, max_steps)
    lam, nfe, prev, lam1 = st.lam, st.nfe, st.prev, st.lam1
    x = x.clone()
    d0 = torch.empty_like(x)
    fresh = torch.zeros(B, dtype=torch.bool, device=dev)  # d0 holds D at the current point

    def counted(y: Tensor, sigma: Tensor, idx: Tensor) -> Tensor:
        out = denoiser(y, sigma)
        nfe[idx] += 1
        return check_output(out, sigma, idx, "denoiser output at sigma")

    while (trial := st.next()) is not None:
        run, lr, last, hr, hs = trial
        need = run[~fresh[run]]
        if need.numel():
            d0[need] = counted(x[need], torch.exp(-lam[need]).to(x.dtype), need)
            fresh[need] = True
        xr = x[run]

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
        st.advance(run, ia, err[ok], hr * fac, last[ok])
    return x, nfe


def _exp_integrals(h: Tensor, m: int) -> list[Tensor]:
    """I_j = int_0^h e^{-(h-s)} s^j ds for j = 0..m (float64, h of either sign).

    The recursion I_j = h^j - j I_{j-1} loses digits to cancellation when |h| is small; there the
    series I_j = j! h^(j+1) sum_k (-h)^k / (j + 1 + k)! is used instead (20 terms: exact in float64
    for |h| < 1/2).
    """
    rec = [-torch.expm1(-h)]
    for j in range(1, m + 1):
        rec.append(h**j - j * rec[-1])
    k = torch.arange(20, dtype=h.dtype, device=h.device)
    inv_fact = torch.tensor([[1.0 / math.factorial(j + 1 + i) for i in range(20)] for j in range(m + 1)],
                            dtype=h.dtype, device=h.device)
    series = ((-h[:, None]) ** k) @ inv_fact.T  # (batch, m + 1)
    small = h.abs() < 0.5
    return [torch.where(small, math.factorial(j) * h ** (j + 1) * series[:, j], rec[j]) for j in range(m + 1)]


def _exp_quad(ints: list[Tensor], nodes: list[Tensor], vals: list[Tensor], degree: Tensor) -> Tensor:
    """int_0^h e^{-(h-s)} P(s) ds, P the polynomial through (nodes[i], vals[i]) for i <= ``degree``.

    Newton form: P = sum_k f[n_0..n_k] w_k(s), w_k = prod_{i<k} (s - n_i); cutting the sum after term
    ``degree`` (per sample, (batch,)) interpolates the first ``degree + 1`` nodes only, so samples with
    a shorter history share one computation. The weight of term k is sum_j c_kj I_j with c_kj the
    monomial coefficients of w_k (per sample, float64).
    """

    def e(v: Tensor) -> Tensor:
        return expand(v.to(vals[0].dtype), vals[0])

    dd, out = list(vals), vals[0] * 0
    poly = [torch.ones_like(nodes[0])]  # monomial coefficients of w_k, lowest first
    for k in range(len(nodes)):
        if k:
            dd = [(dd[i + 1] - dd[i]) / e(nodes[i + k] - nodes[i]) for i in range(len(dd) - 1)]
        weight = sum(c * ints[j] for j, c in enumerate(poly))
        out = out + e(torch.where(degree >= k, weight, torch.zeros_like(weight))) * dd[0]
        poly = [(poly[j - 1] if j else 0) - (poly[j] * nodes[k] if j < len(poly) else 0) for j in range(len(poly) + 1)]
    return out


def exp_pc_step(x: Tensor, hs: Tensor, ds: tuple[Tensor, ...], back: tuple[Tensor, ...], hist: Tensor,
                denoise) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step of the exponential predictor-corrector in data prediction (1 evaluation of D).

    ``ds`` = (D_n, D_{n-1}, ..., D_{n-k+1}) at lambda offsets (0, back[0], ..., back[k-2]) (negative
    when sampling), ``hist`` (batch,) the number of previous points available. The predictor
    integrates the polynomial through the min(hist + 1, k) known values of D, the corrector the one
    through D(x_pred) at h, D_n and the previous ones, of degree min(hist + 1, k - 1) (one above the
    predictor's while the history is short, the same once it is full). Returns
    ``(x_corr, x_pred, D(x_pred), order)``, order (batch,) that of the error estimate x_corr - x_pred:
    min(hist, k - 1) + 2.
    """
    k = len(ds)
    ints = _exp_integrals(hs, k - 1)
    base = expand(torch.exp(-hs).to(x.dtype), x) * x
    # stand-in nodes where the history is missing keep the divided differences finite (their terms are
    # cut, but 0 * inf would not be): (i + 1) h lies beyond the new point, on the side no history reaches
    nodes = [torch.zeros_like(hs)] + [torch.where(hist >= i, back[i - 1], (i + 1) * hs) for i in range(1, k)]
    degree = torch.clamp(hist, max=k - 1)
    x_pred = base + _exp_quad(ints, nodes, list(ds), degree)
    d_pred = denoise(x_pred)
    x_corr = base + _exp_quad(ints, [nodes[0], hs] + nodes[1:k - 1], [ds[0], d_pred] + list(ds[1:k - 1]),
                              torch.clamp(hist + 1, max=k - 1))
    return x_corr, x_pred, d_pred, degree + 2


def solve_exp_pc(
    denoiser,
    x: Tensor,
    sigma_start: float,
    sigma_end: float,
    *,
    rtol: float,
    atol: float,
    points: int = 4,
    max_steps: int = 10_000,
    trace: list | None = None,
    control: StepControl | None = None,
) -> tuple[Tensor, Tensor]:
    """Integrate the PF-ODE from sigma_start to sigma_end (> 0) with the exponential predictor-corrector.

    One evaluation of D per step, accepted or not (module docstring). ``points``: the most values of D
    a polynomial passes through (4: cubic, the error estimate reaching order 5; 3: quadratic, order 4).
    ``control`` defaults to ``StepControl(rtol, atol, 3, safety=0.7, pi=0.6)``; its order sets the
    first trial step, tol^(1/3) in lambda, and is replaced by each step's (2, 3, ... as the history
    grows). ``trace`` as in :func:`solve_exp_rk32` (accepted steps; each trial costs one evaluation,
    so the rejected ones number nfe - 1 - accepted).
    Returns ``(x, nfe)`` with nfe (batch,) int64; errors as :func:`solve_exp_rk32`.
    """
    if not (isinstance(points, int) and 2 <= points <= 6):
        raise ValueError(f"points must be an integer in [2, 6], got {points!r}")
    ctl = StepControl(rtol, atol, 3, safety=0.7, pi=0.6) if control is None else control
    B, dev = x.shape[0], x.device
    st = _Steps(B, dev, sigma_start, sigma_end, ctl, max_steps)
    lam, nfe, done, prev, lam1 = st.lam, st.nfe, st.done, st.prev, st.lam1
    hist = torch.zeros_like(nfe)
    back = torch.zeros(points - 1, B, dtype=torch.float64, device=dev)  # lambda offsets of D_{n-1}, ... from here
    x = x.clone()
    if done.all():
        return x, nfe
    s0 = torch.full((B,), sigma_start, dtype=x.dtype, device=dev)
    d0 = check_output(denoiser(x, s0), s0, torch.arange(B, device=dev), "denoiser output at sigma")
    ds = torch.stack([d0] * points)  # D_n, D_{n-1}, ...
    nfe += 1
    while (trial := st.next()) is not None:
        run, lr, last, hr, hs = trial
        xr = x[run]
        sigma_next = torch.exp(-(lr + hs))

        def denoise(y: Tensor, _run=run, _sigma=sigma_next) -> Tensor:
            nfe[_run] += 1
            return check_output(denoiser(y, _sigma.to(y.dtype)), _sigma, _run, "denoiser output at sigma")

        x_corr, x_pred, d_pred, order = exp_pc_step(xr, hs, tuple(ds[:, run]), tuple(back[:, run]), hist[run], denoise)
        err = ctl.norm(x_corr - x_pred, xr, x_corr)
        ok, fac = ctl.update(err, prev[run], order)
        ia, hk = run[ok], hs[ok]
        if trace is not None:
            trace.append((lr[ok].clone(), lr[ok] + hk, err[ok]))
        x[ia] = x_corr[ok]
        ds[1:, ia] = ds[:-1, ia].clone()
        ds[0, ia] = d_pred[ok]
        back[1:, ia] = back[:-1, ia] - hk
        back[0, ia] = -hk
        lam[ia] = torch.where(last[ok], torch.full_like(lr[ok], lam1), lr[ok] + hk)
        hist[ia] += 1
        st.advance(run, ia, err[ok], hr * fac, last[ok])
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
    method: AdaptiveMethod | Method | str = AdaptiveMethod.PC,
    max_steps: int = 10_000,
) -> Tensor:
    """Adaptive PF-ODE solver with error control in log sigma (exponential predictor-corrector by default).

    Args:
        denoiser: canonical D(x, sigma), sigma a (batch,) tensor (called on the samples still running).
        x: (batch, ...) at sigmas[0]. sigmas: grid whose first and last positive entries are the ends.
        rtol, atol: per-sample tolerances on x in the RMS norm.
        method: ``"pc"`` (exponential predictor-corrector, default), ``"dpm3"`` (exponential RK 3(2)),
            ``"dopri5"`` or ``"bosh3"`` (explicit pairs
            on dx/dlog(sigma) = x - D, :func:`diffusionlens.ode.solve`).
    Returns x at sigmas[-1]. The per-sample NFE (including the final denoising step) is passed to
    ``callback`` under the key ``"nfe"`` (tensor (batch,)); it varies from sample to sample.
    """
    method = AdaptiveMethod.parse(method.value if isinstance(method, Method) else method)
    s = grid_floats(sigmas)
    s_end = s[-1] if s[-1] > 0 else s[-2]
    t0, t1 = math.log(s[0]), math.log(s_end)

    exponential = method in (AdaptiveMethod.PC, AdaptiveMethod.DPM3)
    if t0 == t1:
        nfe = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    else:
        try:
            x, nfe = _solve(denoiser, x, method, s[0], s_end, rtol=rtol, atol=atol, max_steps=max_steps)
        except FloatingPointError as err:
            where = "" if exponential else " (t is log sigma)"
            raise FloatingPointError(f"adaptive sampler: {err}{where}") from None
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


def _solve(denoiser, x: Tensor, method: AdaptiveMethod, sigma_start: float, sigma_end: float, **tolerances):
    """x at ``sigma_end`` and the per-sample NFE from the solver of ``method``: the exponential ones in lambda,
    the explicit pairs of :func:`diffusionlens.ode.solve` on dx/dlog(sigma) = x - D."""
    if method in (AdaptiveMethod.PC, AdaptiveMethod.DPM3):
        solver = solve_exp_pc if method is AdaptiveMethod.PC else solve_exp_rk32
        return solver(denoiser, x, sigma_start, sigma_end, **tolerances)

    def f(t: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        return y - denoiser(y, torch.exp(t))

    x, info = solve(f, x, math.log(sigma_start), math.log(sigma_end), method=Method(method.value), **tolerances)
    return x, info.nfe.clone()
