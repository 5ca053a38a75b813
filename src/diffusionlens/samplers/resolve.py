"""The one grid resolver: a sampler, a step budget, a grid request and a start -> the grid and the start.

:func:`resolve` is what :func:`~diffusionlens.samplers.sample`, the run layer and the benchmarks call to
turn a request (a named grid family, a fitted grid, a fitted grid with its stop chosen on the pilot, an
explicit grid; a plain, mean or teleported start; a stored :class:`~diffusionlens.samplers.SamplingPlan`)
into the (steps + 1,) float64 grid and a start measured on the denoiser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..model import Denoiser
from ..processes import Spacing
from ._common import check_grid
from .fitted import ErrorDensity, StopBase, error_density, stop_grid
from .registry import DEFAULT_SAMPLER, resolve_sampler
from .spec import Grid, SamplerSpec, make_grid
from .starts import NoiseStart, Start, Teleport

__all__ = ["Resolved", "resolve", "DEFAULT_STEPS", "SIGMA_MIN", "SIGMA_MAX", "LATE_STEPS", "LATE_SIGMA_MIN"]

DEFAULT_STEPS = 16
"""Grid intervals when neither ``steps`` nor ``nfe`` is given."""
SIGMA_MIN = 0.002
"""Default last positive level of the grid (EDM's), for the fitted grids' range, the adaptive sampler, and
named grid families of fewer than :data:`LATE_STEPS` intervals."""
LATE_STEPS = 10
LATE_SIGMA_MIN = 0.01
"""Default last positive level of a named grid family (Karras, log-SNR, time) of at least
:data:`LATE_STEPS` intervals, for deterministic samplers: the steps EDM's 0.002 spends below 0.01,
where the flow barely moves, are worth more higher up (chosen on the standard oracle mixtures,
confirmed on held-out ones for the default sampler at NFE 10-32: benchmarks/samplers.md, "The default
last level"). Fewer steps keep 0.002."""
SIGMA_MAX = 80.0
"""Default first level of the grid (EDM's)."""
PILOT_GRIDS = {Grid.FITTED: StopBase.FITTED, Grid.FITTED_STOP: StopBase.FITTED, Grid.KARRAS_STOP: StopBase.KARRAS,
               Grid.LOGSNR_STOP: StopBase.LOGSNR}
"""The grids measured on a pilot solve, and the family a stopped one is cut from."""


@dataclass(frozen=True)
class Resolved:
    """A resolved sampling request: run ``sampler`` over ``sigmas`` from ``start``.

    Attributes:
        sampler: the sampler function; spec: its :class:`SamplerSpec`.
        sigmas: (steps + 1,) float64 decreasing grid ending at 0 (for an adaptive sampler: its ends).
        start: the start, measured on the denoiser (its mean or Gaussian filled in).
        sigma_max: the level the noise is scaled to (the grid's top, or above it for a teleported start).
        options: keyword options passed to the sampler.
    """

    sampler: Callable
    spec: SamplerSpec
    sigmas: Tensor
    start: Start
    sigma_max: float
    options: dict = field(default_factory=dict)


def resolve(
    denoiser,
    shape,
    sampler: str | Callable | None = None,
    *,
    steps: int | None = None,
    nfe: int | None = None,
    grid: Grid | str | Tensor | None = None,
    start: Start | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    plan=None,
    rho: float = 7.0,
    spacing: Spacing | str = Spacing.LEADING,
    options: dict | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    pilot: int | None = None,
) -> Resolved:
    """Resolve a sampling request into a grid and a start (see the module docstring).

    Args:
        denoiser: canonical D(x_hat, sigma) (a :class:`~diffusionlens.Denoiser` gives its process's range).
        shape: the shape of one sample. device, dtype: of the sampling batch (for the measured starts).
        sampler: a name in ``SAMPLERS`` or a sampler function (its spec from ``fn.spec``); None: the
            plan's best tuned sampler at this budget (``nfe``, else ``steps``), else ``DEFAULT_SAMPLER``.
        steps: grid intervals; nfe: an evaluation budget instead (the most steps whose NFE fits it, the
            start's saved evaluation included). Neither: the plan's or :data:`DEFAULT_STEPS`.
        grid: None (the plan's tuned grid for this sampler and NFE when there is one, else the spec's
            preferred family), a :class:`Grid` name, or an explicit decreasing tensor ending at 0.
        start: :class:`NoiseStart` (default), :class:`MeanStart` or :class:`Teleport`.
        sigma_min, sigma_max: the grid's range (default :data:`SIGMA_MAX` and, for named families,
            :data:`SIGMA_MIN` below :data:`LATE_STEPS` intervals, :data:`LATE_SIGMA_MIN` from there for
            deterministic samplers; the
            fitted grids' pilot range and the adaptive sampler's end: :data:`SIGMA_MIN` or the plan's).
        plan: a :class:`~diffusionlens.samplers.SamplingPlan` measured on this denoiser, or None.
        options: the sampler's keyword options (e.g. ``eta``), as it will be run (the stop is chosen for them).
        pilot: for the grids measured on a pilot (fitted, and the ``-stop`` grids, whose last level is chosen
            on it for this sampler): its number of samples (default 64; 256 with a teleported start, which
            chooses two levels on it); or a measured :class:`ErrorDensity` over the same range (no new pilot);
            or a list of (denoiser, ErrorDensity) pairs, one per condition of a conditional model, whose
            pilots are pooled for the stop and averaged for the fitted family.
    """
    if sampler is None:  # the plan's best tuned sampler at this budget, else the default
        budget = nfe if nfe is not None else (DEFAULT_STEPS if steps is None else steps)
        sampler = (plan.best_sampler(budget) if plan is not None else None) or DEFAULT_SAMPLER
    fn, spec = resolve_sampler(sampler)
    options = dict(options or {})
    if steps is not None and nfe is not None:
        raise ValueError(f"pass steps or nfe, not both; got steps={steps}, nfe={nfe}")
    if plan is not None and grid is None and not isinstance(start, Teleport) and not spec.adaptive:
        tuned = plan.lookup(spec.name, steps=steps, nfe=nfe, start=start, options=options)
        if tuned is not None:
            return replace(tuned, sampler=fn, spec=spec, options=options)
    if plan is not None:
        sigma_max = plan.sigma_max if sigma_max is None else sigma_max
    named_min = sigma_min  # None: the rule by step count below
    sigma_min = (plan.sigma_min if plan is not None else SIGMA_MIN) if sigma_min is None else float(sigma_min)
    sigma_max = SIGMA_MAX if sigma_max is None else float(sigma_max)
    start = NoiseStart() if start is None else start
    if not hasattr(start, "begin"):
        raise TypeError(f"start must be NoiseStart(), MeanStart(...) or Teleport(...), got {start!r:.80}")
    like = torch.zeros((1, *tuple(shape)), dtype=dtype, device=device)
    if spec.adaptive:
        return _adaptive(fn, spec, grid, steps, nfe, start, sigma_min, sigma_max, options)
    if nfe is not None:
        steps = spec.steps_for_nfe(nfe + 1 if start.analytic else nfe)
    steps = DEFAULT_STEPS if steps is None else steps
    start = start.prepare(denoiser, like, sigma_max)
    if isinstance(grid, Tensor):
        sigmas, density = _explicit(grid), None
    else:
        g = Grid.parse(grid) if grid is not None else spec.grid
        sigmas, density = _family(denoiser, shape, g, fn, spec, steps, start, sigma_min, sigma_max, named_min,
                                  plan=plan, rho=rho, spacing=spacing, options=options, device=device, dtype=dtype,
                                  pilot=pilot)
    start = start.measured(denoiser, like, sigmas, density)
    return Resolved(fn, spec, sigmas, start, sigma_max, options)


def _explicit(grid: Tensor) -> Tensor:
    """An explicit grid: checked, decreasing, ending at 0."""
    sigmas = check_grid(grid, allow_increasing=False)
    if sigmas[-1].item() != 0:
        raise ValueError(f"sample() returns data, so an explicit grid must end at 0; got sigmas[-1] = "
                         f"{sigmas[-1].item()}")
    return sigmas


def _family(denoiser, shape, g: Grid, fn, spec: SamplerSpec, steps: int, start, sigma_min: float, sigma_max: float,
            named_min: float | None, *, plan, rho, spacing, options, device, dtype, pilot):
    """The grid of family ``g`` (a named family or a fitted one) and the pilot's density (fitted only)."""
    process = denoiser.process if isinstance(denoiser, Denoiser) else None
    if process is not None and g is not Grid.TIMESTEPS and sigma_max > process.sigma_max:
        raise ValueError(f"sigma_max={sigma_max} exceeds the model's process range (sigma_max="
                         f"{process.sigma_max:.6g}); pass sigma_max <= {process.sigma_max:.6g}")
    top = start.first if isinstance(start, Teleport) and start.first is not None else sigma_max
    if isinstance(start, Teleport) and start.first is None and (g not in PILOT_GRIDS or g is Grid.FITTED):
        raise ValueError(f"a teleported start on grid {g.value!r} needs its first level: Teleport(first=...), "
                         "or a -stop grid such as grid='fitted-stop' (which chooses it on the pilot)")
    if g not in PILOT_GRIDS:
        if named_min is None:
            # deterministic samplers only: the level is chosen for the error against the exact flow;
            # a stochastic sampler's samples would lose within-mode spread to the earlier final denoising
            named_min = LATE_SIGMA_MIN if steps >= LATE_STEPS and spec.deterministic else SIGMA_MIN
        return make_grid(g, steps, float(named_min), top, process=process, rho=rho, spacing=spacing), None
    if spec.order is None and g in (Grid.FITTED, Grid.FITTED_STOP):
        raise ValueError(f"sampler {spec.name!r} has no order for a fitted grid: give it a spec with "
                         "@diffusionlens.samplers.sampler(order=...)")
    density, pilots = _pilot(denoiser, shape, g, start, sigma_min, sigma_max, plan=plan, device=device, dtype=dtype,
                             pilot=pilot)
    if g is Grid.FITTED:
        return density.grid(steps, spec.order, sigma_first=top), density
    tp = start.gaussian
    sigmas = stop_grid(denoiser, density, fn, steps, base=PILOT_GRIDS[g], order=spec.order,
                       analytic_start=start.analytic, sampler_options=options, teleport=tp, pilots=pilots,
                       starts=None if tp is None or start.first is None else [start.first])
    return sigmas, density


def _pilot(denoiser, shape, g: Grid, start, sigma_min: float, sigma_max: float, *, plan, device, dtype, pilot):
    """The pilot's density for a grid that needs one, and the (denoiser, density) pilots its stop is chosen on
    (None: the density's own); see :func:`resolve`'s ``pilot``."""
    if isinstance(pilot, ErrorDensity):
        density, pilots = pilot, None
    elif isinstance(pilot, (list, tuple)):
        pilots = list(pilot)
        if not pilots or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], ErrorDensity)
                                 for p in pilots):
            raise TypeError("pilot must be a number of samples, an ErrorDensity, or a non-empty list of "
                            "(denoiser, ErrorDensity) pairs")
        density = pilots[0][1] if len(pilots) == 1 else ErrorDensity.average([p for _, p in pilots])
    elif g is Grid.FITTED and plan is not None and (plan.sigma_min, plan.sigma_max) == (sigma_min, sigma_max):
        return plan.density, None  # the stored pilot's density: no new pilot
    else:
        return error_density(denoiser, shape, sigma_min, sigma_max, device=device, dtype=dtype,
                             pilot=pilot or (256 if isinstance(start, Teleport) else 64)), None
    if (density.sigma_min, density.sigma_max) != (sigma_min, sigma_max):
        raise ValueError(f"the pilot's range [{density.sigma_min}, {density.sigma_max}] differs from the grid's "
                         f"[{sigma_min}, {sigma_max}]")
    return density, pilots


def _adaptive(fn, spec, grid, steps, nfe, start, sigma_min, sigma_max, options) -> Resolved:
    """An adaptive sampler chooses its own steps: only the ends of the grid apply."""
    if steps is not None or nfe is not None:
        raise ValueError(f"sampler {spec.name!r} chooses its own steps: steps={steps}, nfe={nfe} do not apply "
                         "(set its tolerances, e.g. rtol=, atol=)")
    if not isinstance(start, NoiseStart):
        raise ValueError(f"sampler {spec.name!r} chooses its own steps from sigma_max: start {start!r:.60} "
                         "does not apply")
    if isinstance(grid, Tensor):
        sigmas = check_grid(grid, allow_increasing=False)
    elif grid is None or Grid.parse(grid) in (Grid.KARRAS, Grid.LOGSNR):
        sigmas = torch.tensor([sigma_max, sigma_min, 0.0], dtype=torch.float64)
    else:
        raise ValueError(f"sampler {spec.name!r} chooses its own steps between sigma_max and sigma_min: "
                         f"grid {Grid.parse(grid).value!r} does not apply")
    return Resolved(fn, spec, sigmas, start, float(sigmas[0]), options)
