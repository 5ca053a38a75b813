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
``adaptive``       exponential RK 3(2) in log sigma with error control       adaptive       3
=================  ======================================================  =============  ========

Defaults of :func:`sample`: ``deis`` on the Karras grid (:data:`DEFAULT_SAMPLER`, :data:`DEFAULT_GRID`),
the exponential integrators on the uniform log-SNR grid (:data:`RECOMMENDED_GRID`); how they were
chosen, and the accuracy against diffusers and k-diffusion, is in benchmarks/samplers.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._util import Choice
from ..model import Denoiser
from ..processes import Discrete, Process, Spacing, karras_grid, logsnr_grid, time_grid, timestep_grid
from . import fitted as _fitted
from ._common import AnalyticStart, Counted, NoiseStream, check_grid, noise_seeds, randn
from .adaptive import AdaptiveMethod, adaptive
from .ddim import Variance, ddim, ddim_update, ddpm
from .dpmpp import SecondOrder, dpmpp, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, dpmpp_3m_sde, dpmpp_update
from .euler import HeunForm, churn, euler, euler_update, heun, heun_update
from .fitted import (
    ORDER,
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
from .sde import LangevinStep, em_update, euler_maruyama, langevin, langevin_update, pc
from .unipc import unic_update, unip_update, unipc

__all__ = [
    "SAMPLERS",
    "DETERMINISTIC",
    "DEFAULT_SAMPLER",
    "DEFAULT_GRID",
    "RECOMMENDED_GRID",
    "Grid",
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
    "ORDER",
    "sample",
    "randn",
    "noise_seeds",
    "NoiseStream",
    "Counted",
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

SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": euler,
    "heun": heun,
    "ddim": ddim,
    "ddpm": ddpm,
    "lms": lms,
    "deis": deis,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "unipc": unipc,
    "euler_maruyama": euler_maruyama,
    "pc": pc,
    "langevin": langevin,
    "adaptive": adaptive,
}
"""Every sampler by name. Each runs through :func:`sample` with its default options."""

DETERMINISTIC = frozenset({"euler", "heun", "ddim", "lms", "deis", "dpmpp_2m", "dpmpp_3m", "unipc", "adaptive"})
"""Samplers that are deterministic with default options (and accept increasing grids)."""


class Grid(Choice, what="grid"):
    """Noise-level grids (:mod:`diffusionlens.processes`)."""

    KARRAS = "karras"  # Karras et al. 2022 eq. 5, rho = 7
    LOGSNR = "logsnr"  # uniform in log sigma (log-SNR)
    TIME = "time"  # uniform in the model's process time t (needs a Denoiser)
    TIMESTEPS = "timesteps"  # integer timesteps of a Discrete model (exact table entries)
    FITTED = "fitted"  # equidistributes the local error measured by a pilot solve (fitted_grid)
    FITTED_STOP = "fitted-stop"  # the fitted grid, its last level chosen on the pilot for the sampler (stop_grid)


DEFAULT_SAMPLER = "deis"
"""The recommended sampler: DEIS (multistep, noise prediction interpolated in log sigma), 1 NFE per step.
Chosen on the samplers benchmark (RMSE against the exact PF-ODE flow at NFE 4-32) and confirmed on
mixtures not used for the choice; ``unipc`` is more accurate from about 32 steps. See
benchmarks/samplers.md."""
DEFAULT_GRID = Grid.KARRAS
"""The recommended grid: Karras et al. 2022 (rho = 7) from sigma_max to sigma_min, then 0."""

RECOMMENDED_GRID: dict[str, Grid] = {
    name: Grid.LOGSNR for name in ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc")
}
"""Samplers whose recommended grid is not :data:`DEFAULT_GRID`: the exponential integrators, built in
log-SNR time (their local error depends only on the log-SNR step), take the uniform log-SNR grid; on
the Karras grid their RMSE at NFE <= 16 is 2-4x higher on every benchmark mixture. ``sample(grid=None)``
(the default) uses this table, then :data:`DEFAULT_GRID`."""


@dataclass(frozen=True)
class SampleInfo:
    """What :func:`sample` did.

    Attributes:
        nfe: denoiser evaluations per sample (mean over the batch; counted by a wrapper).
        calls: batched denoiser calls.
        sigmas: (steps + 1,) float64 grid used.
        nfe_per_sample: (batch,) per-sample NFE when it varies (adaptive sampler), else None.
    """

    nfe: float
    calls: int
    sigmas: Tensor
    nfe_per_sample: Tensor | None = None


def make_grid(
    grid: Grid | str,
    steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    *,
    process: Process | None = None,
    rho: float = 7.0,
    spacing: Spacing | str = Spacing.LEADING,
) -> Tensor:
    """The (steps + 1,) float64 decreasing grid ending at 0 named by ``grid``."""
    grid = Grid.parse(grid)
    if grid in (Grid.FITTED, Grid.FITTED_STOP):
        raise ValueError(f"grid {grid.value!r} needs the denoiser: use fitted_grid or stop_grid")
    if grid is Grid.KARRAS:
        return karras_grid(steps, sigma_min, sigma_max, rho)
    if grid is Grid.LOGSNR:
        return logsnr_grid(steps, sigma_min, sigma_max)
    if grid is Grid.TIME:
        if process is None:
            raise ValueError("grid 'time' needs the model's process: pass a diffusionlens Denoiser")
        return time_grid(process, steps, sigma_min, sigma_max)
    if not isinstance(process, Discrete):
        raise ValueError(f"grid 'timesteps' needs a Denoiser of a Discrete process, got process {process!r}")
    return timestep_grid(process, steps, spacing)


def _resolve_sampler(sampler) -> tuple[str, Callable]:
    if callable(sampler):
        return getattr(sampler, "__name__", "sampler"), sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    return sampler, SAMPLERS[sampler]


def sample(
    denoiser,
    noise: Tensor,
    *,
    sampler: str | Callable = DEFAULT_SAMPLER,
    steps: int = 16,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    grid: Grid | str | Tensor | None = None,
    generator: torch.Generator | Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
    return_info: bool = False,
    rho: float = 7.0,
    spacing: Spacing | str = Spacing.LEADING,
    analytic_start: bool = False,
    data_mean: Tensor | None = None,
    teleport: bool | GaussianModel = False,
    **options,
):
    """Draw samples: build the grid, scale the noise, run the sampler, count the NFE.

    Args:
        denoiser: canonical D(x_hat, sigma) — a callable or a :class:`diffusionlens.Denoiser` of any process.
        noise: (batch, ...) standard normal in the output shape (see :func:`randn` for batch-invariant noise).
        sampler: a name in :data:`SAMPLERS` or a sampler function.
        steps: number of grid intervals (the NFE of single-evaluation samplers).
        sigma_min, sigma_max: noise-level range of the grid (ignored by ``grid="timesteps"``).
        grid: None (default: the sampler's recommended grid, :data:`RECOMMENDED_GRID`, else
            :data:`DEFAULT_GRID` = ``"karras"``), ``"karras"`` (rho = ``rho``), ``"logsnr"``,
            ``"time"`` (the model's process time),
            ``"timesteps"`` (a Discrete model's integer timesteps, with ``spacing``), ``"fitted"``
            (:func:`fitted_grid` for this sampler's order: a pilot solve of 64 samples, not counted
            in the NFE, which calls ``denoiser`` on batches other than ``noise``'s — for conditioning
            bound to a batch, build the grid with :func:`error_density` per condition; to sample many
            batches, call :func:`fitted_grid` once and pass its result), ``"fitted-stop"`` (the
            fitted grid with its last positive level chosen by running this sampler on the pilot,
            :func:`stop_grid`: about 19 more sampler runs on the pilot batch, not counted either), or
            an explicit decreasing (steps + 1,) tensor ending at 0.
        generator: torch.Generator (or (batch,) int64 per-sample seeds) for stochastic samplers.
        callback: called after every step with a dict (i, x, sigma, sigma_next, denoised).
        progress: show a tqdm progress bar.
        return_info: also return a :class:`SampleInfo` (NFE, grid).
        rho: Karras grid exponent. spacing: timestep spacing for ``grid="timesteps"``.
        analytic_start: replace the first evaluation, at sigma_max, by the data mean (:class:`AnalyticStart`):
            one NFE fewer for the same grid (``steps - 1`` for single-evaluation samplers). The mean is
            ``data_mean`` if given, else the fitted pilot's (``grid="fitted"``/``"fitted-stop"``, whose stop is
            then chosen for the analytic start), else :func:`data_mean` (64 evaluations in one call, not
            counted).
        data_mean: E[x0] for ``analytic_start``, of shape ``noise.shape[1:]`` or, per sample (e.g. each
            sample's class mean), ``noise.shape``.
        teleport: start the grid at a level s1 below sigma_max, reached from ``noise * sigma_max`` by the
            exact flow of a Gaussian with the data's mean and covariance (:mod:`.gaussian`; no evaluations):
            True measures that :class:`GaussianModel` on the denoiser (:func:`gaussian_model`, d
            vector-Jacobian products at 16 points, not counted), or pass one. With ``grid="fitted-stop"``
            s1 is chosen on the pilot together with the last level (the pilot is then 256 samples); with an
            explicit grid, s1 = ``grid[0]`` <= sigma_max. With ``analytic_start`` the first evaluation, at
            s1, is the Gaussian's denoiser.
        **options: passed to the sampler (e.g. ``eta``, ``s_churn``, ``rtol``).
    Returns x0 samples shaped like ``noise`` (and the info if ``return_info``).
    """
    if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.ndim < 1:
        raise TypeError(f"noise must be a floating-point tensor of shape (batch, ...), got {noise!r:.80}")
    name, fn = _resolve_sampler(sampler)
    process = denoiser.process if isinstance(denoiser, Denoiser) else None
    if analytic_start and fn is adaptive:
        raise ValueError("analytic_start applies to fixed grids; the adaptive sampler starts with its own evaluation")
    if data_mean is not None and not analytic_start:
        raise ValueError("data_mean is only used with analytic_start=True")
    if teleport is not False and fn is adaptive:
        raise ValueError("teleport applies to fixed grids; the adaptive sampler chooses its own steps from sigma_max")
    if teleport is not False and data_mean is not None:
        raise ValueError("data_mean is not used with teleport: the Gaussian model carries the mean")
    if not (isinstance(teleport, (bool, GaussianModel))):
        raise TypeError(f"teleport must be a bool or a GaussianModel, got {type(teleport).__name__}")
    gauss = None
    if teleport is True:
        gauss = gaussian_model(denoiser, noise.shape[1:], sigma_max, device=noise.device, dtype=noise.dtype)
    elif isinstance(teleport, GaussianModel):
        gauss = teleport
    if data_mean is not None and tuple(data_mean.shape) not in (tuple(noise.shape[1:]), tuple(noise.shape)):
        raise ValueError(f"data_mean must have the shape of one sample {tuple(noise.shape[1:])} or of the batch "
                         f"{tuple(noise.shape)}, got {tuple(data_mean.shape)}")
    mean = data_mean
    if isinstance(grid, Tensor):
        sigmas = check_grid(grid, allow_increasing=False)
        if sigmas[-1].item() != 0:
            raise ValueError(
                f"sample() returns data, so an explicit grid must end at 0; got sigmas[-1] = {sigmas[-1].item()}"
            )
        if gauss is not None and not sigmas[0].item() <= sigma_max:
            raise ValueError(f"a teleported grid starts at or below sigma_max={sigma_max}, got grid[0] = "
                             f"{sigmas[0].item()}")
    else:
        g = Grid.parse(grid) if grid is not None else RECOMMENDED_GRID.get(name, DEFAULT_GRID)
        if process is not None and g is not Grid.TIMESTEPS and sigma_max > process.sigma_max:
            raise ValueError(
                f"sigma_max={sigma_max} exceeds the model's process range (sigma_max={process.sigma_max:.6g}); "
                f"pass sigma_max <= {process.sigma_max:.6g}"
            )
        if gauss is not None and g is not Grid.FITTED_STOP:
            raise ValueError(f"teleport needs grid='fitted-stop' (which chooses where to start) or an explicit "
                             f"grid starting below sigma_max, got grid={g.value!r}")
        if g in (Grid.FITTED, Grid.FITTED_STOP) and fn is not adaptive:
            dens = error_density(denoiser, noise.shape[1:], sigma_min, sigma_max, device=noise.device,
                                 dtype=noise.dtype, pilot=64 if gauss is None else 256)
            if mean is None and analytic_start:
                mean = dens.data_mean
            if g is Grid.FITTED:
                sigmas = dens.grid(steps, ORDER.get(name, 3))
            else:
                sigmas = stop_grid(denoiser, dens, fn, steps, order=ORDER.get(name, 3),
                                   analytic_start=analytic_start, sampler_options=options, teleport=gauss)
        elif fn is adaptive and g is not Grid.TIMESTEPS:
            # the adaptive solver chooses its own steps between the ends; `steps` does not apply
            sigmas = torch.tensor([sigma_max, sigma_min, 0.0], dtype=torch.float64)
        else:
            sigmas = make_grid(g, steps, sigma_min, sigma_max, process=process, rho=rho, spacing=spacing)
    counted = Counted(denoiser)
    model = counted
    if analytic_start and len(sigmas) < 3:
        raise ValueError("analytic_start needs at least 2 steps: with one, the sample would be the data mean")
    if analytic_start:
        if gauss is not None:
            mean = gauss
        elif mean is None:
            mean = _fitted.data_mean(denoiser, noise.shape[1:], float(sigmas[0]), device=noise.device,
                                     dtype=noise.dtype)
        model = AnalyticStart(counted, mean, float(sigmas[0]))
    if gauss is None:
        x = noise * float(sigmas[0])
    else:
        x = gauss.flow(noise * sigma_max, sigma_max, float(sigmas[0]))
    per_sample: list[Tensor] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sigmas) - 1, desc=name, leave=False)

    def cb(info: dict) -> None:
        if "nfe" in info:
            per_sample.append(info["nfe"])
        if bar is not None:
            bar.update(len(sigmas) - 1 if "nfe" in info else 1)
            bar.set_postfix(sigma=f"{info['sigma_next']:.3g}", nfe=counted.calls)
        if callback is not None:
            callback(info)

    try:
        out = fn(model, x, sigmas, generator=generator, callback=cb, **options)
    finally:
        if bar is not None:
            bar.close()
    if not return_info:
        return out
    B = noise.shape[0]
    info = SampleInfo(
        nfe=counted.rows / B if B else 0.0,
        calls=counted.calls,
        sigmas=sigmas,
        nfe_per_sample=per_sample[-1] if per_sample else None,
    )
    return out, info
