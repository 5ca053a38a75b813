"""Distillation and consistency models: the expectation view of a denoiser.

- :func:`target_variance`: per noise level, how far a regression target (the data x0, a teacher's
  E[x0 | x_t], two teacher sampler steps) scatters about the posterior mean.
- :class:`ProgressiveDistillation` / :func:`progressive_distill` (Salimans & Ho 2022).
- :class:`ConsistencyFunction`, :class:`ConsistencyDistillation`, :class:`ConsistencyTraining`,
  :func:`consistency_sample` (Song et al. 2023; Song & Dhariwal 2023).
- :func:`consistency_residual`, :func:`fokker_planck_residual`, :func:`consistency_fp_relation`,
  :class:`Regularised` (Daras et al. 2023; Lai et al. 2023): the consistency regularisers.
"""

from .consistency import (
    ConsistencyDistillation,
    ConsistencyFunction,
    ConsistencyTraining,
    consistency_sample,
    curriculum,
    discretisation,
    level_probabilities,
    pseudo_huber,
)
from .progressive import ProgressiveDistillation, halvable_grid, progressive_distill, two_step_target
from .regularisers import (
    Regularised,
    consistency_fp_relation,
    consistency_residual,
    fokker_planck_field,
    fokker_planck_residual,
    reverse_paths,
)
from .variance import target_variance

__all__ = [
    "target_variance",
    "ProgressiveDistillation",
    "progressive_distill",
    "two_step_target",
    "halvable_grid",
    "ConsistencyFunction",
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "consistency_sample",
    "discretisation",
    "curriculum",
    "level_probabilities",
    "pseudo_huber",
    "fokker_planck_field",
    "fokker_planck_residual",
    "reverse_paths",
    "consistency_residual",
    "consistency_fp_relation",
    "Regularised",
]
