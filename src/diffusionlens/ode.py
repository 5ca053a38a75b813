"""Adaptive embedded Runge–Kutta integration with per-sample step-size control.

``solve(f, y0, t0, t1, ...)`` integrates dy/dt = f(t, y, idx) for a batch of independent
problems. Every sample keeps its own time, step size and error estimate (as if integrated alone),
while the right-hand side is evaluated in one batched call over the samples still running, so the
result for a sample does not depend on the other samples in the batch, and no collective
operation happens inside the loop (safe under torchrun when ranks need different step counts).

Methods: Dormand–Prince 5(4) (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.5) and
Bogacki–Shampine 3(2), both first-same-as-last; Hairer's initial step-size heuristic (one extra
evaluation).

Step control (:class:`StepControl`, shared with the exponential pair of
:mod:`diffusionlens.samplers.adaptive`): error in the RMS norm of err / (atol + rtol * max(|y_n|,
|y_{n+1}|)) per sample, accept when it is <= 1, and the step ratio safety * err^(-1/q) clipped to
[fac_min, fac_max] (at most 1 after a rejection), with an optional proportional-integral term
(Gustafsson's PI controller: the ratio also multiplied by (err_prev / err)^(pi / q), which damps the
oscillation of the plain controller when the error estimate is noisy).

Shapes: ``y0`` (batch, ...); ``t0``/``t1`` floats or (batch,) tensors; ``f`` receives ``t`` (b,),
``y`` (b, ...) and ``idx`` (b,), the indices into the batch of the b samples being evaluated (so
per-sample data such as labels or probe vectors can be looked up), and returns (b, ...).

Quadrature components. When part of the state is an integral whose derivative depends on the rest
but never on itself (the log-density accumulator of a likelihood), its values at a stage whose
propagation and error weights are both zero are never used: Dormand–Prince's second stage
(c = 1/5, b_2 = e_2 = 0) only feeds the other stages of the components that drive the flow.
With ``quadrature=True`` ``f`` is called with a fourth argument ``need_quadrature``, False at
those stages, where it may return anything for the quadrature components (and skip their cost);
the result is the same as with every component evaluated at every stage.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from ._util import as_tensor, expand

__all__ = ["Method", "SolveInfo", "StepControl", "solve"]


@dataclass(frozen=True)
class _Tableau:
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]  # higher-order weights (propagated solution)
    e: tuple[float, ...]  # b - b_low, the error weights
    order: int  # order of the error estimate's lower member + 1 sets the exponent


_DOPRI5 = _Tableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    e=(71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40),
    order=5,
)

_BOSH3 = _Tableau(
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    e=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    order=3,
)


class Method(str, enum.Enum):
    """Embedded Runge–Kutta pairs."""

    DOPRI5 = "dopri5"
    BOSH3 = "bosh3"

    @property
    def tableau(self) -> _Tableau:
        return _DOPRI5 if self is Method.DOPRI5 else _BOSH3


@dataclass
class SolveInfo:
    """Per-sample counts: ``nfe`` right-hand-side evaluations, ``accepted`` and ``rejected`` steps."""

    nfe: Tensor
    accepted: Tensor
    rejected: Tensor


def _rms(v: Tensor) -> Tensor:
    return v.flatten(1).pow(2).mean(1).sqrt()


@dataclass(frozen=True)
class StepControl:
    """Per-sample error norm, acceptance and step-size update of an embedded pair.

    ``order`` q: the error estimate is O(h^q) (the lower member's order + 1). ``pi``: weight of the
    integral-of-error term (0 is the plain controller, ~0.4 Gustafsson's PI choice).
    """

    rtol: float
    atol: float
    order: int
    safety: float = 0.9
    fac_min: float = 0.2
    fac_max: float = 10.0
    pi: float = 0.0

    def __post_init__(self):
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"rtol and atol must be > 0, got rtol={self.rtol}, atol={self.atol}")
        if not (0 < self.fac_min <= 1 <= self.fac_max and 0 < self.safety <= 1):
            raise ValueError(f"need 0 < fac_min <= 1 <= fac_max and 0 < safety <= 1, got {self}")

    def norm(self, err: Tensor, y_old: Tensor, y_new: Tensor) -> Tensor:
        """(batch,) float64 RMS of err / (atol + rtol * max(|y_old|, |y_new|)); <= 1 is acceptable."""
        sc = self.atol + self.rtol * torch.maximum(y_old.abs(), y_new.abs())
        return _rms(err / sc).double()

    def update(self, en: Tensor, prev: Tensor | None = None, order: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(ok, factor)`` for error norms ``en`` (and the last accepted ones, ``prev``, for ``pi``).

        ``order``: a per-sample order of the estimate (a method whose order grows as it starts up)
        instead of ``self.order``.
        """
        q = self.order if order is None else order.double()
        ok = en <= 1
        e = en.clamp_min(1e-10)
        fac = self.safety * e ** (-1.0 / q)
        if self.pi and prev is not None:
            fac = fac * (prev.clamp_min(1e-10) / e) ** (self.pi / q)
        fac = torch.clamp(fac, self.fac_min, self.fac_max)
        return ok, torch.where(ok, fac, torch.clamp(fac, max=1.0))

    def unit_first_step(self, span: float) -> float:
        """The step whose local error is the tolerance for a solution varying at unit rate."""
        return min(max(self.rtol, self.atol) ** (1.0 / self.order), span)

    def hairer_first_step(self, call, t: Tensor, y: Tensor, k: Tensor, span: Tensor, direction: Tensor) -> Tensor:
        """Hairer's initial step (*Solving ODEs I*, II.4) per sample; one evaluation of ``call(t, y)``."""
        sc = self.atol + self.rtol * y.abs()
        d0, d1 = _rms(y / sc).double(), _rms(k / sc).double()
        hh = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        hh = torch.minimum(hh, span)
        y1 = y + expand((hh * direction).to(y.dtype), y) * k
        k1 = call(t + hh * direction, y1)
        d2 = _rms((k1 - k) / sc).double() / hh
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(
            dmax <= 1e-15, torch.maximum(torch.full_like(hh, 1e-6), hh * 1e-3), (0.01 / dmax) ** (1 / self.order)
        )
        return torch.minimum(100 * hh, h1)


def check_output(out: Tensor, at: Tensor, idx: Tensor, what: str) -> Tensor:
    """Raise FloatingPointError naming ``what`` at the first sample with a NaN/inf in ``out``."""
    if not bool(torch.isfinite(out).all()):
        bad = (~torch.isfinite(out.flatten(1))).any(1)
        raise FloatingPointError(f"non-finite {what}={at[bad][0].item():.6g} (sample {int(idx[bad][0])})")
    return out


def solve(
    f,
    y0: Tensor,
    t0,
    t1,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: Method | str = Method.DOPRI5,
    h0=None,
    max_steps: int = 10_000,
    quadrature: bool = False,
) -> tuple[Tensor, SolveInfo]:
    """Integrate dy/dt = f(t, y, idx) from t0 to t1 (either direction) for every sample.

    ``quadrature``: call ``f(t, y, idx, need_quadrature)`` (module docstring, "Quadrature components").

    Returns ``(y1, info)``. Raises ``FloatingPointError`` naming the time where a NaN/inf appeared
    and ``RuntimeError`` if a sample needs more than ``max_steps`` steps.
    """
    tab = Method(method).tableau
    ctl = StepControl(rtol, atol, tab.order)
    B = y0.shape[0]
    dev = y0.device
    t0 = as_tensor(t0, like=y0, dtype=torch.float64).expand(B).clone()
    t1 = as_tensor(t1, like=y0, dtype=torch.float64).expand(B).clone()
    if t0.shape != (B,) or t1.shape != (B,):
        raise ValueError(f"t0 and t1 must be scalars or shape ({B},), got {tuple(t0.shape)}, {tuple(t1.shape)}")
    direction = torch.sign(t1 - t0)
    span = (t1 - t0).abs()
    y = y0.clone()
    t = t0.clone()
    nfe = torch.zeros(B, dtype=torch.long, device=dev)
    acc = torch.zeros_like(nfe)
    rej = torch.zeros_like(nfe)
    all_idx = torch.arange(B, device=dev)

    # stages whose values enter neither the propagated solution nor the error estimate, except through
    # the other stages: a quadrature component's derivative is not needed there
    free = {i for i in range(1, len(tab.c)) if tab.b[i] == 0.0 and tab.e[i] == 0.0} if quadrature else set()

    def call(tt: Tensor, yy: Tensor, idx: Tensor, stage: int = 0) -> Tensor:
        out = f(tt.to(y0.dtype), yy, idx, stage not in free) if quadrature else f(tt.to(y0.dtype), yy, idx)
        nfe[idx] += 1
        return check_output(out, tt, idx, "derivative at t")

    done = span == 0
    k_first = torch.zeros_like(y)
    run = all_idx[~done]
    if run.numel():
        k_first[run] = call(t[run], y[run], run)
    # Hairer's initial step (per sample), unless given
    h = torch.zeros(B, dtype=torch.float64, device=dev)
    if h0 is not None:
        h[:] = as_tensor(h0, like=h).abs()
    elif run.numel():
        h[run] = ctl.hairer_first_step(lambda tt, yy: call(tt, yy, run), t[run], y[run], k_first[run],
                                       span[run], direction[run])
    h = torch.minimum(h, span)

    while True:
        run = all_idx[~done]
        if run.numel() == 0:
            break
        if int((acc[run] + rej[run]).max()) >= max_steps:
            raise RuntimeError(
                f"adaptive solver exceeded max_steps={max_steps} (t={t[run][0].item():.6g}); loosen rtol/atol"
            )
        tr, yr, hr, dr = t[run], y[run], h[run], direction[run]
        remaining = (t1[run] - tr).abs()
        last = hr >= remaining * (1 - 1e-12)
        hr = torch.where(last, remaining, hr)
        hs = hr * dr  # signed step, float64
        ks = [k_first[run]]
        for i in range(1, len(tab.c)):
            incr = sum(a * k for a, k in zip(tab.a[i], ks) if a != 0.0)
            yi = yr + expand(hs.to(y.dtype), yr) * incr
            ks.append(call(tr + tab.c[i] * hs, yi, run, i))
        y_new = yr + expand(hs.to(y.dtype), yr) * sum(b * k for b, k in zip(tab.b, ks) if b != 0.0)
        err = expand(hs.to(y.dtype), yr) * sum(e * k for e, k in zip(tab.e, ks) if e != 0.0)
        ok, fac = ctl.update(ctl.norm(err, yr, y_new))
        ia, ir = run[ok], run[~ok]
        y[ia] = y_new[ok]
        t[ia] = torch.where(last[ok], t1[ia], tr[ok] + hs[ok])
        k_first[ia] = ks[-1][ok]  # first-same-as-last
        acc[ia] += 1
        rej[ir] += 1
        h[run] = hr * fac
        done[ia] = last[ok]
    return y, SolveInfo(nfe=nfe, accepted=acc, rejected=rej)
