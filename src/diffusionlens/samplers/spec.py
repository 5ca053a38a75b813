"""What a sampler says about itself (:class:`SamplerSpec`), and the noise-level grids it can ask for.

Every sampler function carries its spec (``fn.spec``, set by the :func:`sampler` decorator next to its
definition): its order, how many denoiser evaluations its steps cost, whether it is deterministic
(and so integrates increasing grids too), the grid family it prefers, and whether it chooses its own
steps. :func:`~diffusionlens.samplers.sample`, the grid resolver, the fitted grids and the report read
these facts from the spec, never from the sampler's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from .._util import Choice
from ..processes import DDPMTable, Process, Spacing, karras_grid, logsnr_grid, time_grid, timestep_grid

__all__ = ["Grid", "SamplerSpec", "sampler", "spec_of", "make_grid"]


class Grid(Choice, what="grid"):
    """Noise-level grids (:mod:`diffusionlens.processes`)."""

    KARRAS = "karras"  # Karras et al. 2022 eq. 5, rho = 7
    LOGSNR = "logsnr"  # uniform in log sigma (log-SNR)
    TIME = "time"  # uniform in the model's process time t (needs a Denoiser)
    TIMESTEPS = "timesteps"  # integer timesteps of a DDPMTable model (exact table entries)
    FITTED = "fitted"  # equidistributes the local error measured by a pilot solve (fitted_grid)
    FITTED_STOP = "fitted-stop"  # the fitted grid, its last level chosen on the pilot for the sampler (stop_grid)
    KARRAS_STOP = "karras-stop"  # the Karras grid, its last level chosen on the pilot (stop_grid, base karras)
    LOGSNR_STOP = "logsnr-stop"  # the log-SNR grid, its last level chosen on the pilot (stop_grid, base logsnr)


@dataclass(frozen=True)
class SamplerSpec:
    """The facts about one sampler (with its default options).

    Attributes:
        name: the sampler's name in :data:`~diffusionlens.samplers.SAMPLERS`.
        order: order p of its local error O(h^(p+1)) along the flow (the fitted grid's density exponent
            3 / (p + 1)); None when unknown (a sampler function without a spec): fitted grids then refuse it.
        nfe_per_step: denoiser evaluations per grid interval.
        nfe_extra: evaluations added once per run (Heun and predictor-corrector: -1, their step into
            sigma = 0 skips the corrector; annealed Langevin: +1, its final denoising step).
        deterministic: no noise is drawn (with default options); such samplers also integrate
            increasing grids (data -> noise).
        grid: the grid family it is run on by default.
        adaptive: it chooses its own steps between the grid's ends (``steps`` and grid families do not apply).
    """

    name: str
    order: int | None
    nfe_per_step: int = 1
    nfe_extra: int = 0
    deterministic: bool = True
    grid: Grid = Grid.KARRAS
    adaptive: bool = False

    def nfe(self, steps: int) -> int:
        """Evaluations per sample on a grid of ``steps`` intervals ending at 0."""
        return self.nfe_per_step * steps + self.nfe_extra

    def steps_for_nfe(self, nfe: int) -> int:
        """The largest step count whose NFE is at most ``nfe`` (at least 1 step)."""
        if not (isinstance(nfe, int) and nfe >= 1):
            raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
        return max(1, (nfe - self.nfe_extra) // self.nfe_per_step)


def sampler(*, order: int | None, nfe_per_step: int = 1, nfe_extra: int = 0, deterministic: bool = True,
            grid: Grid = Grid.KARRAS, adaptive: bool = False, name: str | None = None) -> Callable:
    """Decorator attaching a :class:`SamplerSpec` to a sampler function as ``fn.spec`` (the function is
    returned unchanged): ``@sampler(order=3)`` above ``def my_sampler(denoiser, x, sigmas, *, generator=None,
    callback=None)``."""

    def attach(fn: Callable) -> Callable:
        fn.spec = SamplerSpec(name or fn.__name__, order, nfe_per_step, nfe_extra, deterministic, Grid.parse(grid),
                              adaptive)
        return fn

    return attach


def spec_of(fn: Callable) -> SamplerSpec:
    """The spec of a sampler function: its own (``fn.spec``), else an unknown-order, stochastic one
    (every grid but the fitted ones still works for it)."""
    spec = getattr(fn, "spec", None)
    if isinstance(spec, SamplerSpec):
        return spec
    return SamplerSpec(getattr(fn, "__name__", "sampler"), None, deterministic=False)


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
    if not isinstance(process, DDPMTable):
        raise ValueError(f"grid 'timesteps' needs a Denoiser of a DDPMTable process, got process {process!r}")
    return timestep_grid(process, steps, spacing)
