"""Experts per noise range (eDiff-I, Balaji et al. 2022; the SDXL refiner, Podell et al. 2023): k
denoisers, each trained on its own interval of noise levels, composed into one canonical denoiser.

Expert j answers for sigma in [b_{j-1}, b_j) (b_0 = 0 and b_k = inf, so the composite is defined
everywhere, and a boundary belongs to the expert above it). Samplers, likelihoods and encoders use the
composite unchanged; a batch whose rows straddle a boundary (per-sample sigma, as in the adaptive
sampler or an ELBO) is split by rows. Boundaries are given, or cut the training density into equal
shares (:func:`equal_share_boundaries`), so each expert sees the same fraction of the training draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._util import as_sigma

__all__ = ["Experts", "equal_share_boundaries", "check_boundaries", "boundaries_of_ranges", "expert_configs"]


def check_boundaries(boundaries: Sequence[float], k: int | None = None, sigma_range=None) -> list[float]:
    """Boundaries as a list of floats, checked: finite, strictly increasing, positive, k - 1 of them when
    ``k`` is given, and strictly inside ``sigma_range`` = (lo, hi) when given (one-line ValueError)."""
    try:
        b = [float(v) for v in boundaries]
    except (TypeError, ValueError):
        raise ValueError(f"expert boundaries must be numbers (noise levels sigma), got {boundaries!r}") from None
    if k is not None and len(b) != k - 1:
        raise ValueError(f"{k} experts need {k - 1} boundaries, got {len(b)}: {b}")
    if not all(math.isfinite(v) and v > 0 for v in b):
        raise ValueError(f"expert boundaries must be finite noise levels > 0, got {b}")
    for lo, hi in zip(b, b[1:]):
        if not lo < hi:
            raise ValueError(f"expert boundaries must increase strictly, got {lo:g} then {hi:g} in {b}")
    if sigma_range is not None:
        lo, hi = sigma_range
        out = [v for v in b if not lo < v < hi]
        if out:
            raise ValueError(f"expert boundary sigma={out[0]:g} lies outside the training range ({lo:g}, {hi:g})")
    return b


def boundaries_of_ranges(ranges: Sequence[tuple[float, float]], rtol: float = 1e-6) -> list[float]:
    """The boundaries of consecutive experts' sigma ranges [(lo, hi), ...] (sorted by lo), which must tile
    an interval: a gap or an overlap between neighbours is a ValueError naming both noise levels."""
    ranges = sorted((float(lo), float(hi)) for lo, hi in ranges)
    if not ranges:
        raise ValueError("no experts")
    out = []
    for (_, hi0), (lo1, _) in zip(ranges, ranges[1:]):
        if abs(hi0 - lo1) > rtol * max(abs(hi0), abs(lo1)):
            what = "a gap" if lo1 > hi0 else "an overlap"
            raise ValueError(f"the experts leave {what} between sigma={hi0:.6g} (end of one range) and "
                             f"sigma={lo1:.6g} (start of the next)")
        out.append(lo1)
    return out


def equal_share_boundaries(loss, k: int) -> list[float]:
    """The k - 1 noise levels that cut ``loss``'s training density of sigma into k equal shares."""
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"the number of experts must be an integer >= 1, got {k!r}")
    u = torch.arange(1, k, dtype=torch.float64) / k
    return loss.process.sigma(loss.t_from_uniform(u)).tolist()


def expert_configs(cfg, boundaries: Sequence[float]) -> list:
    """One TrainConfig per expert: ``cfg`` with its noise levels cut to [b_{j-1}, b_j] (the base density
    truncated to the interval), in the process's time."""
    b = check_boundaries(boundaries, sigma_range=cfg.sigma_range)
    ts = cfg.noise_process.t_of_sigma(torch.tensor(b, dtype=torch.float64)).tolist()
    edges = [cfg.t_min, *ts, cfg.t_max]
    return [cfg.replace(t_min=float(lo), t_max=float(hi)) for lo, hi in zip(edges, edges[1:])]


class Experts(nn.Module):
    """Canonical denoiser composed of ``experts`` (k denoisers, lowest noise first) split at ``boundaries``.

    Args:
        experts: k canonical denoisers ``D_j(x_hat, sigma, **cond)``.
        boundaries: k - 1 increasing noise levels; expert j serves [b_{j-1}, b_j).
    """

    def __init__(self, experts: Sequence, boundaries: Sequence[float]):
        super().__init__()
        experts = list(experts)
        if not experts:
            raise ValueError("Experts needs at least one expert")
        bad = [i for i, e in enumerate(experts) if not callable(e)]
        if bad:
            raise TypeError(f"expert {bad[0]} is not a denoiser (callable), got {type(experts[bad[0]]).__name__}")
        self.boundaries = check_boundaries(boundaries, len(experts))
        if all(isinstance(e, nn.Module) for e in experts):
            self.experts = nn.ModuleList(experts)
        else:
            self._plain = experts

    @property
    def members(self) -> list:
        return list(self.experts) if "experts" in self._modules else self._plain

    def expert_index(self, sigma: Tensor) -> Tensor:
        """(batch,) int64: which expert serves each noise level (sigma (batch,))."""
        b = torch.tensor(self.boundaries, dtype=torch.float64, device=sigma.device)
        return torch.bucketize(sigma.to(torch.float64), b, right=True)

    def forward(self, x_hat: Tensor, sigma, **cond) -> Tensor:
        sigma = as_sigma(sigma, x_hat)
        idx = self.expert_index(sigma)
        members = self.members
        first = int(idx[0])
        if bool((idx == first).all()):
            return members[first](x_hat, sigma, **cond)
        out = None
        for j in torch.unique(idx).tolist():
            rows = idx == j
            sub = {k: v[rows] if isinstance(v, Tensor) and v.ndim and v.shape[0] == x_hat.shape[0] else v
                   for k, v in cond.items()}
            d = members[j](x_hat[rows], sigma[rows], **sub)
            if out is None:
                out = torch.empty(x_hat.shape, dtype=d.dtype, device=d.device)
            out[rows] = d
        return out

    def trajectory(self) -> Experts:
        """For sampling: the experts' own stateful versions where they have them (self-conditioning); an
        expert's state starts from zeros when the run enters its range."""
        return Experts([m.trajectory() if callable(getattr(m, "trajectory", None)) else m for m in self.members],
                       self.boundaries)
