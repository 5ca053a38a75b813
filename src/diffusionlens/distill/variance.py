"""The variance of a regression target about the posterior mean, per noise level.

MSE training regresses a target y on x_t = x0 + sigma n; what the network can learn is E[y | x_t],
and the scatter of y about it is noise the optimiser must average out. For the data target y = x0
that scatter is the posterior variance tr Cov[x0 | x_t]; a teacher's E[x0 | x_t], or the x0-target of
two deterministic teacher steps, is a function of x_t alone, so its conditional variance is zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._util import as_sigma
from .progressive import data_sampler, two_step_target

__all__ = ["TARGETS", "target_variance"]

TARGETS = ("data", "teacher", "two-step")


@torch.no_grad()
def target_variance(
    teacher,
    data: Tensor | Callable[[int, torch.Generator], Tensor],
    sigmas,
    *,
    reference=None,
    targets=("data", "teacher"),
    n: int = 4096,
    generator: torch.Generator | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Per noise level, the mean squared scatter of each target about the reference posterior mean.

    For every positive sigma in ``sigmas`` (decreasing), draws x0 from ``data`` (a tensor, sampled
    with replacement, or ``data(n, generator)``) and x_t = x0 + sigma n, and reports

        value = E || y - R(x_t, sigma) ||^2 / d   and   stderr, its Monte-Carlo standard error,

    with R = ``reference`` (default: the teacher). When R is the exact posterior mean, ``"data"``
    gives the posterior variance E tr Cov[x0 | x_t] / d, and any target that is a function of x_t
    alone gives its squared distance from the posterior mean (its conditional variance is zero).

    Targets: ``"data"`` y = x0; ``"teacher"`` y = teacher(x_t); ``"two-step"`` the x0-target of two
    Euler (DDIM) teacher steps sigmas[2j] -> sigmas[2j+1] -> sigmas[2j+2] (:func:`two_step_target`),
    reported at the student's levels sigmas[0], sigmas[2], ... (``sigmas`` then needs an odd length,
    e.g. :func:`halvable_grid`).
    Returns {target: {"sigma": levels, "value": (L,), "stderr": (L,)}} in float64.
    """
    reference = teacher if reference is None else reference
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown target {unknown[0]!r}; choose from {', '.join(TARGETS)}")
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    s = [float(v) for v in torch.as_tensor(sigmas, dtype=torch.float64).flatten()]
    if not s or any(not (math.isfinite(v) and v > 0) for v in s[:-1]) or any(a <= b for a, b in zip(s, s[1:])):
        raise ValueError(f"sigmas must be a decreasing sequence of positive levels (the last may be 0), got {s}")
    draw = data_sampler(data)
    out = {}
    for name in targets:
        if name == "two-step":
            if len(s) < 3 or len(s) % 2 == 0:
                raise ValueError(f"the two-step target needs an odd number (>= 3) of levels, got {len(s)}")
            levels = [(s[i], s[i + 2], s[i + 1]) for i in range(0, len(s) - 2, 2)]
        else:
            levels = [(v, None, None) for v in s if v > 0]
        vals, errs = [], []
        for sigma, nxt, mid in levels:
            x0 = draw(n, generator)
            x = x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
            if name == "two-step":
                y = two_step_target(teacher, x, sigma, nxt, mid)
            else:
                y = x0 if name == "data" else teacher(x, as_sigma(sigma, x))
            e = ((y - reference(x, as_sigma(sigma, x))) ** 2).flatten(1).mean(1).double()
            vals.append(e.mean())
            errs.append(e.std() / math.sqrt(n))
        out[name] = {"sigma": torch.tensor([lv[0] for lv in levels], dtype=torch.float64),
                     "value": torch.stack(vals), "stderr": torch.stack(errs)}
    return out
