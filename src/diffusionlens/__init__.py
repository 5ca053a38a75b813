"""diffusionlens: one diffusion model seen from every angle.

Notation (see docs/notation.md): x_t = s(t) (x0 + sigma(t) n), t in [0, 1] with t = 0 clean;
every model is exposed as the canonical denoiser D(x_hat, sigma) ~ E[x0 | x_hat], x_hat = x_t / s.
"""

from .likelihood import decode, encode, log_likelihood
from .model import Denoiser, from_flow_matching, from_timestep_model
from .oracle import GaussianMixture
from .parameterization import Param
from .processes import EDM, VE, VP, DDPMTable, Flow, SubVP
from .samplers import SAMPLERS, sample

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "from_flow_matching",
    "from_timestep_model",
    "GaussianMixture",
    "Param",
    "EDM",
    "VE",
    "VP",
    "SubVP",
    "DDPMTable",
    "Flow",
    "sample",
    "SAMPLERS",
    "log_likelihood",
    "encode",
    "decode",
]
