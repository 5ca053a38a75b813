"""Likelihood, ELBO and encoding: the flow and latent-variable perspectives on one denoiser.

* :mod:`.pf_ode` — exact log-likelihood through the probability-flow ODE (exact or Hutchinson
  divergence), the Gaussian prior and its error.
* :mod:`.bpd` — bits per dimension of 8-bit data with uniform dequantization.
* :mod:`.elbo` — the discrete-time DDPM variational bound with every term, and the continuous-time
  VDM bound.
* :mod:`.encode` — data -> latent noise and back through the ODE, round-trip error, slerp.
* :mod:`.stream` — dataset-scale evaluation with mean and standard error.
"""

from .bpd import Binning, bin_centers, bin_width, bits_per_dim, dequantize, nats_to_bpd
from .elbo import VLB, ContinuousVLB, Decoder, PosteriorVar, ddpm_vlb, decoder_nll, gaussian_kl, prior_kl, vdm_vlb
from .encode import EncodeInfo, decode, encode, round_trip, slerp
from .pf_ode import (
    EXACT_MAX_DIM,
    Divergence,
    LikelihoodInfo,
    Probe,
    default_divergence,
    draw_probes,
    draw_rotating,
    gaussian_prior,
    log_likelihood,
    prior_gap,
    rotating_probe,
    trace_jacobian,
)
from .stream import Summary, evaluate

__all__ = [
    "Binning",
    "bin_centers",
    "bin_width",
    "bits_per_dim",
    "dequantize",
    "nats_to_bpd",
    "ContinuousVLB",
    "Decoder",
    "PosteriorVar",
    "VLB",
    "ddpm_vlb",
    "default_divergence",
    "EXACT_MAX_DIM",
    "decoder_nll",
    "gaussian_kl",
    "prior_kl",
    "vdm_vlb",
    "EncodeInfo",
    "decode",
    "encode",
    "round_trip",
    "slerp",
    "Divergence",
    "LikelihoodInfo",
    "Probe",
    "draw_probes",
    "draw_rotating",
    "gaussian_prior",
    "log_likelihood",
    "prior_gap",
    "rotating_probe",
    "trace_jacobian",
    "Summary",
    "evaluate",
]
