"""Bits per dimension for discrete (8-bit) data: uniform dequantization and the bin-width offset.

A continuous model density p(x) over R^d assigns the discrete value k the probability
P(k) = int_{bin(k)} p(x) dx of its bin (a cube of side Delta around the bin's center c_k). With
u ~ U[-1/2, 1/2]^d and x = c_k + Delta u,

    P(k) = Delta^d E_u[p(c_k + Delta u)] >= Delta^d exp(E_u[log p(c_k + Delta u)])     (Jensen)

so  -log2 P(k) / d  <=  ( E_u[-log p(x)] - d log Delta ) / (d ln 2),  the dequantized bound
(Theis et al. 2016; Ho et al. 2019). The offset is -log Delta per dimension, exactly, for the
scaling in use:

* ``Binning.CENTERED`` (DDPM, diffusers, improved-diffusion): x = k / 127.5 - 1 in [-1, 1], bins of
  width Delta = 2/255 centered there, so the offset is +log 127.5 nats (log2(127.5) = 6.994 bits).
  This is the grid of the discretized Gaussian decoder in :mod:`.elbo` (edges x +- 1/255).
* ``Binning.EDGES`` (score_sde, VDM, Flow++): the unit interval cut into 256 bins of [0, 1] mapped
  to [-1, 1], x = (2k + 1)/256 - 1 at the centers, Delta = 2/256, offset +log 128 (7 bits).

A model uniform over the union of the bins has -log p = d log(256 Delta) and gets exactly 8 bits
per dimension under either convention (the known answer the tests check).

Shapes: integer data ``k`` (batch, *data_shape) with values in [0, levels - 1]; log-likelihoods (batch,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._util import Choice

__all__ = ["Binning", "bin_width", "bin_centers", "dequantize", "bits_per_dim", "nats_to_bpd"]


class Binning(Choice, what="binning"):
    """Where the ``levels`` discrete values sit in [-1, 1] (module docstring)."""

    CENTERED = "centered"
    EDGES = "edges"


def _check_levels(levels: int) -> None:
    if not (isinstance(levels, int) and levels >= 2):
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")


def bin_width(levels: int = 256, binning: Binning | str = Binning.CENTERED) -> float:
    """Width Delta of one bin in the [-1, 1] data scale: 2/(levels - 1) (centered) or 2/levels (edges)."""
    _check_levels(levels)
    return 2.0 / (levels - 1) if Binning.parse(binning) is Binning.CENTERED else 2.0 / levels


def bin_centers(k: Tensor, levels: int = 256, binning: Binning | str = Binning.CENTERED) -> Tensor:
    """The data value c_k in [-1, 1] of integer level ``k`` (float64, same shape)."""
    _check_levels(levels)
    if k.is_floating_point() or k.is_complex():
        raise TypeError(f"k must be an integer tensor of levels, got dtype {k.dtype}")
    if bool(((k < 0) | (k > levels - 1)).any()):
        bad = k[(k < 0) | (k > levels - 1)].flatten()[0].item()
        raise ValueError(f"levels must lie in [0, {levels - 1}], got {bad}")
    k = k.to(torch.float64)
    if Binning.parse(binning) is Binning.CENTERED:
        return k * (2.0 / (levels - 1)) - 1
    return (2 * k + 1) / levels - 1


def dequantize(
    k: Tensor, generator: torch.Generator | None = None, *, levels: int = 256, binning: Binning | str = Binning.CENTERED
) -> Tensor:
    """Uniform dequantization: c_k + Delta u with u ~ U[-1/2, 1/2)^d (float64, same shape as ``k``)."""
    c = bin_centers(k, levels, binning)
    gdev = generator.device if generator is not None else c.device
    u = torch.rand(c.shape, generator=generator, dtype=torch.float64, device=gdev).to(c.device)
    return c + bin_width(levels, binning) * (u - 0.5)


def nats_to_bpd(nll: Tensor, dim: int) -> Tensor:
    """A negative log-likelihood of a discrete value in nats -> bits per dimension (no offset)."""
    return nll / (dim * math.log(2))


def bits_per_dim(
    log_likelihood: Tensor, dim: int, *, levels: int = 256, binning: Binning | str = Binning.CENTERED
) -> Tensor:
    """Dequantized bits per dimension: (-log p(x) - d log Delta) / (d ln 2).

    Args:
        log_likelihood: (batch,) continuous log-density in nats of the dequantized points x in [-1, 1]
            scale (e.g. from :func:`~diffusionlens.likelihood.log_likelihood` at a small sigma_min).
        dim: d, the number of dimensions of one sample.
    Returns:
        (batch,) upper bounds on -log2 P(k) / d; average over dequantization draws for the bound
        of the expected value.
    """
    if not (isinstance(dim, int) and dim >= 1):
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    delta = bin_width(levels, binning)
    return (-log_likelihood - dim * math.log(delta)) / (dim * math.log(2))
