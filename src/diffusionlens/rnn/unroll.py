"""Training through sampling steps: fine-tuning a denoiser by back-propagation through k >= 2 unrolled
steps of a deterministic sampler — the essay's open question of whether training through two or more
steps of the recurrent network, instead of one step per example, helps.

A k-step window of the sampler's grid is run with gradients; every evaluation of the network is
recomputed in the backward pass (``torch.utils.checkpoint``), so memory holds the canvas per step, not
the network's activations. Two targets (composable values, :class:`AgainstData` and
:class:`AgainstSolve`):

* the data: a window of k steps starting at a random level sigma_i of the n-step grid, from
  x_i = x0 + sigma_i n; the loss is the x0 error of the window's last estimate, weighted like the
  training loss at its level. With k = 1 it is the ordinary denoising loss at sigma_i;
* a longer solve: from noise at sigma_max, the k-step sample against a ``steps``-step solve of a
  reference (by default the model as it was before fine-tuning; the exact oracle in the tests), so the
  k-step map is pulled toward the reference's ODE map.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .. import samplers
from .selfcond import SelfConditioned, Trajectory

__all__ = ["AgainstData", "AgainstSolve", "FinetuneResult", "unrolled", "unroll_grid", "finetune_unrolled"]


class _Checkpointed:
    """A denoiser whose every evaluation is recomputed in the backward pass instead of stored."""

    def __init__(self, denoiser):
        self.denoiser = denoiser

    def __call__(self, x: Tensor, sigma, **cond) -> Tensor:
        if not torch.is_grad_enabled():
            return self.denoiser(x, sigma, **cond)
        return _checkpoint(lambda a, s: self.denoiser(a, s, **cond), x, sigma, use_reentrant=False)


def unroll_grid(denoiser, shape, sampler: str, steps: int, sigma_min: float, sigma_max: float) -> tuple:
    """(sampler function, (steps + 1,) grid) of a deterministic fixed-grid sampler, as ``sample`` would run it."""
    r = samplers.resolve(denoiser, shape, sampler, steps=steps, sigma_min=sigma_min, sigma_max=sigma_max)
    if not r.spec.deterministic or r.spec.adaptive:
        raise ValueError(f"unrolled fine-tuning needs a deterministic fixed-grid sampler, got {r.spec.name!r}")
    return r.sampler, r.sigmas


def unrolled(denoiser, sampler_fn, x: Tensor, sigmas: Tensor, *, checkpoint: bool = True) -> tuple[Tensor, Tensor]:
    """Run ``sampler_fn`` over ``sigmas`` from x (at sigmas[0]) with gradients; returns (x at sigmas[-1],
    the last step's estimate of x0)."""
    last = {}

    def keep(info: dict) -> None:
        last["denoised"] = info["denoised"]

    # a self-conditioned model threads its estimate as in sampling; the state stays outside the recomputed
    # evaluation, so that the backward pass recomputes each evaluation with the estimate it was given
    selfcond = isinstance(denoiser, SelfConditioned)
    inner = denoiser.denoiser if selfcond else denoiser
    den = _Checkpointed(inner) if checkpoint else inner
    out = sampler_fn(Trajectory(den) if selfcond else den, x, sigmas, callback=keep)
    return out, last.get("denoised", out)


@dataclass(frozen=True)
class AgainstData:
    """Target: the data. ``x0`` (N, ...) clean data; windows start on the ``steps``-step grid."""

    x0: Tensor
    steps: int = 8

    def loss(self, model, fn_grid, k: int, batch: int, g: torch.Generator, weight) -> Tensor:
        fn, grid = fn_grid
        n = len(grid) - 1
        i = int(torch.randint(0, n - k + 1, (1,), generator=g))
        x0 = self.x0[torch.randint(0, self.x0.shape[0], (batch,), generator=g)]
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        window = grid[i:i + k + 1]
        x = x0 + float(window[0]) * noise
        _, est = unrolled(model, fn, x, window)
        w = weight(float(window[-2]))
        return w * (est - x0).pow(2).flatten(1).mean(1).mean()


@dataclass(frozen=True)
class AgainstSolve:
    """Target: a ``steps``-step ``sampler`` solve of ``reference`` from the same noise (None: a frozen copy
    of the model as fine-tuning starts)."""

    reference: object = None
    steps: int = 64
    sampler: str = "heun"
    shape: tuple = field(default=())
    dtype: torch.dtype = torch.float32

    def loss(self, model, fn_grid, k: int, batch: int, g: torch.Generator, weight) -> Tensor:
        fn, grid = fn_grid
        noise = torch.randn((batch, *self.shape), generator=g, dtype=self.dtype)
        x = noise * float(grid[0])
        with torch.no_grad():
            ref_fn, ref_grid = unroll_grid(self.reference, self.shape, self.sampler, self.steps,
                                           float(grid[-2]), float(grid[0]))
            target = ref_fn(self.reference, x, ref_grid)
        out, _ = unrolled(model, fn, x, grid)
        return (out - target).pow(2).flatten(1).mean(1).mean()


@dataclass
class FinetuneResult:
    losses: list[float]
    steps: int
    seconds: float


def finetune_unrolled(model: nn.Module, target, *, k: int = 2, sampler: str = "euler", steps: int | None = 200,
                      minutes: float | None = None, batch_size: int = 64, lr: float = 1e-4,
                      sigma_min: float = 0.002, sigma_max: float = 80.0, seed: int = 0, grad_clip: float = 1.0,
                      loss_weight=None, progress: bool = False) -> FinetuneResult:
    """Fine-tune ``model`` (a canonical denoiser module; its trainable parameters are updated in place) by
    back-propagation through ``k`` unrolled ``sampler`` steps against ``target``.

    ``AgainstData`` unrolls k steps of its n-step grid (k > n is a ValueError); ``AgainstSolve`` the whole
    k-step grid. Budget: ``steps`` Adam updates and/or ``minutes`` of this process's CPU time.
    ``loss_weight(sigma) -> float`` weights the data target's error at the window's last level (default 1).
    """
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"the unroll depth k must be an integer >= 1, got {k!r}")
    if steps is None and minutes is None:
        raise ValueError("set a budget: steps, minutes, or both")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if isinstance(target, AgainstData):
        shape = tuple(target.x0.shape[1:])
        fn_grid = unroll_grid(model, shape, sampler, target.steps, sigma_min, sigma_max)
        if k > target.steps:
            raise ValueError(f"unroll depth k={k} is larger than the grid ({target.steps} steps)")
    elif isinstance(target, AgainstSolve):
        if target.reference is None:
            target = AgainstSolve(copy.deepcopy(model).requires_grad_(False), target.steps, target.sampler,
                                  target.shape, target.dtype)
        fn_grid = unroll_grid(model, target.shape, sampler, k, sigma_min, sigma_max)
    else:
        raise TypeError(f"target must be AgainstData or AgainstSolve, got {type(target).__name__}")
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    weight = loss_weight or (lambda s: 1.0)
    losses: list[float] = []
    t0 = time.process_time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"unrolled k={k}", leave=False)
    step = 0
    while (steps is None or step < steps) and (minutes is None or time.process_time() - t0 < 60 * minutes):
        loss = target.loss(model, fn_grid, k, batch_size, g, weight)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite unrolled loss {loss.item()} at fine-tuning step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(loss.item())
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4g}")
    if bar is not None:
        bar.close()
    return FinetuneResult(losses, step, time.process_time() - t0)
