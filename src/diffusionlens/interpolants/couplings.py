"""Couplings of a minibatch of target samples x0 with source samples x1, and the sources themselves.

A coupling ``fn(x0, x1, generator) -> x1'`` returns source samples re-paired with the rows of x0
(the target rows keep their order, so labels and distributed row slices stay valid):

- ``independent``: x1 as drawn (the product coupling);
- ``ot``: the exact minibatch optimal-transport matching for the squared Euclidean cost (a
  permutation, by the Hungarian method; Tong et al. 2023, Pooladian et al. 2023);
- ``sinkhorn``: the entropic plan (log-domain Sinkhorn, uniform marginals, regularisation ``reg``
  times the mean cost), x1' drawn row by row from the plan's conditional of x1 given x0;
- ``paired``: x1 as given, for sources that are a function of x0 (a degraded copy), where the
  pairing itself is the data.

A source ``src(x0, generator) -> x1`` draws source samples for a batch of targets (:func:`make_source`).
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..oracle import GaussianMixture

__all__ = ["COUPLINGS", "couple", "independent", "ot", "sinkhorn", "sinkhorn_plan", "paired", "MAX_OT_BATCH",
           "Gaussian", "MixtureSource", "TableSource", "Degraded", "DEGRADATIONS", "make_source"]

MAX_OT_BATCH = 8192
"""Largest minibatch the exact and entropic couplings accept: both hold an n x n float64 cost
matrix (8192^2 entries are 512 MiB)."""


def _cost(x0: Tensor, x1: Tensor) -> Tensor:
    if x0.shape != x1.shape:
        raise ValueError(f"target and source samples differ in shape: {tuple(x0.shape)} vs {tuple(x1.shape)}")
    if x0.shape[0] > MAX_OT_BATCH:
        raise ValueError(f"an OT coupling of {x0.shape[0]} samples needs an n x n cost matrix; "
                         f"the limit is {MAX_OT_BATCH} (use a smaller batch)")
    return torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).pow(2)


def independent(x0: Tensor, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The product coupling: x1 unchanged."""
    _cost(x0[:1], x1[:1])
    return x1


def paired(x0: Tensor, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The given pairs (x1 was made from x0): x1 unchanged, its shape checked."""
    if x0.shape != x1.shape:
        raise ValueError(f"a paired coupling needs one source sample of the same shape per target, "
                         f"got {tuple(x1.shape)} for {tuple(x0.shape)}")
    return x1


def ot(x0: Tensor, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Exact minibatch OT for the squared distance: x1 permuted to minimise sum ||x0_i - x1_pi(i)||^2."""
    rows, cols = linear_sum_assignment(_cost(x0, x1).cpu().numpy())
    return x1[torch.as_tensor(cols[rows.argsort()], device=x1.device)]


def sinkhorn_plan(cost: Tensor, reg: float, iters: int = 200) -> Tensor:
    """Entropic OT plan (n, m) with uniform marginals for ``cost`` (n, m) and temperature ``reg``
    (absolute), by log-domain Sinkhorn iterations on the dual potentials (no under/overflow at small reg)."""
    if not reg > 0:
        raise ValueError(f"sinkhorn regularisation must be > 0, got {reg}")
    n, m = cost.shape
    log_a = torch.full((n,), -math.log(n), dtype=cost.dtype, device=cost.device)
    log_b = torch.full((m,), -math.log(m), dtype=cost.dtype, device=cost.device)
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    k = -cost / reg
    for _ in range(iters):
        f = log_a - torch.logsumexp(k + g[None], dim=1)
        g = log_b - torch.logsumexp(k + f[:, None], dim=0)
    return torch.exp(k + f[:, None] + g[None])


def sinkhorn(x0: Tensor, x1: Tensor, generator: torch.Generator | None = None, *, reg: float = 0.05,
             iters: int = 200) -> Tensor:
    """x1 re-drawn (with replacement) from the entropic plan's row conditionals; ``reg`` is relative to
    the mean cost, so the coupling does not depend on the data's scale."""
    cost = _cost(x0, x1)
    plan = sinkhorn_plan(cost, reg * float(cost.mean()), iters)
    idx = torch.multinomial(plan / plan.sum(1, keepdim=True), 1, generator=generator)[:, 0]
    return x1[idx.to(x1.device)]


COUPLINGS = {"independent": independent, "ot": ot, "sinkhorn": sinkhorn, "paired": paired}


def couple(name: str, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Apply the coupling ``name`` (a key of :data:`COUPLINGS`)."""
    if name not in COUPLINGS:
        raise ValueError(f"unknown coupling {name!r}; choose one of: {', '.join(COUPLINGS)}")
    return COUPLINGS[name](x0, x1, generator)


# ---------------------------------------------------------------------- sources


class Gaussian:
    """N(0, I) source samples shaped like x0 (the diffusion case)."""

    paired = False

    def __call__(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)


class MixtureSource:
    """Samples of a :class:`~diffusionlens.oracle.GaussianMixture` (an exact source for tests)."""

    paired = False

    def __init__(self, gm: GaussianMixture):
        self.gm = gm

    def __call__(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        if self.gm.dim != x0[0].numel():
            raise ValueError(f"source mixture has dimension {self.gm.dim}, target samples {tuple(x0.shape[1:])}")
        return self.gm.sample(x0.shape[0], generator, dtype=x0.dtype).reshape(x0.shape).to(x0.device)


class TableSource:
    """Rows drawn uniformly (with replacement) from a table of source samples (another data set)."""

    paired = False

    def __init__(self, table: Tensor):
        if table.ndim < 2 or table.shape[0] < 1:
            raise ValueError(f"a source table needs shape (n >= 1, ...), got {tuple(table.shape)}")
        self.table = table

    def __call__(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        if self.table.shape[1:] != x0.shape[1:]:
            raise ValueError(f"source samples of shape {tuple(self.table.shape[1:])} for targets of shape "
                             f"{tuple(x0.shape[1:])}")
        idx = torch.randint(self.table.shape[0], (x0.shape[0],), generator=generator)
        return self.table[idx].to(device=x0.device, dtype=x0.dtype)


def _noise(x0: Tensor, g: torch.Generator, level: float) -> Tensor:
    return x0 + level * torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)


def _block(x0: Tensor, g: torch.Generator, level: float) -> Tensor:
    if x0.ndim < 3:
        raise ValueError(f"the 'block' degradation needs images (batch, C, H, W), got {tuple(x0.shape)}")
    h, w = x0.shape[-2:]
    bh, bw = max(1, round(h * level)), max(1, round(w * level))
    out = x0.clone()
    out[..., (h - bh) // 2:(h - bh) // 2 + bh, (w - bw) // 2:(w - bw) // 2 + bw] = 0
    return out


def _blur(x0: Tensor, g: torch.Generator, level: float) -> Tensor:
    if x0.ndim < 3:
        raise ValueError(f"the 'blur' degradation needs images (batch, C, H, W), got {tuple(x0.shape)}")
    if not level > 0:
        raise ValueError(f"the 'blur' degradation needs a kernel std > 0 pixels, got {level}")
    r = max(1, math.ceil(3 * level))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x0.dtype, device=x0.device) / level) ** 2)
    k = k / k.sum()
    c = x0.shape[-3]
    img = x0.reshape(-1, c, *x0.shape[-2:])
    # separable and linear; replicate padding keeps the image's mean level at the border
    img = torch.nn.functional.pad(img, (r, r, r, r), mode="replicate")
    img = torch.nn.functional.conv2d(img, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    img = torch.nn.functional.conv2d(img, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return img.reshape(x0.shape)


def _downsample(x0: Tensor, g: torch.Generator, level: float) -> Tensor:
    f = int(level)
    if x0.ndim < 3 or f != level or f < 1 or x0.shape[-1] % f or x0.shape[-2] % f:
        raise ValueError(f"the 'downsample' degradation needs images whose sides the integer factor divides, got "
                         f"factor {level} for shape {tuple(x0.shape)}")
    h, w = x0.shape[-2:]
    low = x0.reshape(*x0.shape[:-2], h // f, f, w // f, f).mean((-3, -1))
    return low.repeat_interleave(f, -2).repeat_interleave(f, -1)


DEGRADATIONS = {"noise": (_noise, 0.5), "block": (_block, 0.5), "blur": (_blur, 1.0), "downsample": (_downsample, 2)}
"""Degradations of x0 and their default levels: additive Gaussian noise of std ``level``; a central
block of ``level`` times the image side set to 0; a Gaussian blur of std ``level`` pixels; block
averages over ``level`` x ``level`` pixels, shown at full size (nearest neighbour). Blur and
downsampling are linear and noiseless (InDI's noise term, :mod:`.indi`, regularises their inversion)."""


class Degraded:
    """x1 = a degraded copy of x0 (restoration, InDI's setting); use with the ``paired`` coupling."""

    paired = True

    def __init__(self, kind: str, level: float | None = None):
        if kind not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {kind!r}; choose one of: {', '.join(DEGRADATIONS)}")
        self.kind = kind
        self.level = DEGRADATIONS[kind][1] if level is None else float(level)

    def __call__(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        return DEGRADATIONS[self.kind][0](x0, generator, self.level)


def make_source(spec: str, *, seed: int = 0):
    """A source from its name: ``gaussian``, ``dataset:NAME`` (the training split of a data set) or
    ``degraded:KIND`` (:data:`DEGRADATIONS`)."""
    if spec == "gaussian":
        return Gaussian()
    kind, _, arg = spec.partition(":")
    if kind == "dataset" and arg:
        from ..data import load_dataset

        return TableSource(load_dataset(arg, "train", seed=seed).x)
    if kind == "degraded" and arg:
        return Degraded(arg)
    raise ValueError(f"unknown source {spec!r}; use gaussian, dataset:NAME or degraded:KIND")
