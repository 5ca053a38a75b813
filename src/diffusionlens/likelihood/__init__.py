"""Likelihood, ELBO and encoding: the flow and latent-variable perspectives on one denoiser.

* :mod:`.pf_ode` — exact log-likelihood through the probability-flow ODE (exact or Hutchinson
  divergence), the Gaussian prior and its error.
* :mod:`.bpd` — bits per dimension of 8-bit data with uniform dequantization.
* :mod:`.elbo` — the discrete-time DDPM variational bound with every term, and the continuous-time
  VDM ELBO.
* :mod:`.encode` — data -> latent noise and back through the ODE, round-trip error, slerp.
* :mod:`.stream` — dataset-scale evaluation with mean and standard error.
"""

from .pf_ode import (
    Divergence,
    LikelihoodInfo,
    Probe,
    draw_probes,
    gaussian_prior,
    log_likelihood,
    prior_gap,
    trace_jacobian,
)

__all__ = [
    "Divergence",
    "LikelihoodInfo",
    "Probe",
    "draw_probes",
    "gaussian_prior",
    "log_likelihood",
    "prior_gap",
    "trace_jacobian",
]
