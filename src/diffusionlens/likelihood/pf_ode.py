"""Exact log-likelihood through the probability-flow ODE (the flow perspective).

Conventions (see ``docs/notation.md``): ``x_hat = x0 + sigma n`` is the scale-free state, ``D(x_hat,
sigma)`` the canonical denoiser; t = 0 is clean. In the time variable ``u = log sigma`` the
probability-flow ODE of every process is

    d x_hat / du = v(x_hat, u) = x_hat - D(x_hat, e^u),        div v = d - tr(dD/dx_hat),

and the instantaneous change of variables (Chen et al. 2018; Song et al. 2021, app. D.2) gives,
for the marginal density p_sigma of x_hat,

    log p_{sigma_min}(x) = log p_{sigma_max}(x_hat(u_max)) + d (u_max - u_min) - int tr(dD/dx_hat) du.

``log sigma`` is the natural variable: the right-hand side stays O(|x_hat|) over the whole range,
so an adaptive solver takes steps of about equal length from sigma = 0.002 to 80, where an
integration in sigma needs tiny steps near sigma_min. The constant ``d (u_max - u_min)`` is added
in closed form; only the trace is integrated, in float64, together with the state: the augmented
state of :func:`diffusionlens.ode.solve` is (y flattened, one accumulator per trace estimate), where
y = x_hat / sqrt(1 + sigma^2) is x_hat in the variance-preserving scale,

    dy/du = y / (1 + sigma^2) - D(x_hat, sigma) / sqrt(1 + sigma^2).

x_hat grows like sigma at large sigma, y stays O(1) over the whole range, and the solver's error
control on y takes fewer steps for the same error on the oracle (benchmarks/likelihood.md). Rescaling the state is
a change of coordinates for the solver only: the log-density is still that of x_hat, and the latent
is returned as x_hat = y sqrt(1 + sigma_max^2).

The prior term replaces the unknown p_{sigma_max} by a Gaussian, by default N(0, sigma_max^2 I)
(:func:`gaussian_prior` gives the moment-matched N(mu, (sigma_max^2 + var) I) too). With an oracle the
error of that replacement is ``oracle.log_prob(latent, sigma_max) - prior(latent)``, reported on its
own (:func:`prior_gap`).

Scale. A process with s(t) != 1 has x_t = s x_hat, a linear map with Jacobian s^d, so
``log p_{x_t}(x) = log p_{x_hat}(x / s) - d log s``; with ``process=`` the input is read as x_t at
the time of sigma_min and that term is added exactly. The latent is returned in x_hat units.

Divergence. ``exact``: tr(dD/dx_hat) from d vector-Jacobian products, one forward and d backward
passes batched by vmap (``is_grads_batched``), or one forward and one backward over d stacked
copies of the batch (for d <= 4, where vmap's fixed cost dominates, and for a denoiser whose
backward vmap cannot batch): about d backward passes, the default up to ``EXACT_MAX_DIM`` dimensions
(:func:`default_divergence`). Its cost grows
like d times that of one probe: a black-box Jacobian's exact trace needs d products. The trace is
a quadrature along the path (no derivative depends on it), so at Dormand–Prince's second stage,
whose weights in the step and in its error estimate are zero, only D is evaluated
(:func:`diffusionlens.ode.solve`'s ``quadrature``): one trace in six saved, the result unchanged up to
rounding (bit-identical when D comes from the same batched forward; with stacked copies the forward over
m x b rows may round differently from the one over b rows).
``hutchinson``: E[e^T J e] = tr J for probes with E[e e^T] = I (Hutchinson 1989;
FFJORD); ``probes`` P probes per sample, all P products in one call (stacked copies by default),
drawn once per sample and held fixed along the trajectory (so the integrand is smooth and the
solver's error control works); each probe gets its own accumulator, so the P per-probe
log-likelihoods are i.i.d. given x and their spread gives an honest standard error.

Variance reduction ("rotating" probes, the default). With a probe fixed along the path the errors
e^T J(u) e - tr J(u) at different noise levels are strongly correlated and add up coherently. A
rotating probe stays smooth (so the adaptive solver is not disturbed) but decorrelates: each probe
is sqrt(d) times a unit vector that moves along log sigma through ``turns + 1`` orthonormal
directions a_0, a_1, ... (a Haar-random orthonormal frame per probe), on [k, k + 1] (in units of the
log-sigma range / turns) as cos(pi/2 g) a_k + sin(pi/2 g) a_{k+1}, g the C2 quintic smoothstep of
the fraction. At every u the probe is uniform on the sphere of radius sqrt(d), so E[e e^T] = I (unbiased),
e^T e = d exactly (the identity part of J costs no variance, unlike Gaussian probes, and a J near a
multiple of I is estimated almost exactly, unlike Rademacher probes when J is rotated), and the
integrated error behaves like an average over about ``turns`` independent probes for the price of
one. The per-probe estimates stay i.i.d. given x, so the standard error is unchanged in meaning.
Rademacher probes have variance 2 sum_{i!=j} J_ij^2,
Gaussian ones 2 ||J||_F^2; the identity part of the divergence is exact, never estimated.
Orthogonal probes (scaled columns of a Haar-random orthonormal matrix) are also unbiased and exact
when P = d; their reported standard error treats them as independent, so it is conservative.

Shapes: ``x`` (batch, *data_shape) of any rank; outputs (batch,) in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._util import Choice, as_sigma, as_tensor
from ..ode import Method, solve
from ..processes import Process
from .probes import Probe, draw_probes, draw_rotating, rotating_probe

__all__ = [
    "Divergence",
    "Probe",
    "LikelihoodInfo",
    "log_likelihood",
    "gaussian_prior",
    "prior_gap",
    "draw_probes",
    "draw_rotating",
    "rotating_probe",
    "trace_jacobian",
    "EXACT_MAX_DIM",
    "default_divergence",
]

EXACT_MAX_DIM = 64
"""Up to this many dimensions ``divergence=None`` means the exact trace (its cost grows like d)."""


class Divergence(Choice, what="divergence"):
    """How tr(dD/dx_hat) is computed."""

    EXACT = "exact"
    HUTCHINSON = "hutchinson"


def default_divergence(d: int) -> Divergence:
    """The divergence used when none is asked for: exact up to ``EXACT_MAX_DIM`` dimensions, else Hutchinson.

    The one place this choice is made; every caller that picks a divergence for the user calls it.
    """
    if not (isinstance(d, int) and d >= 1):
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    return Divergence.EXACT if d <= EXACT_MAX_DIM else Divergence.HUTCHINSON


@dataclass(frozen=True)
class LikelihoodInfo:
    """Diagnostics of :func:`log_likelihood` (all per sample).

    Attributes:
        nfe: (batch,) right-hand-side evaluations; each is one denoiser forward and ``copies``
            batched backward passes (d for the exact trace, P for Hutchinson).
        copies: the number of vector-Jacobian products per evaluation.
        stderr: (batch,) standard error of the estimate in nats (0 for the exact divergence).
        per_probe: (batch, P) the log-likelihood with each probe alone (Hutchinson), or (batch, 1).
        latent: (batch, *data_shape) x_hat at sigma_max (float64).
        prior_logp: (batch,) log prior(latent).
        delta_logp: (batch,) log p_{sigma_min}(x_hat) - log prior(latent), the change of variables.
        log_scale: (batch,) the -d log s(sigma_min) term (0 without a process).
    """

    nfe: Tensor
    copies: int
    stderr: Tensor
    per_probe: Tensor
    latent: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    log_scale: Tensor


def gaussian_prior(sigma_max: float, mean=0.0, data_var: float = 0.0) -> Callable[[Tensor], Tensor]:
    """The prior log N(z; mean, (sigma_max^2 + data_var) I) over x_hat at sigma_max, as a function of z.

    ``data_var = 0`` and ``mean = 0`` is the usual N(0, sigma_max^2 I); the data's mean and mean
    per-coordinate variance give the moment-matched Gaussian, whose error vanishes faster in sigma_max.
    """
    var = float(sigma_max) ** 2 + float(data_var)
    if not (math.isfinite(var) and var > 0):
        raise ValueError(f"prior variance must be finite and > 0, got sigma_max={sigma_max}, data_var={data_var}")

    def logp(z: Tensor) -> Tensor:
        m = as_tensor(mean, like=z)
        r = (z - m).flatten(1)
        d = r.shape[1]
        return -0.5 * (r.pow(2).sum(1) / var + d * math.log(2 * math.pi * var))

    return logp


def prior_gap(log_prob: Callable[[Tensor, float], Tensor], latent: Tensor, sigma_max: float, prior=None) -> Tensor:
    """log p_{sigma_max}(latent) - prior(latent): the error the Gaussian prior adds to a log-likelihood.

    ``log_prob(z, sigma)`` is the exact noisy log-density (e.g. ``oracle.log_prob``); returns (batch,).
    """
    prior = prior if prior is not None else gaussian_prior(sigma_max)
    return log_prob(latent, sigma_max) - prior(latent)


def _index_cond(cond: dict, idx: Tensor, copies: int, B: int) -> dict:
    """Per-sample conditioning (tensors with leading dim B) restricted to ``idx`` and tiled ``copies`` times."""
    out = {}
    for k, v in cond.items():
        if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == B:
            v = v[idx]
            out[k] = v.repeat((copies,) + (1,) * (v.ndim - 1))
        else:
            out[k] = v
    return out


def _quadratic_forms(denoiser, x: Tensor, sigma: Tensor, vecs: Tensor, cond: dict, tiled_cond: dict | None = None):
    """D(x) and q_j = <v_j, J v_j> for J = dD/dx at each sample, from m vector-Jacobian products.

    ``x`` (b, *shape), ``sigma`` (b,), ``vecs`` (m, b, *shape). Returns D (b, *shape) and q (m, b).
    One forward at batch b, then the m backward passes batched by ``is_grads_batched`` (vmap over
    the cotangents). If the denoiser's backward cannot be vmapped, ``tiled_cond`` (the conditioning
    tiled m times) is used for the fallback: m stacked copies of the batch in one forward and one
    backward; since the samples of a batch are independent, the gradient of sum_j <v_j, D(x_j)>
    with respect to copy j is J^T v_j.
    """
    m, b = vecs.shape[0], x.shape[0]
    if tiled_cond is None:
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            out = denoiser(xg, sigma, **cond)
            if out.shape != xg.shape:
                raise ValueError(f"denoiser output shape {tuple(out.shape)} differs from its input's {tuple(xg.shape)}")
            if m == 1:
                (g,) = torch.autograd.grad(out, xg, grad_outputs=vecs[0])
                g = g[None]
            else:
                (g,) = torch.autograd.grad(out, xg, grad_outputs=vecs, is_grads_batched=True)
        return out.detach(), (g * vecs).reshape(m, b, -1).sum(-1)
    with torch.enable_grad():
        xr = x.detach().unsqueeze(0).expand((m,) + tuple(x.shape)).reshape((m * b,) + tuple(x.shape[1:]))
        xr = xr.clone().requires_grad_(True)
        out = denoiser(xr, sigma.repeat(m), **tiled_cond)
        if out.shape != xr.shape:
            raise ValueError(f"denoiser output shape {tuple(out.shape)} differs from its input's {tuple(xr.shape)}")
        vr = vecs.reshape(xr.shape)
        (g,) = torch.autograd.grad((out * vr).sum(), xr)
    q = (g * vr).reshape(m, b, -1).sum(-1)
    return out.detach().reshape((m,) + tuple(x.shape))[0], q


class _VJP:
    """Batched vector-Jacobian products, falling back once for good to stacked copies if vmap fails."""

    def __init__(self, stacked: bool = False):
        self.stacked = stacked

    def __call__(self, denoiser, x, sigma, vecs, cond_of):
        """``cond_of(copies)`` gives the conditioning for ``copies`` stacked copies of the batch."""
        if not self.stacked:
            try:
                return _quadratic_forms(denoiser, x, sigma, vecs, cond_of(1))
            except (RuntimeError, NotImplementedError):
                # an op without a batching rule for its backward (e.g. custom autograd functions)
                self.stacked = True
        return _quadratic_forms(denoiser, x, sigma, vecs, cond_of(1), cond_of(vecs.shape[0]))


def trace_jacobian(denoiser, x: Tensor, sigma, *, chunk: int | None = None, cond: dict | None = None):
    """Exact tr(dD/dx_hat) per sample (batch,) and D (batch, *shape), from d vector-Jacobian products.

    The d basis directions are taken ``chunk`` at a time (default all d): one forward and a batched
    backward per chunk.
    """
    sigma = as_sigma(sigma, x)
    cond = cond or {}
    b, shape = x.shape[0], tuple(x.shape[1:])
    d = math.prod(shape)
    chunk = d if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    tr = torch.zeros(b, dtype=torch.float64, device=x.device)
    D = None
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    vjp = _VJP()
    idx = torch.arange(b, device=x.device)
    for lo in range(0, d, chunk):
        hi = min(d, lo + chunk)
        vecs = eye[lo:hi, None, :].expand(hi - lo, b, d).reshape((hi - lo, b) + shape)
        Dc, q = vjp(denoiser, x, sigma, vecs, lambda k: _index_cond(cond, idx, k, b))
        D = Dc if D is None else D
        tr += q.sum(0).double()
    return tr, D


def log_likelihood(
    denoiser,
    x: Tensor,
    *,
    sigma_min: float,
    sigma_max: float,
    divergence: Divergence | str | None = None,
    probes: int = 4,
    probe: Probe | str = Probe.ROTATING,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    method: Method | str = Method.DOPRI5,
    generator: torch.Generator | None = None,
    process: Process | None = None,
    prior: Callable[[Tensor], Tensor] | None = None,
    chunk: int | None = None,
    cond: dict | None = None,
    stacked: bool | None = None,
    turns: int = 32,
    max_steps: int = 10_000,
    return_info: bool = False,
):
    """log p_{sigma_min}(x) in nats, by the probability-flow ODE from sigma_min to sigma_max (module docstring).

    Args:
        denoiser: canonical denoiser ``D(x_hat, sigma, **cond)``; an oracle's ``denoise`` gives the exact ODE.
        x: (batch, *data_shape) points, x_hat at sigma_min (or x_t of ``process`` there).
        sigma_min, sigma_max: the integration range, 0 < sigma_min < sigma_max. For clean data
            take sigma_min small: the result is the density of x0 + sigma_min n, which tends to
            that of x0 as sigma_min -> 0.
        divergence: ``"exact"`` or ``"hutchinson"``; default :func:`default_divergence` (d).
        probes, probe: number and kind (``"rotating"``, ``"rademacher"``, ``"gaussian"``,
            ``"orthogonal"``) of Hutchinson probes per sample.
        rtol, atol: tolerances of the adaptive solver on the state x_hat / sqrt(1 + sigma^2) (with the
            exact trace its accumulator is weighted so that its error is controlled as tightly as that
            of the state, not diluted by d).
        method: embedded RK pair of :func:`diffusionlens.ode.solve`.
        generator: randomness of the probes (only used by Hutchinson).
        process: if given, ``x`` is x_t = s x_hat at the time of sigma_min, and -d log s is added.
        prior: log-density of x_hat at sigma_max, (batch, *shape) -> (batch,); default N(0, sigma_max^2 I).
        chunk: at most this many vector-Jacobian products per denoiser call (memory bound for the exact trace).
        stacked: evaluate the products on stacked copies of the batch (one forward over m * batch rows)
            instead of one forward and a vmapped backward. Default: stacked for Hutchinson and for the exact
            trace when d <= 4, vmapped otherwise; the vmapped form falls back to stacked copies when vmap
            fails.
        cond: conditioning keyword arguments for the denoiser; tensors with leading dim batch are per sample.
        turns: ``"rotating"`` probes only: how many quarter turns each probe makes along the path
            (it visits ``turns + 1`` orthonormal directions; capped at d - 1). More turns lower the
            single-probe error until the rotation outruns the solver's steps (benchmarks/likelihood.md).
        return_info: also return a :class:`LikelihoodInfo`.

    Returns:
        (batch,) float64 log-likelihoods, and the info if requested.
    """
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    div = _check_request(x, sigma_min, sigma_max, divergence, probes, turns)
    B, shape = x.shape[0], tuple(x.shape[1:])
    d = math.prod(shape)
    cond = dict(cond or {})
    x_hat, log_scale = _unscaled(x, process, sigma_min, d)
    u0, u1 = math.log(sigma_min), math.log(sigma_max)
    vectors = _Vectors(div, x, probes, probe, turns, generator, u0, u1)
    m, copies = vectors.m, vectors.copies
    step = copies if chunk is None else max(1, min(copies, int(chunk)))
    # weight of the accumulators in the solver's RMS error norm. Exact trace: jointly as much as all
    # of x_hat, so its error is not diluted by d. Hutchinson: plain RMS (weight 1 per component), since
    # the Monte Carlo error of the trace (nats) dwarfs its discretization error; x_hat drives the steps.
    c = math.sqrt((d + m) / m) if div is Divergence.EXACT else 1.0
    # measured on the oracle (benchmarks/likelihood.md): a vmapped backward is the cheaper way to the d
    # basis products of the exact trace for d > 4, stacked copies the cheaper way to probes and to <= 4
    # basis products (vmap's fixed cost dominates there)
    auto = div is Divergence.HUTCHINSON or copies <= 4
    vjp = _VJP(stacked=auto if stacked is None else bool(stacked))
    rhs = _flow_rhs(denoiser, cond, vectors, vjp, B, shape, step, c, x.dtype)

    s0, s1 = (1 + sigma_min**2) ** -0.5, (1 + sigma_max**2) ** -0.5
    y0 = torch.cat([s0 * x_hat.reshape(B, d).double(), torch.zeros(B, m, dtype=torch.float64, device=x.device)], 1)
    # first step a quarter unit of log sigma: every feature of the flow has a width of order one in
    # log sigma (tr J is a sum of logistic functions of 2 log sigma), while the generic heuristic scales
    # the step by |dy/du|, which is nearly zero below the data's scales, and creeps out of that region
    y1, sinfo = solve(rhs, y0, u0, u1, rtol=rtol, atol=atol, method=method, h0=min(0.25, u1 - u0),
                      max_steps=max_steps, quadrature=True)
    prior = prior if prior is not None else gaussian_prior(sigma_max)
    ll, info = _result(y1, sinfo.nfe, shape, c, (u1 - u0), s1, prior, log_scale, div, copies)
    return (ll, info) if return_info else ll


def _result(y1: Tensor, nfe: Tensor, shape, c: float, du: float, s1: float, prior, log_scale: Tensor,
            div: Divergence, copies: int) -> tuple[Tensor, LikelihoodInfo]:
    """The log-likelihoods and their :class:`LikelihoodInfo` from the solver's final state ``y1``."""
    B, d = y1.shape[0], math.prod(shape)
    m = y1.shape[1] - d
    latent = (y1[:, :d] / s1).reshape((B,) + tuple(shape))
    acc = y1[:, d:] / c  # (B, m): -int tr J du, per probe
    prior_logp = prior(latent).double()
    delta = acc + d * du  # (B, m)
    per_probe = prior_logp[:, None] + delta + log_scale[:, None]
    ll = per_probe.mean(1)
    if not bool(torch.isfinite(ll).all()):
        raise FloatingPointError(f"non-finite log-likelihood for sample {int(torch.nonzero(~torch.isfinite(ll))[0])}")
    if m > 1:
        stderr = per_probe.std(1, unbiased=True) / math.sqrt(m)
    elif div is Divergence.EXACT:
        stderr = torch.zeros_like(ll)
    else:
        stderr = torch.full_like(ll, math.inf)  # one probe: no spread to estimate from
    info = LikelihoodInfo(
        nfe=nfe, copies=copies, stderr=stderr, per_probe=per_probe, latent=latent,
        prior_logp=prior_logp, delta_logp=delta.mean(1), log_scale=log_scale,
    )
    return ll, info


def _check_request(x, sigma_min: float, sigma_max: float, divergence, probes, turns) -> Divergence:
    """The checks of :func:`log_likelihood`'s arguments; returns the divergence to use."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, Tensor) else ""))
    if x.ndim < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(f"x must have shape (batch, *data_shape) with batch >= 1, got {tuple(x.shape)}")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains a non-finite value")
    div = Divergence.parse(divergence) if divergence is not None else default_divergence(x[0].numel())
    if div is Divergence.HUTCHINSON and not (isinstance(probes, int) and probes >= 1):
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    if not (isinstance(turns, int) and turns >= 1):
        raise ValueError(f"turns must be an integer >= 1, got {turns!r}")
    return div


def _unscaled(x: Tensor, process: Process | None, sigma_min: float, d: int) -> tuple[Tensor, Tensor]:
    """x_hat = x / s(sigma_min) and the -d log s term of the change of variables (module docstring, "Scale")."""
    log_scale = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    if process is None:
        return x, log_scale
    if not isinstance(process, Process):
        raise TypeError(f"process must be a diffusionlens Process, got {process!r}")
    s = float(process.scale_of_sigma(torch.tensor(sigma_min, dtype=torch.float64)))
    return x / s, log_scale - d * math.log(s)


class _Vectors:
    """The vectors v_j of the quadratic forms <v_j, J v_j>: the basis (exact trace, ``m`` = 1 accumulator
    summing ``copies`` = d forms) or the probes (Hutchinson, one accumulator per probe)."""

    def __init__(self, div: Divergence, x: Tensor, probes: int, probe, turns: int, generator, u_lo, u_hi):
        B, shape, dtype, dev = x.shape[0], tuple(x.shape[1:]), x.dtype, x.device
        d = math.prod(shape)
        self.exact, self.shape, self.u_lo, self.u_hi = div is Divergence.EXACT, shape, u_lo, u_hi
        self.eye = self.path = self.fixed = None
        if self.exact:
            self.m, self.copies = 1, d
            self.eye = torch.eye(d, dtype=dtype, device=dev).reshape((d,) + shape)
            return
        self.m = self.copies = probes
        probe = Probe.parse(probe)
        if probe is Probe.ROTATING and d == 1:
            probe = Probe.RADEMACHER  # one dimension: e = +-1 is exact and nothing can rotate
        if probe is Probe.ROTATING:
            self.path = draw_rotating(B, probes, d, min(turns, d - 1), generator, dtype, dev)  # (B, P, turns + 1, d)
        else:
            self.fixed = draw_probes(x.shape, probes, probe, generator, dtype, dev)  # (B, P, *shape)

    def __call__(self, lo: int, hi: int, idx: Tensor, u: Tensor) -> Tensor:
        """Vectors lo..hi for the samples ``idx`` at log-noise ``u``: (hi - lo, len(idx), *shape)."""
        b = idx.shape[0]
        if self.exact:
            return self.eye[lo:hi, None].expand((hi - lo, b) + self.shape)
        if self.path is not None:
            v = rotating_probe(self.path[idx, lo:hi], u, self.u_lo, self.u_hi)
            return v.transpose(0, 1).reshape((hi - lo, b) + self.shape)
        return self.fixed[idx, lo:hi].transpose(0, 1)


def _flow_rhs(denoiser, cond: dict, vectors: _Vectors, vjp: _VJP, B: int, shape, step: int, c: float, dtype):
    """The right-hand side for :func:`diffusionlens.ode.solve`: the state y = x_hat / sqrt(1 + sigma^2) and
    the accumulators -c <v, J v> (module docstring), ``step`` products per denoiser call."""
    d, m, copies = math.prod(shape), vectors.m, vectors.copies

    def rhs(u: Tensor, y: Tensor, idx: Tensor, need_trace: bool = True) -> Tensor:
        b = y.shape[0]
        ud = u.double()
        sigma = torch.exp(ud)
        s_vp = torch.rsqrt(1 + sigma**2)[:, None]  # the state is y = s_vp x_hat (module docstring)
        xh = (y[:, :d] / s_vp).reshape((b,) + shape).to(dtype)
        sigma = sigma.to(dtype)
        q = torch.zeros(m, b, dtype=torch.float64, device=y.device)
        D = None
        if not need_trace:  # a stage whose trace no weight uses (ode.solve's quadrature components)
            with torch.no_grad():
                D = denoiser(xh, sigma, **_index_cond(cond, idx, 1, B))
        for lo in range(0 if need_trace else copies, copies, step):
            hi = min(copies, lo + step)
            Dc, qc = vjp(denoiser, xh, sigma, vectors(lo, hi, idx, u), lambda k: _index_cond(cond, idx, k, B))
            D = Dc if D is None else D
            if vectors.exact:
                q[0] += qc.sum(0).double()
            else:
                q[lo:hi] = qc.double()
        # d(s x_hat)/du = s (x_hat - D) + (d log s/du) s x_hat, with d log s/du = -sigma^2 / (1 + sigma^2)
        dy = y[:, :d] * (s_vp**2) - s_vp * D.reshape(b, d).double()
        return torch.cat([dy, -c * q.T], 1)

    return rhs
