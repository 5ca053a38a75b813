"""The RNN perspective: sampling is a recurrent network whose state is the canvas (depth = network
layers x sampler steps). What this view suggests, each as a piece that composes with the rest:

* :mod:`.selfcond` — self-conditioning: the previous x0 estimate threaded through any sampler by a
  stateful denoiser wrapper (the objective that trains it: :mod:`diffusionlens.objectives.selfcond`);
* :mod:`.experts` — experts per noise range composed into one canonical denoiser;
* :mod:`.unroll` — fine-tuning by back-propagation through k unrolled sampler steps.

The run layer's side (training experts, fine-tuned runs, loading both) is :mod:`diffusionlens.run.rnn`.
"""

from .experts import Experts, boundaries_of_ranges, check_boundaries, equal_share_boundaries, expert_configs
from .selfcond import SelfConditioned, Trajectory, is_self_conditioned
from .unroll import AgainstData, AgainstSolve, FinetuneResult, finetune_unrolled, unroll_grid, unrolled

__all__ = ["SelfConditioned", "Trajectory", "is_self_conditioned", "Experts", "equal_share_boundaries",
           "check_boundaries", "boundaries_of_ranges", "expert_configs", "AgainstData", "AgainstSolve",
           "FinetuneResult", "finetune_unrolled", "unroll_grid", "unrolled"]
