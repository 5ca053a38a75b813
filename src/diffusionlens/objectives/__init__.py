"""Training objectives: what a training step minimises, behind one interface (:class:`Objective`).

    objective = build_objective(cfg, data)        # the one named by cfg.objective
    per_sample = objective(model, Batch(x0, labels), rng)

Adding an objective is one module with a class deriving from :class:`Objective` and a
``build(cfg, data)`` function, and one line in :data:`OBJECTIVES`.
"""

from ..distill import objectives as distill
from ..distill import regularisers
from ..interpolants import objective as interpolant
from . import blurring, denoising, selfcond
from . import discrete as discrete_objective
from .base import Batch, Objective, Streams
from .denoising import Denoising
from .selfcond import SelfConditioning

__all__ = ["Batch", "Objective", "Streams", "Denoising", "SelfConditioning", "OBJECTIVES", "MODELS", "build_objective"]

OBJECTIVES = {
    "denoising": denoising.build,
    "masked": discrete_objective.build_masked,
    "d3pm-absorbing": discrete_objective.build_d3pm_absorbing,
    "d3pm-uniform": discrete_objective.build_d3pm_uniform,
    "ctmc-uniform": discrete_objective.build_ctmc_uniform,
    "analog-bits": discrete_objective.build_analog_bits,
    "denoising+consistency": regularisers.build_consistency,
    "denoising+fokker-planck": regularisers.build_fokker_planck,
    "interpolant": interpolant.build_independent, "interpolant+ot": interpolant.build_ot,
    "interpolant+sinkhorn": interpolant.build_sinkhorn,
    "reflow": interpolant.build_reflow,
    "consistency-training": distill.build_consistency_training,
    "consistency-distillation": distill.build_consistency_distillation,
    "progressive-distillation": distill.build_progressive,
    "blurring": blurring.build,
    "self-conditioning": selfcond.build,
}
"""Objective names accepted by ``TrainConfig.objective``, each mapped to its ``build(cfg, data)``."""

MODELS = dict(distill.MODELS)
"""Objectives that train a model other than ``cfg.denoiser``'s canonical one: name -> ``model(cfg, net)``."""


def build_objective(cfg, data) -> Objective:
    """The objective ``cfg.objective`` names, built for a resolved config and its data set."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.objective](cfg, data)
