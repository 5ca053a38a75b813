"""Noise-level grids fitted to a model: equidistribute the local error measured by a pilot solve.

A fixed-step sampler of order p on a grid with local step h(lambda) (lambda = -log sigma) makes a
local error of about C(lambda) h^(p+1), where C measures how fast the denoiser output changes along
the flow. For a fixed number of steps, the total error is smallest when every step makes the same
error (de Boor's equidistribution principle), i.e. when the step density n(lambda) = 1/h is
proportional to C(lambda)^(1/(p+1)). The Karras and log-SNR grids fix that density in advance, from
images (EDM) or from the exponential integrators' variable; the data decide where D changes fast — a
mixture of narrow modes needs steps at small sigma, a mixture of broad overlapping components at
intermediate sigma.

:func:`fitted_grid` measures C on the model itself (:func:`error_density`): it solves the PF-ODE for
a small pilot batch with the adaptive exponential Runge–Kutta 3(2) pair (:mod:`.adaptive`), whose
embedded error estimate of an accepted step of length h is err = C_b h^3 for pilot sample b. So
C_b^(1/3) = err^(1/3) / h is the step density that the pair would use for that sample at unit
tolerance. C_b is the error constant of the pair's second-order estimate, not of the order-p sampler
the grid is for; using it for every p (only the exponent changes) is the approximation that the
variation of D which drives one drives the other. The fitted density for an order-p sampler is

    n(lambda)  proportional to  ( mean_b C_b(lambda)^(1/3) )^(3 / (p + 1))    ... (*)

The mean is taken over the pilot's step densities rather than over the error constants C_b (which
the equidistribution of a summed error would suggest) because C_b has sharp, sample-specific peaks
where a trajectory crosses between mixture components; a grid shared by all samples cannot resolve
those, and a mean of C_b spends steps on them (the comparison of the two forms is in
benchmarks/samplers.md). Using the error estimate instead of the controller's step sizes keeps
the controller's start-up steps (chosen before any error was measured) out of the density.

The grid places ``steps`` noise levels at equal quantiles of the integral of (*) from sigma_max to
sigma_min, then appends 0 (the final Tweedie step of every sampler). The pilot's cost (its NFE is
``ErrorDensity.pilot_nfe``) is a one-off per model and sigma range: compute the grid once and pass it
to :func:`diffusionlens.sample` as ``grid=`` for every batch (or store it: :func:`~diffusionlens.samplers.tune`).

Where to stop (:func:`stop_grid`, ``grid="fitted-stop"``). Every sampler's last step jumps from the
last positive level sigma_L to 0 and returns D(x, sigma_L), the posterior mean. With few steps,
running the grid down to sigma_min = 0.002 spends steps where the flow barely moves and leaves
too few where it turns; stopping at a larger sigma_L trades that integration error for the error of
the jump, which grows like sigma_L^2 / s for a mode of width s. Which balance is best depends on
the model and the step count, so it is measured rather than assumed: the pilot's own solutions
(its noise and its end points at sigma = 0) are kept, the sampler is run on the pilot noise for
each candidate sigma_L (about four per decade between sigma_min and sigma_max), and the candidate
with the smallest RMS error against the pilot's solutions wins. One scalar is chosen per (model,
sampler, steps) from 64 pilot trajectories, so it does not overfit the way a search over every level
of the grid would (many free levels fit the pilot's own noise). The early stop returns posterior
means, whose spread within a mode is shrunk by s^2 / (s^2 + sigma_L^2): the chosen sigma_L is the
one that keeps the samples closest to the exact flow's end points, which is the criterion; a user
who wants sharp samples at any price keeps sigma_min. As the step count grows the measured optimum
falls towards sigma_min by itself.

Where to start (``stop_grid(..., teleport=model)``, ``sample(..., start=Teleport())``). At large sigma the
flow is that of a Gaussian with the data's mean and covariance (:mod:`.gaussian`), whose exact
solution costs no evaluations; how far down it stays right is a property of the data. With a
:class:`~diffusionlens.samplers.GaussianModel` measured on the denoiser, the first level s1 is chosen
from sigma_max / 2^k (k < 6) together with the last, by the same pilot error, the pilot noise carried
to s1 by the Gaussian flow (and the first evaluation, with the analytic start, the Gaussian's
denoiser). Two levels are chosen, so the pilot should be larger (256 samples; with 64 the joint
choice can fit the pilot's noise: benchmarks/samplers.md).

Equidistribution is an asymptotic (small-step) criterion: at NFE <= 6 the fixed Karras grid is often
the better one. The samplers benchmark (benchmarks/samplers.md) reports both. The idea of adapting the
schedule to the model is that of "Align Your Steps" (Sabour et al. 2024), which optimises the grid
against a KL bound; here the classical error-equidistribution criterion is used, with the error
measured by the embedded pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._util import Choice, device_of
from ..processes import karras_grid, logsnr_grid
from .adaptive import solve_exp_rk32
from .gaussian import GaussianModel
from .registry import resolve_sampler
from .starts import MeanStart, NoiseStart, Teleport

__all__ = ["ErrorDensity", "StopBase", "Trial", "data_mean", "error_density", "fitted_grid", "search_stops",
           "start_candidates", "stop_candidates", "stop_grid"]


def _one_step(steps: int, order: int) -> bool:
    """Validate a grid request; True when it is the one-step grid (sigma_max, 0), which needs no pilot."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(order, int) and order >= 1):
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    return steps == 1


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")


@dataclass(frozen=True)
class ErrorDensity:
    """The local-error density measured by a pilot solve, from which grids of any length are cut.

    Attributes:
        sigma_min, sigma_max: the range the pilot covered.
        mesh: (cells + 1,) float64 cell edges in lambda = -log sigma, from -log sigma_max to -log sigma_min.
        n: (cells,) float64 mean over the pilot samples of C_b^(1/3), C_b = err / h^3 of their accepted
            steps, smoothed in lambda (see :func:`error_density`).
        pilot_nfe: denoiser evaluations per pilot sample (mean).
        pilot_noise: (pilot, *shape) the pilot's standard normal noise (its start is noise * sigma_max),
            or None (an averaged density keeps none).
        pilot_x0: (pilot, *shape) the pilot's solutions at sigma = 0 (the adaptive solve to sigma_min,
            then D(x, sigma_min)), the reference of :func:`stop_grid`; or None.
        data_mean: (*shape) the mean of D(x, sigma_max) over the pilot's starting points, E[x0] in the
            large-sigma limit (for :class:`AnalyticStart`); or None.
    """

    sigma_min: float
    sigma_max: float
    mesh: Tensor
    n: Tensor
    pilot_nfe: float
    pilot_noise: Tensor | None = None
    pilot_x0: Tensor | None = None
    data_mean: Tensor | None = None

    def grid(self, steps: int, order: int = 3, sigma_last: float | None = None,
             sigma_first: float | None = None) -> Tensor:
        """(steps + 1,) float64 decreasing grid sigma_first ... sigma_last, 0 for a sampler of order ``order``.

        ``sigma_last`` (default ``sigma_min``) is the last positive level and ``sigma_first`` (default
        ``sigma_max``) the first, both within [sigma_min, sigma_max], sigma_last < sigma_first: the
        density is cut at them and its quantiles taken over [sigma_last, sigma_first] only.
        """
        first = self.sigma_max if sigma_first is None else float(sigma_first)
        last = self.sigma_min if sigma_last is None else float(sigma_last)
        if not (self.sigma_min < first <= self.sigma_max):
            raise ValueError(f"sigma_first must be in (sigma_min, sigma_max] = ({self.sigma_min}, {self.sigma_max}], "
                             f"got {sigma_first}")
        if not (self.sigma_min <= last < first):
            raise ValueError(f"sigma_last must be in [sigma_min, sigma_first) = [{self.sigma_min}, {first}), "
                             f"got {sigma_last}")
        if _one_step(steps, order):
            return torch.tensor([first, 0.0], dtype=torch.float64)
        top = float(self.n.max())
        if not (math.isfinite(top) and top > 0):  # no measurable error anywhere (e.g. a constant denoiser)
            density = torch.ones_like(self.n)  # -> uniform in log sigma, the log-SNR grid
        else:
            density = self.n.clamp_min(top * 1e-12).pow(3.0 / (order + 1))  # (mean C^(1/3))^(3/(p+1))
        # keep the cells between lam_a = -log first and lam_b = -log last, the end cells cut there
        lam_a, lam_b = -math.log(first), -math.log(last)
        mesh = self.mesh
        lo = min(max(int(torch.searchsorted(mesh, torch.tensor(lam_a, dtype=torch.float64), right=True)), 1),
                 len(density))
        hi = min(max(int(torch.searchsorted(mesh, torch.tensor(lam_b, dtype=torch.float64))), lo), len(density))
        edges = torch.tensor([lam_a, lam_b], dtype=torch.float64)
        mesh = torch.cat([edges[:1], mesh[lo:hi], edges[1:]])
        density = density[lo - 1:hi]
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(density * (mesh[1:] - mesh[:-1]), 0)])
        cum = cum / cum[-1]
        q = torch.linspace(0, 1, steps, dtype=torch.float64)
        j = torch.searchsorted(cum, q).clamp(1, len(density))
        frac = (q - cum[j - 1]) / (cum[j] - cum[j - 1])
        lam = mesh[j - 1] + frac * (mesh[j] - mesh[j - 1])
        sig = torch.exp(-lam)
        sig[0], sig[-1] = first, last
        return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])

    @staticmethod
    def average(parts: list[ErrorDensity]) -> ErrorDensity:
        """The mean density of several pilots over the same range and cells (e.g. one pilot per class
        of a conditional model). It keeps no pilot solutions (they were drawn under different
        conditions), so :func:`stop_grid` does not apply to it."""
        if not parts:
            raise ValueError("need at least one ErrorDensity to average")
        first = parts[0]
        for p in parts[1:]:
            if (p.sigma_min, p.sigma_max) != (first.sigma_min, first.sigma_max) or not torch.equal(p.mesh, first.mesh):
                raise ValueError("densities to average must share sigma_min, sigma_max and cells")
        n = torch.stack([p.n for p in parts]).mean(0)
        return ErrorDensity(first.sigma_min, first.sigma_max, first.mesh, n,
                            sum(p.pilot_nfe for p in parts) / len(parts))


def _smooth(n: Tensor, cell: float, width: float) -> Tensor:
    """Gaussian smoothing of a cell density (std ``width`` in lambda), reflected at the ends."""
    s = width / cell
    if not s >= 0.5:
        return n
    half = min(int(4 * s) + 1, n.shape[0] - 1)
    k = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=torch.float64) / s) ** 2)
    padded = F.pad(n[None, None], (half, half), mode="reflect")
    return F.conv1d(padded, (k / k.sum())[None, None])[0, 0]


def error_density(
    denoiser,
    shape,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    *,
    pilot: int = 64,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    cells: int = 4096,
) -> ErrorDensity:
    """Solve the PF-ODE for ``pilot`` samples of shape ``shape`` with the adaptive exponential RK 3(2)
    pair at rtol = atol = ``tol`` and return the measured local-error density (see the module docstring).

    The denoiser is called on the pilot batch and on subsets of it (the samples still running), so it
    must not hold conditioning bound to another batch; for a conditional model, run one pilot per
    condition and combine them with :meth:`ErrorDensity.average`.

    The pilot's noise and its solutions at sigma = 0 are kept in the result (for :func:`stop_grid`).
    The pilot's density is piecewise constant between its samples' step ends; it is smoothed with a
    Gaussian in lambda whose width is the pilot's median step, the resolution at which it was measured
    (a density with jumps would give grids whose step ratios jump, which costs multistep samplers order).

    generator: CPU generator of the pilot noise (default: seed 0); device: of the pilot batch (default:
    the denoiser's parameters' device, else CPU); dtype: of the pilot batch (at least float32);
    cells: resolution of the density in log sigma.
    """
    _check_range(sigma_min, sigma_max)
    if not (0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    noise = _pilot_noise(denoiser, shape, pilot, generator, device, dtype)
    device, dtype = noise.device, noise.dtype
    trace: list = []
    with torch.no_grad():
        mean = _mean_at(denoiser, noise * sigma_max, sigma_max)
        x_end, nfe = solve_exp_rk32(denoiser, noise * sigma_max, sigma_max, sigma_min, rtol=tol, atol=tol,
                                    trace=trace)
        x0 = denoiser(x_end, torch.full((pilot,), sigma_min, dtype=dtype, device=device))  # the final Tweedie step
    lam_a, lam_b, err = (torch.cat([t[k] for t in trace]).cpu() for k in range(3))
    # each accepted step adds C^(1/3) = err^(1/3) / h on the cells it covers: a difference array over
    # the cells, then a cumulative sum; the pilot samples tile the range, so this is their mean density
    mesh = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), cells + 1, dtype=torch.float64)
    mid = 0.5 * (mesh[1:] + mesh[:-1])
    w = err.double().pow(1.0 / 3.0) / (lam_b - lam_a).abs()
    diff = torch.zeros(cells + 1, dtype=torch.float64)
    diff.index_add_(0, torch.searchsorted(mid, lam_a), w)
    diff.index_add_(0, torch.searchsorted(mid, lam_b), -w)
    n = torch.cumsum(diff, 0)[:cells].clamp_min(0.0) / pilot
    n = _smooth(n, float(mesh[1] - mesh[0]), float((lam_b - lam_a).abs().median()))
    return ErrorDensity(sigma_min, sigma_max, mesh, n, float(nfe.double().mean()) + 2.0, noise, x0.detach(), mean)


def _pilot_noise(denoiser, shape, pilot: int, generator, device, dtype) -> Tensor:
    """(pilot, *shape) standard normal pilot noise: drawn in float64 on the CPU from ``generator`` (default
    seed 0), then moved to ``device`` (default: the denoiser's) in ``dtype`` (at least float32: half-precision
    error estimates are rounding noise)."""
    if not (isinstance(pilot, int) and pilot >= 1):
        raise ValueError(f"pilot must be an integer >= 1, got {pilot!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    device = device if device is not None else device_of(denoiser)
    dtype = torch.promote_types(dtype, torch.float32)
    return torch.randn((pilot, *tuple(shape)), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _mean_at(denoiser, x: Tensor, sigma: float) -> Tensor:
    """The mean over the batch of D(x, sigma), kept in float64."""
    with torch.no_grad():
        out = denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device))
    return out.double().mean(0)


def data_mean(
    denoiser,
    shape,
    sigma_max: float = 80.0,
    *,
    pilot: int = 64,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """E[x0] measured on the denoiser: the mean of D(n sigma_max, sigma_max) over ``pilot`` standard normal n.

    At large sigma D(x_hat, sigma) = E[x0] + Cov[x0] (x_hat - E[x0]) / sigma^2 + ..., and averaged over
    x_hat ~ p_sigma the correction vanishes, so the mean is E[x0] up to the Monte Carlo error of the
    O(||Cov|| / sigma) spread (one batched call). Used by :class:`AnalyticStart`; an
    :func:`error_density` pilot measures it too (``ErrorDensity.data_mean``).
    """
    if not (0 < sigma_max < math.inf):
        raise ValueError(f"sigma_max must be finite and > 0, got {sigma_max}")
    noise = _pilot_noise(denoiser, shape, pilot, generator, device, dtype)
    return _mean_at(denoiser, noise * sigma_max, sigma_max)


def fitted_grid(
    denoiser,
    shape,
    steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    *,
    order: int = 3,
    **pilot_options,
) -> Tensor:
    """A (steps + 1,) float64 decreasing grid, sigma_max ... sigma_min, 0, fitted to ``denoiser``.

    Args:
        denoiser: canonical D(x_hat, sigma), sigma a (batch,) tensor (a :class:`diffusionlens.Denoiser` works).
        shape: the shape of one sample (without the batch dimension).
        steps: number of grid intervals (as for the Karras grid: ``steps`` positive levels, then 0).
        sigma_min, sigma_max: the ends of the positive part of the grid.
        order: order p of the sampler the grid is for (its spec's ``order``); density exponent 3 / (p + 1).
        **pilot_options: ``pilot`` (64), ``tol`` (1e-3), ``generator``, ``device``, ``dtype``, ``cells``
            of :func:`error_density`. For grids of several lengths, call :func:`error_density` once and
            its ``.grid(steps, order)`` for each.
    """
    _check_range(sigma_min, sigma_max)
    if _one_step(steps, order):
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    return error_density(denoiser, shape, sigma_min, sigma_max, **pilot_options).grid(steps, order)


class StopBase(Choice, what="stop base"):
    """The grid family that :func:`stop_grid` cuts at the chosen last level."""

    FITTED = "fitted"  # ErrorDensity.grid: the fitted density between sigma_max and sigma_last
    KARRAS = "karras"  # Karras et al. 2022, rho = 7, from sigma_max to sigma_last
    LOGSNR = "logsnr"  # uniform in log sigma from sigma_max to sigma_last


def stop_candidates(sigma_min: float, sigma_max: float, per_decade: int = 4) -> list[float]:
    """Candidate last levels: sigma_min, then log-uniform at ``per_decade`` per decade below sigma_max."""
    _check_range(sigma_min, sigma_max)
    n = max(1, math.floor(per_decade * math.log10(sigma_max / sigma_min)))
    return [sigma_min * (sigma_max / sigma_min) ** (k / (n + 1)) for k in range(n + 1)]


def start_candidates(sigma_max: float, count: int = 6) -> list[float]:
    """Candidate first levels for a teleported start: sigma_max, sigma_max / 2, ... (``count`` of them)."""
    if not (0 < sigma_max < math.inf):
        raise ValueError(f"sigma_max must be finite and > 0, got {sigma_max}")
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    return [sigma_max * 2.0 ** -k for k in range(count)]


def stop_grid(
    denoiser,
    density: ErrorDensity,
    sampler: str | Callable,
    steps: int,
    *,
    base: StopBase | str = StopBase.FITTED,
    order: int | None = None,
    candidates: list[float] | None = None,
    pilots: list[tuple[Callable, ErrorDensity]] | None = None,
    analytic_start: bool = False,
    return_errors: bool = False,
    sampler_options: dict | None = None,
    teleport: GaussianModel | None = None,
    starts: list[float] | None = None,
    screen: int | None = None,
):
    """The (steps + 1,) grid of family ``base`` whose last positive level minimises the sampler's
    measured error on the pilot of ``density`` (module docstring, "Where to stop").

    For each candidate sigma_L the grid sigma_max ... sigma_L, 0 is built, ``sampler`` is run from
    the pilot noise on it, and the RMS error against the pilot's solutions at sigma = 0 is measured;
    the grid with the smallest error is returned. Cost: ``len(candidates)`` sampler runs on the pilot
    batch (about steps x 64 x 19 denoiser rows for the default 64 pilots and range 0.002 -> 80),
    once per (model, sampler, steps).

    Args:
        denoiser: the canonical denoiser the pilot was measured on.
        density: from :func:`error_density` (it keeps the pilot's noise and solutions).
        sampler: a name in ``SAMPLERS`` or a sampler function; ``sampler_options`` are passed to it.
        steps: grid intervals (the last is the jump from sigma_L to 0).
        base: ``"fitted"`` (the density's own grid, for ``order``), ``"karras"`` or ``"logsnr"``.
        order: for ``base="fitted"``: the sampler's order (default: its spec's ``order``).
        candidates: last levels to try, each in [sigma_min, sigma_max) (default :func:`stop_candidates`).
        pilots: (denoiser, density) pairs whose pilots are pooled for the error instead of ``density``'s
            own (e.g. one pilot per class of a conditional model, each with its class's denoiser, while
            ``density`` is their :meth:`ErrorDensity.average`, which gives the grid family).
        analytic_start: choose the stop for the sampler run with :class:`AnalyticStart` (each pilot's
            ``data_mean`` in place of the first evaluation), as it will be sampled.
        return_errors: also return {sigma_L: pilot RMS error} ({(s1, sigma_L): error} with ``teleport``).
        sampler_options: keyword options of the sampler (e.g. ``{"order": 2}``), as it will be sampled.
        teleport: a :class:`GaussianModel` of the data: the first level s1 is chosen too, jointly with
            the last, from ``starts`` (default :func:`start_candidates`); the pilot noise is carried from
            sigma_max to s1 by the Gaussian's exact flow, and with ``analytic_start`` the first
            evaluation is the Gaussian's denoiser (module docstring, "Where to start"). The grid returned
            starts at the chosen s1; ``sample(..., teleport=...)`` carries the noise there. Choosing two
            levels needs a larger pilot than one: build ``density`` with ``pilot=256``.
        screen: measure every candidate on the first ``screen`` pilot samples only (split among pooled
            pilots by their sizes) and the few best of them (``FINALISTS``) on the whole pilot, which
            decides; the errors returned are then the finalists'. None (default): every candidate on the
            whole pilot. The screen ranks candidates whose errors differ by more than its sampling noise,
            the finalists settle the close ones; it cuts the search's cost about len(candidates) x
            pilot / (len(candidates) x screen + FINALISTS x pilot) times.
    """
    fn, spec = resolve_sampler(sampler)
    base = StopBase.parse(base)
    pilots = [(denoiser, density)] if pilots is None else list(pilots)
    _check_pilots(pilots, density, analytic_start)
    order = order if order is not None else spec.order
    if order is None and base is StopBase.FITTED:
        raise ValueError(f"sampler {spec.name!r} has no order for the fitted grid: pass order=, or give the "
                         "function a spec with @diffusionlens.samplers.sampler(order=...)")
    top = density.sigma_max
    if teleport is not None and len(pilots) > 1:
        raise ValueError("teleport takes one pilot: pooled pilots (one per condition) would need one Gaussian "
                         "model per condition")
    firsts = [top] if teleport is None else (start_candidates(top) if starts is None else [float(v) for v in starts])
    _check_levels(firsts, "starts", lambda f: density.sigma_min < f <= top,
                  f"a start must be in (sigma_min, sigma_max] = ({density.sigma_min}, {top}]")
    if _one_step(steps, order if order is not None else 1):
        grid = torch.tensor([top, 0.0], dtype=torch.float64)
        return (grid, {}) if return_errors else grid
    cands = stop_candidates(density.sigma_min, top) if candidates is None else list(candidates)
    _check_levels(cands, "candidates", lambda c: density.sigma_min <= float(c) < top,
                  f"candidate sigma_last must be in [sigma_min, sigma_max) = [{density.sigma_min}, {top})")
    kind = "teleport" if teleport is not None else ("mean" if analytic_start else "noise")
    trials = [Trial(kind, f, float(c)) for f in firsts for c in cands if float(c) < f]
    best, errors = search_stops(fn, steps, trials, density=density, pilots=pilots, base=base, order=order,
                                teleport=teleport, analytic=analytic_start, sampler_options=sampler_options,
                                screen=screen)
    if best is None:
        raise FloatingPointError(f"sampler {spec.name!r} diverged on the pilot for every candidate sigma_last")
    errors = {((t.first, t.last) if teleport is not None else t.last): e for t, e in errors.items()}
    return (best[1], errors) if return_errors else best[1]


@dataclass(frozen=True)
class Trial:
    """One candidate of a stop search: the grid from ``first`` down to ``last`` (then 0), entered by the
    ``start`` named ``"noise"`` (noise * sigma_max), ``"mean"`` (the pilot's data mean as the first
    evaluation) or ``"teleport"`` (the Gaussian's flow from sigma_max down to ``first``)."""

    start: str
    first: float
    last: float


FINALISTS = 3
"""Trials of a screened search (``stop_grid(screen=...)``) measured on the whole pilot."""


def search_stops(sampler: Callable, steps: int, trials: list[Trial], *, density: ErrorDensity, pilots: list,
                 base: StopBase = StopBase.FITTED, order: int | None = None, teleport: GaussianModel | None = None,
                 analytic: bool = True, sampler_options: dict | None = None, screen: int | None = None):
    """The search behind :func:`stop_grid` and :func:`~diffusionlens.samplers.tune`: every trial's grid run
    by ``sampler`` from the pilots' noise through its start, its RMS error against the pilots' solutions
    pooled over ``pilots`` ((denoiser, density) pairs); with ``screen``, every trial on that many pilot
    samples first and the ``FINALISTS`` best on the whole pilot (see :func:`stop_grid`).

    Returns ((best trial, its grid) or None when every trial diverged, {trial: RMS error on the whole
    pilot}). ``analytic``: the teleported start's first evaluation is the Gaussian's denoiser."""
    top = density.sigma_max
    if screen is not None and not (isinstance(screen, int) and screen >= 1):
        raise ValueError(f"screen must be None or an integer >= 1, got {screen!r}")

    def grid_for(t: Trial) -> Tensor:
        if base is StopBase.FITTED:
            return density.grid(steps, order, sigma_last=t.last, sigma_first=t.first)
        return (karras_grid if base is StopBase.KARRAS else logsnr_grid)(steps, t.last, t.first)

    def start_of(t: Trial, p: ErrorDensity):
        if t.start == "teleport":
            return Teleport(teleport, analytic=analytic, first=t.first)
        return MeanStart(p.data_mean) if t.start == "mean" else NoiseStart()

    def run(t: Trial, grid: Tensor, den, p: ErrorDensity, rows: slice) -> Tensor:
        x, den = start_of(t, p).begin(den, p.pilot_noise[rows], grid, top)
        return sampler(den, x, grid, generator=torch.Generator().manual_seed(0), **dict(sampler_options or {}))

    sizes = [len(p.pilot_noise) for _, p in pilots]
    total = sum(sizes)
    heads = sizes if screen is None or screen >= total else [max(1, math.ceil(screen * n / total)) for n in sizes]
    grids = {t: grid_for(t) for t in trials}
    with torch.no_grad():
        def part(t: Trial, lo: list, hi: list) -> tuple[float, int]:
            return _pilot_sq(lambda *a: run(t, grids[t], *a), pilots, lo, hi)

        sums = {t: part(t, [0] * len(sizes), heads) for t in trials}
        if heads != sizes:
            ranked = sorted((t for t in trials if math.isfinite(sums[t][0])), key=lambda t: _rms(sums[t]))
            sums = {t: tuple(map(sum, zip(sums[t], part(t, heads, sizes)))) for t in ranked[:FINALISTS]}
    errors = {t: _rms(sc) for t, sc in sums.items()}
    finite = [t for t in trials if t in errors and math.isfinite(errors[t])]
    if not finite:
        return None, errors
    best = min(finite, key=errors.get)
    return (best, grids[best]), errors


def _check_pilots(pilots: list, density: ErrorDensity, analytic_start: bool) -> None:
    """Every pilot of :func:`stop_grid` keeps its solutions (and data mean, for the analytic start) over the
    density's range."""
    if not pilots:
        raise ValueError("pilots must not be empty")
    for _, p in pilots:
        if p.pilot_noise is None or p.pilot_x0 is None:
            raise ValueError("an ErrorDensity without pilot solutions (an averaged one?): build it with "
                             "error_density, or pass the parts it averages as pilots=[(denoiser, density), ...]")
        if analytic_start and p.data_mean is None:
            raise ValueError("analytic_start needs the pilots' data_mean: build them with error_density")
        if (p.sigma_min, p.sigma_max) != (density.sigma_min, density.sigma_max):
            raise ValueError(f"pilot range [{p.sigma_min}, {p.sigma_max}] differs from the density's "
                             f"[{density.sigma_min}, {density.sigma_max}]")


def _check_levels(levels: list, what: str, ok: Callable, message: str) -> None:
    """A non-empty list of levels, each passing ``ok`` (else the one-line ``message``, naming the level)."""
    if not levels:
        raise ValueError(f"{what} must not be empty")
    for v in levels:
        if not ok(v):
            raise ValueError(f"{message}, got {v}")


def _rms(sq_count: tuple[float, int]) -> float:
    sq, count = sq_count
    return math.sqrt(sq / count) if count else math.inf


def _pilot_sq(run: Callable, pilots: list, lo: list, hi: list) -> tuple[float, int]:
    """Squared error and element count of ``run(denoiser, density, rows)`` against the pilots' own solutions,
    over samples lo[i]:hi[i] of pilot i; (inf, 1) when the sampler diverges."""
    sq, count = 0.0, 0
    try:
        for (den, p), a, b in zip(pilots, lo, hi):
            if b <= a:
                continue
            out = run(den, p, slice(a, b))
            sq += float((out - p.pilot_x0[a:b]).double().pow(2).sum())
            count += out.numel()
        return sq, count
    except FloatingPointError:  # the sampler diverged on this grid: not a candidate
        return math.inf, 1
