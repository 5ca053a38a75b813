"""Samplers: every family over one canonical denoiser, and :func:`sample`, the one-line entry point.

Conventions: a sampler is a plain function
``fn(denoiser, x, sigmas, *, generator=None, callback=None, **options) -> x`` where
``denoiser(x_hat, sigma)`` is the canonical denoiser (sigma passed as a (batch,) tensor),
``x = noise * sigmas[0]`` (batch, ...) in scale-free coordinates, and ``sigmas`` is a decreasing
grid ending at 0 (deterministic samplers also accept an increasing grid from sigma_min > 0, which
integrates the PF-ODE data -> noise). Each family lives in its own module as pure step functions
plus the one loop of :mod:`._common`; :data:`SAMPLERS` maps plain names to them.

=================  ======================================================  =============  ========
name               method                                                  NFE            order
=================  ======================================================  =============  ========
``euler``          Euler on the PF-ODE (= DDIM eta=0)                        steps          1
``heun``           Heun (EDM Alg. 1-2; log-sigma corrector, ``form="edm"``)  2 steps - 1    2
``ddim``           DDIM, ``eta`` in [0, 1]                                   steps          1
``ddpm``           DDPM ancestral, ``variance`` posterior / large            steps          (SDE)
``lms``            linear multistep in sigma, order 4                        steps          4
``deis``           DEIS: multistep in sigma, derivative in log sigma         steps          3
``dpmpp_2m``       DPM-Solver++(2M), log-sigma exponential integrator        steps          2
``dpmpp_3m``       DPM-Solver++(3M)                                          steps          3
``dpmpp_2m_sde``   SDE-DPM-Solver++(2M), eta = 1                             steps          (SDE)
``dpmpp_3m_sde``   SDE-DPM-Solver++(3M), eta = 1                             steps          (SDE)
``unipc``          UniPC (UniP-3 + UniC, bh2)                                steps          4
``euler_maruyama`` reverse SDE, Euler–Maruyama                               steps          (SDE)
``pc``             predictor–corrector, Langevin corrector                   ~2 steps       (SDE)
``langevin``       annealed Langevin dynamics, 10 steps per level            10 steps + 1   (MCMC)
``adaptive``       exponential predictor-corrector, error control            adaptive       4
=================  ======================================================  =============  ========

Each sampler's facts (order, NFE per step, deterministic, preferred grid, adaptive) are its
:class:`SamplerSpec` (``fn.spec``, :mod:`.spec`); adding a sampler is one module and one line in
:mod:`.registry`. :func:`resolve` turns a request (sampler, ``steps`` or an ``nfe`` budget, a grid, a
start, a :class:`SamplingPlan`) into a grid and a start; :func:`sample` resolves and runs. Defaults:
``deis`` (:data:`DEFAULT_SAMPLER`) on its preferred grid (Karras; the exponential integrators take the
uniform log-SNR grid); how they were chosen, and the accuracy against diffusers and k-diffusion, is in
benchmarks/samplers.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._common import AnalyticStart, Counted, NoiseStream, check_grid, check_output, noise_seeds, randn
from .adaptive import AdaptiveMethod, adaptive
from .ddim import Variance, ddim, ddim_update, ddpm
from .dpmpp import SecondOrder, dpmpp, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, dpmpp_3m_sde, dpmpp_update
from .euler import HeunForm, churn, euler, euler_update, heun, heun_update
from .fitted import (
    ErrorDensity,
    StopBase,
    data_mean,
    error_density,
    fitted_grid,
    start_candidates,
    stop_candidates,
    stop_grid,
)
from .gaussian import GaussianModel, gaussian_model
from .lms import Basis, deis, lms, lms_coefficients, lms_coefficients_log, lms_update
from .plan import DEFAULT_NFES, SamplingPlan, Tuned, tune
from .registry import DEFAULT_SAMPLER, SAMPLERS, SPECS, resolve_sampler
from .resolve import DEFAULT_STEPS, PILOT_GRIDS, SIGMA_MAX, SIGMA_MIN, Resolved, resolve
from .sde import LangevinStep, em_update, euler_maruyama, langevin, langevin_update, pc
from .spec import Grid, SamplerSpec, make_grid, sampler, spec_of
from .starts import MeanStart, NoiseStart, Start, Teleport
from .unipc import unic_update, unip_update, unipc

__all__ = [
    "SAMPLERS",
    "SPECS",
    "DETERMINISTIC",
    "DEFAULT_SAMPLER",
    "DEFAULT_GRID",
    "DEFAULT_STEPS",
    "SIGMA_MIN",
    "SIGMA_MAX",
    "RECOMMENDED_GRID",
    "ORDER",
    "Grid",
    "SamplerSpec",
    "sampler",
    "spec_of",
    "resolve_sampler",
    "Resolved",
    "resolve",
    "PILOT_GRIDS",
    "SamplingPlan",
    "Tuned",
    "tune",
    "DEFAULT_NFES",
    "Start",
    "NoiseStart",
    "MeanStart",
    "Teleport",
    "SampleInfo",
    "make_grid",
    "fitted_grid",
    "error_density",
    "ErrorDensity",
    "stop_grid",
    "stop_candidates",
    "start_candidates",
    "StopBase",
    "GaussianModel",
    "gaussian_model",
    "data_mean",
    "AnalyticStart",
    "sample",
    "randn",
    "noise_seeds",
    "NoiseStream",
    "Counted",
    "check_output",
    "check_grid",
    "Variance",
    "SecondOrder",
    "HeunForm",
    "LangevinStep",
    "AdaptiveMethod",
    "adaptive",
    "ddim",
    "ddpm",
    "dpmpp",
    "dpmpp_2m",
    "dpmpp_3m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "euler",
    "heun",
    "lms",
    "unipc",
    "euler_maruyama",
    "pc",
    "langevin",
    "ddim_update",
    "dpmpp_update",
    "euler_update",
    "heun_update",
    "churn",
    "lms_coefficients",
    "lms_coefficients_log",
    "deis",
    "Basis",
    "lms_update",
    "em_update",
    "langevin_update",
    "unip_update",
    "unic_update",
]

# views of the specs, kept for callers of the earlier names
DETERMINISTIC = frozenset(name for name, spec in SPECS.items() if spec.deterministic)
"""Samplers that are deterministic with default options (and accept increasing grids)."""
ORDER: dict[str, int] = {name: spec.order for name, spec in SPECS.items() if spec.order is not None}
"""Each registered sampler's order (its spec's ``order``)."""
DEFAULT_GRID = Grid.KARRAS
"""The grid family of samplers that prefer no other: Karras et al. 2022 (rho = 7), then 0."""
RECOMMENDED_GRID: dict[str, Grid] = {name: spec.grid for name, spec in SPECS.items() if spec.grid is not DEFAULT_GRID}
"""Samplers whose preferred grid is not :data:`DEFAULT_GRID` (their spec's ``grid``)."""


@dataclass(frozen=True)
class SampleInfo:
    """What :func:`sample` did.

    Attributes:
        nfe: denoiser evaluations per sample (mean over the batch; counted by a wrapper).
        calls: batched denoiser calls.
        sigmas: (steps + 1,) float64 grid used.
        nfe_per_sample: (batch,) per-sample NFE when it varies (adaptive sampler), else None.
        start: the start used (measured: its mean or Gaussian filled in).
    """

    nfe: float
    calls: int
    sigmas: Tensor
    nfe_per_sample: Tensor | None = None
    start: Start | None = None


def sample(
    denoiser,
    noise: Tensor,
    *,
    sampler: str | Callable | None = None,
    steps: int | None = None,
    nfe: int | None = None,
    grid: Grid | str | Tensor | None = None,
    start: Start | None = None,
    plan=None,
    generator: torch.Generator | Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
    return_info: bool = False,
    **options,
):
    """Draw samples: resolve the grid and the start (:func:`resolve`), run the sampler, count the NFE.

    Args:
        denoiser: canonical D(x_hat, sigma) — a callable or a :class:`diffusionlens.Denoiser` of any process.
        noise: (batch, ...) standard normal in the output shape (see :func:`randn` for batch-invariant noise).
        sampler: a name in :data:`SAMPLERS` or a sampler function (with a spec, :func:`sampler`); None
            (default): the plan's best tuned sampler at this budget, else :data:`DEFAULT_SAMPLER`.
        steps: grid intervals; or ``nfe``: an evaluation budget (the most steps whose NFE is at most it).
            Neither: the plan's, else :data:`DEFAULT_STEPS`. An adaptive sampler takes neither.
        grid: None (the plan's tuned grid, else the sampler's preferred family), a :class:`Grid` name
            (``"fitted"`` and ``"fitted-stop"`` run a pilot, not counted in the NFE, on batches other than
            ``noise``'s: for conditioning bound to a batch, or to sample many batches, resolve once with
            :func:`resolve` or :func:`tune` and pass the grid or the plan), or an explicit decreasing
            (steps + 1,) tensor ending at 0.
        start: :class:`NoiseStart` (default), :class:`MeanStart` (the first evaluation replaced by the data
            mean: one NFE fewer) or :class:`Teleport` (start below sigma_max by the flow of the data's
            Gaussian).
        plan: a :class:`SamplingPlan` of this denoiser (:func:`tune`): its tuned grid and start for this
            sampler and NFE, when it has one, and its sigma range.
        generator: torch.Generator (or (batch,) int64 per-sample seeds) for stochastic samplers.
        callback: called after every step with a dict (i, x, sigma, sigma_next, denoised).
        progress: show a tqdm progress bar.
        return_info: also return a :class:`SampleInfo` (NFE, grid, start).
        **options: the resolver's ``sigma_min``, ``sigma_max``, ``rho``, ``spacing``, ``pilot``; the
            earlier ``analytic_start``, ``data_mean`` and ``teleport`` (mapped onto a start); the rest goes
            to the sampler (e.g. ``eta``, ``s_churn``, ``rtol``).
    Returns x0 samples shaped like ``noise`` (and the info if ``return_info``).
    """
    if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 1:
        raise TypeError(f"noise must be a floating-point tensor of shape (batch, ...), got {noise!r:.80}")
    if any(k in options for k in ("analytic_start", "data_mean", "teleport")):
        if start is not None:
            raise ValueError("pass start=, or the earlier analytic_start/data_mean/teleport, not both")
        start = _start_of(options.pop("analytic_start", False), options.pop("data_mean", None),
                          options.pop("teleport", False))
    kw = {k: options.pop(k) for k in ("sigma_min", "sigma_max", "rho", "spacing", "pilot") if k in options}
    r = resolve(denoiser, noise.shape[1:], sampler, steps=steps, nfe=nfe, grid=grid, start=start, plan=plan,
                options=options, device=noise.device, dtype=noise.dtype, **kw)
    counted = Counted(denoiser)
    x, model = r.start.begin(counted, noise, r.sigmas, r.sigma_max)
    per_sample: list[Tensor] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(r.sigmas) - 1, desc=r.spec.name, leave=False)

    def cb(info: dict) -> None:
        if "nfe" in info:
            per_sample.append(info["nfe"])
        if bar is not None:
            bar.update(len(r.sigmas) - 1 if "nfe" in info else 1)
            bar.set_postfix(sigma=f"{info['sigma_next']:.3g}", nfe=counted.calls)
        if callback is not None:
            callback(info)

    try:
        out = r.sampler(model, x, r.sigmas, generator=generator, callback=cb, **r.options)
    finally:
        if bar is not None:
            bar.close()
    if not return_info:
        return out
    B = noise.shape[0]
    return out, SampleInfo(counted.rows / B if B else 0.0, counted.calls, r.sigmas,
                           per_sample[-1] if per_sample else None, r.start)


def _start_of(analytic_start: bool, mean: Tensor | None, teleport) -> Start:
    """The start named by the earlier keywords of :func:`sample` (``analytic_start``, ``data_mean``,
    ``teleport``: True measures the Gaussian, or a :class:`GaussianModel`)."""
    if mean is not None and not analytic_start:
        raise ValueError("data_mean is only used with analytic_start=True")
    if teleport is not False:
        if not isinstance(teleport, (bool, GaussianModel)):
            raise TypeError(f"teleport must be a bool or a GaussianModel, got {type(teleport).__name__}")
        if mean is not None:
            raise ValueError("data_mean is not used with teleport: the Gaussian model carries the mean")
        return Teleport(None if teleport is True else teleport, analytic=bool(analytic_start))
    return MeanStart(mean) if analytic_start else NoiseStart()
