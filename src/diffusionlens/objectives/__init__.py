"""Training objectives: what a training step minimises, behind one interface (:class:`Objective`).

    objective = build_objective(cfg, data)        # the one named by cfg.objective
    per_sample = objective(model, Batch(x0, labels), rng)

Adding an objective is one module with a class deriving from :class:`Objective` and a
``build(cfg, data)`` function, and one line in :data:`OBJECTIVES`.
"""

from . import denoising, selfcond
from .base import Batch, Objective, Streams
from .denoising import Denoising
from .selfcond import SelfConditioning

__all__ = ["Batch", "Objective", "Streams", "Denoising", "SelfConditioning", "OBJECTIVES", "build_objective"]

OBJECTIVES = {
    "denoising": denoising.build,
    "self-conditioning": selfcond.build,
}
"""Objective names accepted by ``TrainConfig.objective``, each mapped to its ``build(cfg, data)``."""


def build_objective(cfg, data) -> Objective:
    """The objective ``cfg.objective`` names, built for a resolved config and its data set."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.objective](cfg, data)
