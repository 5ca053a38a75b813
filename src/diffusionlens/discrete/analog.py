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

Through the training loop: the ``analog-bits`` objective
(:class:`diffusionlens.objectives.discrete.AnalogBits`) encodes each token batch
and hands it, bits as channels (batch, bits, *shape), to the denoising objective, or to the
self-conditioning one when the network takes the estimate (Chen et al.'s recipe). :func:`config` turns
a TrainConfig on a token data set into such a run (unit scale, a UNet for square images, else an MLP);
:func:`sample_run` samples a trained run with any continuous sampler and decodes.

There is no likelihood bound in bits per token here: the continuous model is a density on
R^(bits x L), and a probability of tokens would need the mass of each thresholding orthant (an
integral of that density no sampler or ODE likelihood gives), or a learned discrete decoder, which
analog bits do not have. Analog bits are scored by sample quality.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .oracle import CategoricalMixture, all_sequences
from .process import check_tokens

__all__ = ["bits", "encode", "decode", "channels", "gaussian_oracle", "sample", "config", "sample_run"]


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


def channels(a: Tensor) -> Tensor:
    """(batch, *shape, bits) -> (batch, bits, *shape): bits as the channels of an image-like tensor."""
    return a.movedim(-1, 1).contiguous()


def config(cfg, *, self_condition: bool = True):
    """``cfg`` (a TrainConfig on a token data set) as an analog-bits run: the objective, sigma_data = 1,
    and a network on (bits, *shape): the compact UNet for square 2-D token images (the ``digits``
    network with ``bits`` input channels), an MLP otherwise; with the self-conditioning input by default."""
    from ..data import load_dataset

    data = load_dataset(cfg.dataset, "test", n=1)
    if data.vocab is None:
        raise ValueError(f"analog bits need a token data set, got {cfg.dataset!r}")
    shape, n = tuple(data.data_shape), bits(data.vocab)
    if len(shape) == 2 and shape[0] == shape[1]:
        net = {"kind": "unet", "in_channels": n, "image_size": shape[0], "num_classes": None}
        if shape[0] >= 16:
            net.update(channels=48, channel_mult=[1, 2, 2], blocks=2, attn_resolutions=[7])
    else:
        net = {"kind": "mlp", "data_shape": [n, *shape], "num_classes": None}
    if self_condition:
        net["self_condition"] = True
    return cfg.replace(objective="analog-bits", sigma_data=1.0, net=net)


def sample_run(path, n: int, *, sampler: str = "heun", steps: int = 32, seed: int = 0, batch_size: int = 256,
               device: str = "cpu") -> Tensor:
    """n token samples (n, *shape) of an analog-bits run: any continuous sampler from unit Gaussian noise
    at the run's sampling range (a self-conditioned run threads its estimate), then thresholding.
    Batches are seeded by (seed, batch index)."""
    from ..data import load_dataset
    from ..run import open_run, sampling_range
    from ..samplers import randn
    from ..samplers import sample as continuous_sample

    r = open_run(path, device=device, plan=False)
    if r.config.objective != "analog-bits":
        raise ValueError(f"{path} was trained with objective {r.config.objective!r}, not 'analog-bits'")
    data = load_dataset(r.config.dataset, "test", n=1)
    lo, hi = sampling_range(r.config)
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        noise = randn((min(batch_size, n - start), bits(data.vocab), *data.data_shape), g).to(device)
        with torch.no_grad():
            x = continuous_sample(r.denoiser, noise, sampler=sampler, steps=steps, sigma_min=lo, sigma_max=hi,
                                  generator=g)
        out.append(decode(x.movedim(1, -1), data.vocab).cpu())
    return torch.cat(out)
