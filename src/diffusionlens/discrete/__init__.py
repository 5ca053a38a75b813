"""Discrete-state diffusion: tokens corrupted by masking or uniform noise (see :mod:`.process`)."""

from . import analog
from .ctmc import (
    CHOICE_TEMPERATURE,
    SAMPLERS,
    ancestral,
    ctmc_elbo,
    ctmc_loss,
    mask_counts,
    masked_elbo,
    maskgit,
    tau_leaping,
)
from .d3pm import D3PM, Terms
from .oracle import CategoricalMixture, all_sequences, random_mixture
from .process import (
    Corruption,
    Kind,
    Schedule,
    check_tokens,
    likelihood_weighted,
    log_probs,
    reverse_probs,
    reverse_rates,
)

__all__ = ["analog", "CategoricalMixture", "all_sequences", "random_mixture", "Corruption", "Kind", "Schedule",
           "check_tokens", "likelihood_weighted", "log_probs", "reverse_probs", "reverse_rates", "SAMPLERS",
           "ancestral", "masked_elbo", "ctmc_elbo", "ctmc_loss", "mask_counts", "CHOICE_TEMPERATURE", "maskgit",
           "tau_leaping", "D3PM", "Terms"]
