"""Analog bits (Chen et al. 2022): tokens as +-1 bits, diffused by the continuous machinery, decoded by
thresholding.

A token v in 0..V-1 becomes its ``bits(V) = ceil(log2 V)`` binary digits, most significant first, each
mapped to -1 (0) or +1 (1); a sample (batch, *shape) becomes (batch, *shape, bits) real values, which
any continuous process, denoiser and sampler of the package treats as ordinary data (its scale is 1,
so sigma_data = 1). Decoding thresholds at 0; a code >= V (possible when V is not a power of two) is
clamped to V - 1.

:func:`gaussian_oracle` turns the exact discrete oracle into the exact continuous one (a Gaussian
mixture whose components sit on the codes of every sequence), so the whole path -- encode, any
sampler of :mod:`diffusionlens.samplers`, decode -- is tested against exact probabilities.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .oracle import CategoricalMixture, all_sequences
from .process import check_tokens

__all__ = ["bits", "encode", "decode", "gaussian_oracle", "sample"]


def bits(vocab: int) -> int:
    """Bits per token: ceil(log2 V) (at least 1)."""
    if not (isinstance(vocab, int) and vocab >= 2):
        raise ValueError(f"vocab must be an integer >= 2, got {vocab!r}")
    return max(1, math.ceil(math.log2(vocab)))


def encode(x: Tensor, vocab: int) -> Tensor:
    """Tokens (batch, *shape) -> +-1 bits (batch, *shape, bits(V)) float32, most significant bit first."""
    check_tokens(x, vocab)
    n = bits(vocab)
    shifts = torch.arange(n - 1, -1, -1, device=x.device)
    return ((x[..., None].long() >> shifts) & 1).float() * 2 - 1


def decode(a: Tensor, vocab: int) -> Tensor:
    """Real values (batch, *shape, bits(V)) -> tokens (batch, *shape) int64: threshold at 0, clamp to V - 1."""
    n = bits(vocab)
    if a.shape[-1] != n:
        raise ValueError(f"analog bits of vocabulary {vocab} have {n} values per token, got shape {tuple(a.shape)}")
    weights = 2 ** torch.arange(n - 1, -1, -1, device=a.device)
    return ((a > 0).long() * weights).sum(-1).clamp_max(vocab - 1)


def gaussian_oracle(mix: CategoricalMixture, std: float = 1e-3):
    """The exact continuous oracle of ``mix``'s analog bits: a GaussianMixture with one component of
    weight p(x) and covariance std^2 I at the code of every sequence x (small L and V only)."""
    from ..oracle import GaussianMixture

    x = all_sequences(mix.vocab, mix.shape)
    p = mix.log_prob(x).exp()
    keep = p > 0
    codes = encode(x[keep], mix.vocab).double()
    return GaussianMixture(codes.reshape(codes.shape[0], -1), std**2, p[keep] / p[keep].sum(),
                           data_shape=tuple(codes.shape[1:]))


def sample(denoiser, n: int, shape: tuple[int, ...], vocab: int, *, generator: torch.Generator | None = None,
           **options) -> Tensor:
    """n token samples (n, *shape) from a continuous denoiser of analog bits: ``samplers.sample`` from
    Gaussian noise of ``sigma_max`` (options: sampler, steps, nfe, grid, sigma_max, ...), then decode."""
    from ..samplers import randn
    from ..samplers import sample as continuous_sample

    sigma_max = options.pop("sigma_max", 80.0)
    full = (n,) + tuple(shape) + (bits(vocab),)
    noise = randn(full, generator, dtype=torch.float64)
    x = continuous_sample(denoiser, noise, sigma_max=sigma_max, generator=generator, **options)
    return decode(x, vocab)
