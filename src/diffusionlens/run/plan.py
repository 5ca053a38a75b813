"""The run's sampling plan: measured once on the model (``tune``), stored in the run directory, used by
sampling and evaluation unless turned off (:class:`diffusionlens.samplers.SamplingPlan`)."""

from __future__ import annotations

from collections.abc import Mapping

from .. import samplers as _samplers
from ._core import LEVELS, Run, sampling_range
from .files import check_writable

TUNED_SAMPLERS = ("deis", "unipc")
"""Samplers a run's plan is tuned for: the default sampler and the one of the sweep's tuned entry."""
TUNED_NFES = (4, 6, 8, 10, 12, 16, 24, 32)
"""NFE budgets a run's plan is tuned for: the sweep's and the samplers layer's defaults."""


def load_plan(run_dir):
    """The plan stored in ``run_dir``, or None (ValueError naming the file when it is unreadable)."""
    return _samplers.SamplingPlan.load(run_dir)


def plan_kwargs(plan) -> dict:
    """Keyword arguments of ``samplers.sample`` that apply ``plan`` (none without one)."""
    return {} if plan is None else {"plan": plan}


def has_tuned(plan, sampler: str, nfe: int) -> bool:
    """Whether ``plan`` holds a tuned configuration for ``sampler`` at ``nfe`` evaluations."""
    return plan is not None and (sampler, int(nfe)) in plan.tuned


def tune(run: Run, *, samplers=TUNED_SAMPLERS, nfes=None, progress: bool = False) -> object:
    """Measure the run's sampling plan once (the pilot's error density and stops, the data mean and
    Gaussian moments; for a class-conditional run one pilot per class, unguided, and the class means) and
    store it in the run directory (atomic); returns it. ``samplers`` and ``nfes`` as in
    :func:`diffusionlens.samplers.tune`, ``nfes`` defaulting to ``TUNED_NFES`` (a mapping {sampler: budgets}
    takes no ``nfes``)."""
    from ..data import load_dataset
    from .sampling import class_denoisers
    from .students import own_sampling

    if own_sampling(run.denoiser) is not None:
        raise ValueError(f"{run.path}: a {run.denoiser.kind} run samples its own way; the generic samplers' plan "
                         "does not apply to it")
    check_writable(run.path)
    small = None if run.config.dataset in LEVELS else 2  # only the shape is needed
    data = load_dataset(run.config.dataset, "test", seed=run.config.seed, n=small)
    shape = tuple(data.data_shape)
    smin, smax = sampling_range(run.config)
    conditions = class_denoisers(run.denoiser, data.num_classes) if run.config.conditional else None
    if nfes is None and not isinstance(samplers, Mapping):
        nfes = TUNED_NFES
    plan = _samplers.tune(run.denoiser, shape, samplers, nfes, sigma_min=smin, sigma_max=smax, device=run.device,
                          conditions=conditions, progress=progress)
    plan.save(run.path)
    return plan


def tune_for_evaluation(run: Run, *, sampler: str, steps: int, sweep, nfes, progress: bool = False) -> object:
    """:func:`tune` for what an evaluation will ask of the plan: the sweep's ``@fitted-stop`` samplers at its
    budgets, and the headline sampler at its step count when it is deterministic with a fixed grid (None for a run
    that samples its own way)."""
    from .sampling import sweep_entry
    from .students import own_sampling

    if own_sampling(run.denoiser) is not None:
        return None  # nothing to tune: it samples its own way
    budgets: dict = {name: set(nfes) for name, grid in map(sweep_entry, sweep) if grid == "fitted-stop"}
    spec = _samplers.SAMPLERS[sampler].spec
    if spec.deterministic and not spec.adaptive and spec.nfe_per_step == 1 and spec.nfe_extra == 0:
        budgets.setdefault(sampler, set()).add(steps)  # one evaluation per step: its step count is its budget
    return tune(run, samplers={name: tuple(sorted(b)) for name, b in budgets.items()}, progress=progress)
