"""Interpolants between a source and a target of any distribution: stochastic interpolants, couplings
(independent, minibatch OT, Sinkhorn, paired), rectified flow with reflow, iterative
alpha-(de)blending, and the exact velocity of mixture-to-mixture interpolants. The Gaussian-source
linear interpolant is the :class:`~diffusionlens.processes.Flow` process
(:func:`velocity_from_denoiser`, :func:`as_denoiser`). See docs/interpolants.md.
"""

# the objectives registry imports .objective, which derives from objectives.base: importing the
# registry first makes every import order resolve the same way
from .. import objectives  # noqa: F401
from .blending import (
                   backward_map,
                   blend_pairs,
                   difference_from_velocity,
                   fit_blending,
                   forward_map,
                   velocity_from_difference,
)
from .core import (
                   FIXED_METHODS,
                   Interpolant,
                   Path,
                   Transported,
                   as_denoiser,
                   straightness,
                   transport,
                   velocity_from_denoiser,
)
from .couplings import (
                   COUPLINGS,
                   DEGRADATIONS,
                   MAX_OT_BATCH,
                   Degraded,
                   Gaussian,
                   MixtureSource,
                   TableSource,
                   couple,
                   make_source,
                   sinkhorn_plan,
)
from .exact import ExactVelocity, standard_normal
from .indi import LinearGaussianDegradation, PairedOracle, clean_estimate, psnr
from .indi import restore as indi_restore
from .objective import VelocityMatching, fit, net_velocity, velocity_loss
from .reflow import ReflowRound, reflow, reflow_pairs

__all__ = ["Interpolant", "Path", "Transported", "transport", "straightness", "FIXED_METHODS",
           "velocity_from_denoiser", "as_denoiser", "COUPLINGS", "couple", "sinkhorn_plan", "MAX_OT_BATCH",
           "Gaussian", "MixtureSource", "TableSource", "Degraded", "DEGRADATIONS", "make_source",
           "ExactVelocity", "standard_normal", "VelocityMatching", "velocity_loss", "net_velocity", "fit",
           "ReflowRound", "reflow", "reflow_pairs", "difference_from_velocity", "velocity_from_difference",
           "blend_pairs", "fit_blending", "forward_map", "backward_map",
           "indi_restore", "clean_estimate", "psnr", "LinearGaussianDegradation", "PairedOracle"]
