"""The consistency regularisers: the consistent-diffusion (martingale) residual, the score Fokker–Planck
residual, the relation between them, and the regularised denoising objectives.

Notation (:mod:`diffusionlens.processes`): x = x0 + sigma n (scale-free), D(x, sigma) the canonical
denoiser, its score s = (D - x) / sigma^2. The noisy marginals solve the heat equation
d_sigma p = sigma Lap p, so the exact score solves the score Fokker–Planck equation (Lai et al. 2023,
"FP-Diffusion", in this noise-level time):

    eps_FP(x, sigma) = d_sigma s - sigma grad( div s + |s|^2 ) = 0.

We report it in the denoiser's units per unit log-noise-level, r_FP = sigma^3 eps_FP (see below why).

Consistent diffusion (Daras et al. 2023): run the reverse SDE *of the model itself*,
dx = -2 sigma s dsigma + sqrt(2 sigma) dW as sigma decreases (Euler–Maruyama in u = sigma^2,
:func:`diffusionlens.samplers.euler_maruyama`), from x_t at level t to x_s at s < t; the exact denoiser
is a martingale along it, C(x_t) = E[D(x_s, s) | x_t] - D(x_t, t) = 0.

The equivalence (Lai et al. 2023, "On the Equivalence of Consistency-Type Models"). The generator of
the reverse process acting on f(x, sigma) is A f = -d_sigma f + 2 sigma (J_f) s + sigma Lap f; with
D = x + sigma^2 s, and a conservative s (J_s symmetric, so grad div s = Lap s and grad |s|^2 = 2 J_s s),

    A D = -sigma^2 eps_FP,   hence (Dynkin)   C(x_t) = -E[ int_{ln s}^{ln t} r_FP(x_sigma, sigma) d ln sigma | x_t ]

along the model's own reverse paths: the denoiser is consistent exactly when its score satisfies the
score FPE, and over a short span h = ln(t / s), C / h -> -r_FP(x_t, t). All three quantities here are
therefore per unit ln sigma: :func:`consistency_residual` divides C by h.

Estimators (Monte-Carlo standard errors over the starting points): squared norms |E[v | x]|^2 are
estimated without bias from M independent draws v_1..v_M by the U-statistic
(|sum v|^2 - sum |v|^2) / (M (M - 1)) (Daras et al.'s two-path product for M = 2), and the Hutchinson
estimate of div s enters eps_FP linearly, so two independent probe sets give an unbiased product too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._util import as_sigma, expand
from ..likelihood.pf_ode import Divergence, Probe, default_divergence, draw_probes
from ..objectives.base import Batch, Objective, Streams
from ..objectives.denoising import Denoising
from ..objectives.denoising import build as build_denoising
from ..samplers import NoiseStream, em_update
from ..samplers._common import check_finite
from .progressive import data_sampler

__all__ = ["fokker_planck_field", "fokker_planck_residual", "reverse_paths", "consistency_residual",
           "consistency_fp_relation", "RESIDUALS"]

RESIDUALS = ("consistency", "fokker-planck")


def _divergences(s: Tensor, x: Tensor, kind: Divergence, probe_sets: list[Tensor]) -> list[Tensor]:
    """div_x s (batch,) with the graph kept: exact (d backward passes), or one Hutchinson estimate
    per set of probes (each (batch, probes, *data_shape))."""
    if kind is Divergence.EXACT:
        sf, d = s.flatten(1), s[0].numel()
        div = 0.0
        for i in range(d):
            (gi,) = torch.autograd.grad(sf[:, i].sum(), x, create_graph=True, materialize_grads=True)
            div = div + gi.flatten(1)[:, i]
        return [div]
    out = []
    for e in probe_sets:
        probes = e.shape[1]
        div = 0.0
        for p in range(probes):
            (v,) = torch.autograd.grad((s * e[:, p]).sum(), x, create_graph=True, materialize_grads=True)
            div = div + (v * e[:, p]).flatten(1).sum(1) / probes
        out.append(div)
    return out


def fokker_planck_field(denoiser, x: Tensor, sigma, *, divergence: Divergence | str | None = None, probes: int = 1,
                        sets: int = 1, generator: torch.Generator | None = None, create_graph: bool = False,
                        probe_sets: list[Tensor] | None = None, **cond) -> list[Tensor]:
    """r_FP = sigma^3 [d_sigma s - sigma grad(div s + |s|^2)] at (x, sigma), s the score implied by D.

    x: (batch, *data_shape); sigma: float or (batch,). Derivatives by autograd (d_sigma s by the
    double-backward trick, so it works on any module); the divergence is exact or Hutchinson as
    :func:`diffusionlens.likelihood.default_divergence` chooses for d (or as ``divergence`` says).
    Returns a list of (batch, *data_shape) residuals, one per independent probe set (one when exact):
    ``sets`` sets of ``probes`` Rademacher probes drawn with ``generator``, or the given ``probe_sets``.
    ``create_graph=True`` keeps the graph to the model's parameters (for a regulariser).
    """
    if not (isinstance(probes, int) and probes >= 1 and isinstance(sets, int) and sets >= 1):
        raise ValueError(f"probes and sets must be integers >= 1, got {probes!r}, {sets!r}")
    kind = default_divergence(x[0].numel()) if divergence is None else Divergence.parse(divergence)
    if kind is Divergence.HUTCHINSON and probe_sets is None:
        probe_sets = [draw_probes(tuple(x.shape), probes, Probe.RADEMACHER, generator, x.dtype, x.device)
                      for _ in range(sets)]
    with torch.enable_grad():
        sig = as_sigma(sigma, x).detach().clone().requires_grad_(True)
        xg = x.detach().clone().requires_grad_(True)
        s = (denoiser(xg, sig, **cond) - xg) / expand(sig, xg) ** 2
        u = torch.zeros_like(s, requires_grad=True)
        (g,) = torch.autograd.grad((s * u).sum(), sig, create_graph=True, materialize_grads=True)
        (ds,) = torch.autograd.grad(g.sum(), u, create_graph=True)
        (gsq,) = torch.autograd.grad((s * s).sum(), xg, create_graph=True)
        out = []
        for div in _divergences(s, xg, kind, probe_sets):
            (gdiv,) = torch.autograd.grad(div.sum(), xg, create_graph=True, materialize_grads=True)
            r = expand(sig**3, xg) * (ds - expand(sig, xg) * (gdiv + gsq))
            out.append(r if create_graph else r.detach())
    return out


def _levels(sigmas) -> list[float]:
    s = [float(v) for v in torch.as_tensor(sigmas, dtype=torch.float64).flatten()]
    if not s or any(not (math.isfinite(v) and v > 0) for v in s):
        raise ValueError(f"sigmas must be positive, finite noise levels, got {s}")
    return s


def _draw_noisy(draw, n: int, sigma: float, generator) -> Tensor:
    x0 = draw(n, generator)
    return x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)


def _sq_norm_unbiased(v: Tensor) -> Tensor:
    """(n, M, *shape) draws -> (n,) unbiased estimates of |E v|^2 / d (the U-statistic over M)."""
    M, d = v.shape[1], v[0, 0].numel()
    v = v.flatten(2)
    tot = v.sum(1)
    return ((tot * tot).sum(1) - (v * v).sum((1, 2))) / (M * (M - 1) * d)


def _summary(per: list[Tensor], levels: list[float]) -> dict[str, Tensor]:
    n = per[0].shape[0]
    return {"sigma": torch.tensor(levels, dtype=torch.float64),
            "value": torch.stack([p.double().mean() for p in per]),
            "stderr": torch.stack([p.double().std() / math.sqrt(n) for p in per])}


def fokker_planck_residual(denoiser, data: Tensor | Callable, sigmas, *, n: int = 1024,
                           divergence: Divergence | str | None = None, probes: int = 1,
                           generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Per noise level, E |r_FP(x_t, sigma)|^2 / d over x_t = x0 + sigma n, with its standard error.

    ``data``: a tensor of x0 (drawn with replacement) or ``data(n, generator)``. With a Hutchinson
    divergence the square is the product of two independent probe sets (unbiased; it may be
    slightly negative when the residual is 0). Returns {"sigma", "value", "stderr"} (float64).
    """
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    draw, levels, per = data_sampler(data), _levels(sigmas), []
    for sigma in levels:
        x = _draw_noisy(draw, n, sigma, generator)
        r = fokker_planck_field(denoiser, x, sigma, divergence=divergence, probes=probes, sets=2,
                                generator=generator)
        per.append((r[0] * r[-1]).flatten(1).mean(1))
    return _summary(per, levels)


@torch.no_grad()
def reverse_paths(denoiser, x: Tensor, t, span: float, *, steps: int, paths: int,
                  generator: torch.Generator | Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``paths`` Euler–Maruyama paths of the model's own reverse SDE (the samplers' ``em_update``) from
    each row of x at its level t down to t e^{-span}, on a geometric grid of ``steps`` steps.

    t: a float or (batch,) levels. The step ratio r = (sigma_{k+1} / sigma_k)^2 = e^{-2 span / steps} is
    the same for every row, so rows at different levels step together. Returns (states, denoised,
    sigmas): states (steps + 1, batch * paths, *data_shape), rows of x repeated ``paths`` times
    consecutively; denoised (steps, ...) D(x_k, sigma_k); sigmas (steps + 1, batch * paths) in x's
    dtype. ``generator``: a torch.Generator or (batch * paths,) per-path seeds (:class:`NoiseStream`).
    """
    if not (isinstance(steps, int) and steps >= 1 and isinstance(paths, int) and paths >= 2):
        raise ValueError(f"need integer steps >= 1 and paths >= 2, got {steps!r}, {paths!r}")
    if not (math.isfinite(span) and span > 0):
        raise ValueError(f"span (ln t - ln s) must be > 0, got {span!r}")
    t = as_sigma(t, x).repeat_interleave(paths)
    sigmas = t[None] * torch.exp(-span * torch.arange(steps + 1, dtype=torch.float64) / steps).to(t)[:, None]
    q = math.exp(-span / steps)
    xs, ds = [x.repeat_interleave(paths, 0)], []
    noise = NoiseStream.make(generator, xs[0])
    for k in range(steps):
        ds.append(denoiser(xs[-1], sigmas[k]))
        z = expand(sigmas[k], xs[-1]) * noise.normal(k, xs[-1])
        xs.append(em_update(xs[-1], ds[-1], 1.0, q, z))  # the step is scale-free: sigma = 1 -> q, noise scaled
        check_finite(xs[-1], k, float(sigmas[k + 1].min()))
    return torch.stack(xs), torch.stack(ds), sigmas


def _martingale_part(denoiser, states: Tensor, denoised: Tensor, sigmas: Tensor) -> Tensor:
    """sum_k J_D(x_k, sigma_k) xi_k, xi_k the noise the Euler–Maruyama step k injected.

    xi_k is independent of x_k with mean 0, so every term has mean 0: subtracting the sum from
    D(x_s) - D(x_t) leaves its conditional mean unchanged and removes the leading Brownian
    fluctuation (a control variate). Jacobian-vector products by the double-backward trick.
    """
    K, B = denoised.shape[:2]
    r = float((sigmas[1, 0] / sigmas[0, 0]) ** 2)
    xi = states[1:] - r * states[:-1] - (1 - r) * denoised
    flat = states[:-1].reshape((K * B,) + states.shape[2:])
    with torch.enable_grad():
        xg = flat.detach().clone().requires_grad_(True)
        out = denoiser(xg, sigmas[:-1].reshape(-1))
        v = torch.zeros_like(out, requires_grad=True)
        (g,) = torch.autograd.grad((out * v).sum(), xg, create_graph=True)
        (jv,) = torch.autograd.grad((g * xi.reshape(flat.shape)).sum(), v)
    return jv.reshape(states[1:].shape).sum(0)


def _span_pairs(sigmas, span: float) -> list[tuple[float, float]]:
    if not (math.isfinite(span) and span > 0):
        raise ValueError(f"span (ln t - ln s) must be > 0, got {span!r}")
    return [(t, t * math.exp(-span)) for t in _levels(sigmas)]


def _increment(denoiser, x, t, s, steps, paths, generator) -> tuple[Tensor, Tensor, Tensor]:
    """(D(x_s, s) - D(x_t, t) minus its martingale part, states, grid) over reverse paths from x."""
    states, denoised, sigmas = reverse_paths(denoiser, x, t, math.log(t / s), steps=steps, paths=paths,
                                             generator=generator)
    with torch.no_grad():
        delta = denoiser(states[-1], sigmas[-1]) - denoised[0]
    return delta - _martingale_part(denoiser, states, denoised, sigmas), states, sigmas


def consistency_residual(denoiser, data: Tensor | Callable, sigmas, *, span: float = 0.25, steps: int = 8,
                         n: int = 256, paths: int = 8, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Per level t, E_{x_t} |E[D(x_s, s) | x_t] - D(x_t, t)|^2 / (d h^2) with s = t e^{-h}, h = ``span``.

    The inner expectation runs ``paths`` reverse-SDE paths of the model itself (:func:`reverse_paths`,
    ``steps`` steps) from each of ``n`` points x_t = x0 + t n; unbiased in the paths (U-statistic),
    with the standard error over the n points. Dividing by h^2 puts it on the scale of
    :func:`fokker_planck_residual` (the two agree as h -> 0 for a conservative score).
    Returns {"sigma", "value", "stderr"} (float64).
    """
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    draw, per, pairs = data_sampler(data), [], _span_pairs(sigmas, span)
    for t, s in pairs:
        x = _draw_noisy(draw, n, t, generator)
        delta = _increment(denoiser, x, t, s, steps, paths, generator)[0]
        per.append(_sq_norm_unbiased(delta.reshape((n, paths) + x.shape[1:])) / span**2)
    return _summary(per, [t for t, _ in pairs])


def consistency_fp_relation(denoiser, data: Tensor | Callable, sigmas, *, span: float = 0.5, steps: int = 16,
                            n: int = 64, paths: int = 16, divergence: Divergence | str | None = None,
                            generator: torch.Generator | None = None) -> dict[str, dict[str, Tensor]]:
    """Lai et al.'s equivalence, measured: C against the FP residual integrated along the same paths.

    For each level t (s = t e^{-h}, h = ``span``) and each reverse path x_0 = x_t, ..., x_K = x_s of the
    model's own SDE: Delta = D(x_s, s) - D(x_t, t) and I = -sum_k r_FP(x_k, sigma_k) w_k, with
    w_k = (sigma_k^2 - sigma_{k+1}^2) / (2 sigma_k^2) the step's length in ln sigma as the Euler–Maruyama
    step in u = sigma^2 takes it. Dynkin's formula makes E[Delta | x_t] = E[I | x_t] up to the
    discretisation (O(h / steps)) when the score is conservative. Returns, per level, unbiased
    estimates (over ``paths``, standard errors over ``n`` starting points) of |E Delta|^2, |E I|^2 and
    |E (Delta - I)|^2, each / (d h^2): {"consistency", "fokker-planck", "difference"} ->
    {"sigma", "value", "stderr"}.
    """
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    draw, pairs = data_sampler(data), _span_pairs(sigmas, span)
    per: dict[str, list[Tensor]] = {"consistency": [], "fokker-planck": [], "difference": []}
    for t, s in pairs:
        x = _draw_noisy(draw, n, t, generator)
        delta, states, sigmas = _increment(denoiser, x, t, s, steps, paths, generator)
        K, B = steps, states.shape[1]
        w = (1 - math.exp(-2 * span / steps)) / 2  # (sigma_k^2 - sigma_{k+1}^2) / (2 sigma_k^2)
        flat = states[:-1].reshape((K * B,) + x.shape[1:])
        (r,) = fokker_planck_field(denoiser, flat, sigmas[:-1].reshape(-1), divergence=divergence,
                                   generator=generator)
        integral = -w * r.reshape((K, B) + x.shape[1:]).sum(0)
        shape = (n, paths) + x.shape[1:]
        for name, v in (("consistency", delta), ("fokker-planck", integral), ("difference", delta - integral)):
            per[name].append(_sq_norm_unbiased(v.reshape(shape)) / span**2)
    levels = [t for t, _ in pairs]
    return {name: _summary(p, levels) for name, p in per.items()}


class Regularised(Objective):
    """Denoising plus ``weight`` times a per-sample residual estimate at independent draws.

    ``base``: the :class:`~diffusionlens.objectives.Denoising` objective (its loss's density supplies
    the regulariser's noise levels too).

    ``residual="consistency"`` (Daras et al. 2023): from x_t at a level of the loss's density, two
    reverse-SDE paths of the model itself (``steps`` Euler–Maruyama steps, no gradient through the
    sampling) to s = t e^{-span}, and the product (D(x_s^a, s) - D(x_t, t)) . (D(x_s^b, s) - D(x_t, t))
    / (d span^2), gradients through D at x_t and at both x_s. ``"fokker-planck"`` (Lai et al. 2023):
    |r_FP(x_t, t)|^2 / d, with graph (third derivatives of the network), the divergence exact up to
    :data:`~diffusionlens.likelihood.pf_ode.EXACT_MAX_DIM` dimensions, else the product of two
    independent single-probe Hutchinson estimates. Both are unbiased for the squared residual (and
    may be negative per sample). Randomness comes from stream ``regulariser``, drawn for the global
    batch, so distributed runs reproduce single-process ones.
    """

    streams = ("t", "noise", "regulariser")

    def __init__(self, base: Denoising, residual: str, weight: float, *, span: float = 0.25, steps: int = 2):
        if residual not in RESIDUALS:
            raise ValueError(f"unknown residual {residual!r}; choose from {', '.join(RESIDUALS)}")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"the regulariser weight must be finite and >= 0, got {weight!r}")
        _span_pairs([1.0], span)
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.base, self.residual, self.weight, self.span, self.steps = base, residual, float(weight), span, steps

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        loss = self.base(model, batch, rng)
        if self.weight == 0:
            return loss
        g, n = rng["regulariser"], batch.size
        t = self.base.loss.sample_t(n, g)
        sigma = self.base.loss.process.sigma(t)
        noise = torch.randn(batch.x0.shape, generator=g, dtype=batch.x0.dtype)
        x0 = batch.local(batch.x0)
        x = x0 + expand(batch.local(sigma).to(x0), x0) * batch.local(noise).to(x0.device)
        sig = batch.local(sigma).to(x0)
        if self.residual == "consistency":
            seeds = torch.randint(-(2**62), 2**62, (n, 2), generator=g, dtype=torch.int64)
            r = self._consistency(model, x, sig, batch.local(seeds).flatten().to(x0.device))
        else:
            kind = default_divergence(x0[0].numel())
            sets = None
            if kind is Divergence.HUTCHINSON:
                sets = [batch.local(draw_probes((n,) + tuple(x0.shape[1:]), 1, Probe.RADEMACHER, g, x0.dtype,
                                                "cpu")).to(x0.device) for _ in range(2)]
            res = fokker_planck_field(model, x, sig, create_graph=True, probe_sets=sets)
            r = (res[0] * res[-1]).flatten(1).mean(1)
        out = loss + self.weight * r
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"non-finite {self.residual} residual")
        return out

    def _consistency(self, model, x: Tensor, sigma: Tensor, seeds: Tensor) -> Tensor:
        """Per sample, the two-path product of Daras et al. at each row's own level (batch,)."""
        xs = reverse_paths(model, x, sigma, self.span, steps=self.steps, paths=2, generator=seeds)[0][-1]
        xs = xs.reshape((x.shape[0], 2) + x.shape[1:])
        d_t = model(x, sigma)
        d_s = model(xs.flatten(0, 1), (sigma * math.exp(-self.span)).repeat_interleave(2)).reshape(xs.shape)
        a, b = d_s[:, 0] - d_t, d_s[:, 1] - d_t
        return (a * b).flatten(1).mean(1) / self.span**2


def build_consistency(cfg, data) -> Regularised:
    """``denoising+consistency``: the run's denoising objective plus the consistency residual, weight 1."""
    return _build(cfg, data, "consistency")


def build_fokker_planck(cfg, data) -> Regularised:
    """``denoising+fokker-planck``: the run's denoising objective plus the score-FPE residual, weight 1."""
    return _build(cfg, data, "fokker-planck")


def _build(cfg, data, residual: str) -> Regularised:
    if cfg.conditional:
        raise ValueError(f"the denoising+{residual} objective trains unconditional models; set conditional=False")
    return Regularised(build_denoising(cfg, data), residual, 1.0)
