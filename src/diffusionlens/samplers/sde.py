"""Score-based stochastic samplers: reverse-SDE Euler–Maruyama, predictor–corrector, annealed Langevin.

Conventions: scale-free x = x0 + sigma n, so for every process the forward SDE is
``dx = dW_u`` in the "Brownian clock" u = sigma^2 and the reverse SDE is
``dx = -score du + dW_u`` run from u = sigma_max^2 down (Song et al. 2021, eq. 6, VE form; other
processes only relabel time). The score is read from the denoiser, score = (D - x) / sigma^2.

* Euler–Maruyama in u: x_next = x + (sigma^2 - sigma_next^2) score + sqrt(sigma^2 - sigma_next^2) z,
  i.e. ``x_next = r x + (1 - r) D + sigma sqrt(1 - r) z`` with r = sigma_next^2 / sigma^2 (Song et al.'s
  "reverse diffusion" predictor for VE). The drift factor r lies in [0, 1] for any grid, so it is
  stable at every step count.
* Langevin corrector (Song et al. 2021, Alg. 4): x += eps score + sqrt(2 eps) z. Their step
  eps = 2 (snr ||z|| / ||score||)^2 uses norms averaged over the batch, which makes a sample depend
  on its batch. Two per-sample rules (:class:`LangevinStep`): ``SIGMA`` (default) eps = 2 snr^2 sigma^2,
  the value of their rule where it was designed (high dimension, where ||z||^2 ~ d and
  ||score||^2 ~ d / sigma^2); ``NORM`` their ratio per sample, capped at sigma^2 (so the drift
  (eps / sigma^2)(D - x) never overshoots D). In low dimension the per-sample ratio is heavy-tailed
  (F(d, d)-like: infinite mean for d = 2) and the capped steps inflate the within-mode variance by
  1 / (1 - eps / 2v) — measurably on the 2-D ring, hence the default.
* Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1): ``n_steps_each`` Langevin steps
  x += (alpha / 2) score + sqrt(alpha) z at every noise level, with alpha = step_scale * sigma^2
  (their alpha_i = eps sigma_i^2 / sigma_L^2, i.e. step_scale = eps / sigma_L^2; 0.2 in their
  CIFAR-10 setting with 100 steps per level). Each step contracts x - D by (1 - step_scale / 2), so
  the leftover of the previous level, (1 - step_scale / 2)^n_steps_each times the level ratio, must
  stay well below 1: their 0.9^100 = 3e-5 does; with the default 10 steps per level, 0.9^10 = 0.35
  times a ratio of ~4.5 (8 levels from 80 to 0.002) does not, while step_scale = 1 (0.5^10 = 1e-3)
  does — the default. Stability needs step_scale < 4.

All three end with Tweedie's denoising step x = D(x, sigma) on the interval into sigma = 0
(Song et al. 2021's "noise removal"; Jolicoeur-Martineau et al. 2021): no noise is added there.
Randomness comes from per-sample noise streams (``generator``: torch.Generator or seeds).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._util import Choice, expand
from ..parameterization import score_from_denoiser
from ._common import Callback, NoiseStream, call, grid_floats, lincomb, run
from .spec import sampler

__all__ = [
    "LangevinStep",
    "em_update",
    "langevin_update",
    "langevin_snr_step_size",
    "euler_maruyama",
    "pc",
    "langevin",
]


class LangevinStep(Choice, what="step rule"):
    """Step-size rules of the Langevin corrector (see the module docstring)."""

    SIGMA = "sigma"
    NORM = "norm"


def em_update(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, z: Tensor | None) -> Tensor:
    """Reverse-SDE Euler–Maruyama step in u = sigma^2 from sigma to sigma_next (returns D if sigma_next = 0)."""
    if sigma_next == 0:
        return denoised
    r = (sigma_next / sigma) ** 2
    return lincomb((r, x), (1.0 - r, denoised), (sigma * math.sqrt(1 - r), z))


def langevin_update(x: Tensor, denoised: Tensor, sigma: float, step: Tensor | float, z: Tensor) -> Tensor:
    """Langevin step x + step * score + sqrt(2 step) z; ``step`` a float or (batch,) tensor."""
    score = score_from_denoiser(denoised, x, sigma)
    if isinstance(step, Tensor):
        return x + expand(step, x) * score + expand(torch.sqrt(2 * step), x) * z
    return x + step * score + math.sqrt(2 * step) * z


def langevin_snr_step_size(x: Tensor, denoised: Tensor, sigma: float, z: Tensor, snr: float) -> Tensor:
    """Song et al. 2021 Alg. 4: eps = 2 (snr ||z|| / ||score||)^2 per sample, capped at sigma^2; (batch,)."""
    score = score_from_denoiser(denoised, x, sigma)
    gn = score.reshape(x.shape[0], -1).norm(dim=1)
    zn = z.reshape(x.shape[0], -1).norm(dim=1)
    eps = 2 * (snr * zn / gn.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
    return eps.clamp(max=sigma**2)


def _stochastic_grid(sigmas, name):
    return grid_floats(sigmas, allow_increasing=False, name=name)


@sampler(order=1, deterministic=False)
def euler_maruyama(denoiser, x: Tensor, sigmas, *, generator=None, callback: Callback | None = None) -> Tensor:
    """Reverse-SDE Euler–Maruyama (Song et al. 2021) in the Brownian clock u = sigma^2.

    Args: denoiser D(x, sigma); x (batch, ...) at sigmas[0]; sigmas decreasing (steps + 1,).
    Returns x at sigmas[-1]; NFE = steps.
    """
    s = _stochastic_grid(sigmas, "euler_maruyama")
    noise = NoiseStream.make(generator, x)

    def step(i, x, sigma, sigma_next, state):
        denoised = call(denoiser, x, sigma)
        z = noise.normal(i, x) if sigma_next > 0 else None
        return em_update(x, denoised, sigma, sigma_next, z), None, denoised

    return run(step, x, s, callback=callback)


@sampler(order=1, nfe_per_step=2, nfe_extra=-1, deterministic=False)
def pc(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    generator=None,
    callback: Callback | None = None,
    snr: float = 0.16,
    n_corrector: int = 1,
    step_rule: LangevinStep | str = LangevinStep.SIGMA,
) -> Tensor:
    """Predictor–corrector sampling (Song et al. 2021, Alg. 2): an Euler–Maruyama predictor step,
    then ``n_corrector`` Langevin corrector steps at the new noise level with signal-to-noise ``snr``
    (0.16 is their VE setting) and step-size rule ``step_rule`` (``"sigma"`` or ``"norm"``).
    NFE = steps + n_corrector * (number of positive sigmas after the first).
    """
    step_rule = LangevinStep.parse(step_rule)
    if snr <= 0 or not (isinstance(n_corrector, int) and n_corrector >= 0):
        raise ValueError(f"need snr > 0 and an integer n_corrector >= 0, got snr={snr}, n_corrector={n_corrector}")
    s = _stochastic_grid(sigmas, "pc")
    noise = NoiseStream.make(generator, x)

    def step(i, x, sigma, sigma_next, state):
        denoised = call(denoiser, x, sigma)
        z = noise.normal(i, x) if sigma_next > 0 else None
        x = em_update(x, denoised, sigma, sigma_next, z)
        if sigma_next > 0:
            for j in range(n_corrector):
                d = call(denoiser, x, sigma_next)
                zc = noise.normal(i, x, sub=1 + j)
                if step_rule is LangevinStep.SIGMA:
                    eps = 2 * snr**2 * sigma_next**2
                else:
                    eps = langevin_snr_step_size(x, d, sigma_next, zc, snr)
                x = langevin_update(x, d, sigma_next, eps, zc)
        return x, None, denoised

    return run(step, x, s, callback=callback)


@sampler(order=1, nfe_per_step=10, nfe_extra=1, deterministic=False)
def langevin(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    generator=None,
    callback: Callback | None = None,
    n_steps_each: int = 10,
    step_scale: float = 1.0,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) over the positive entries of ``sigmas``.

    At each sigma_i > 0: ``n_steps_each`` steps x += (a/2) score + sqrt(a) z with a = step_scale sigma_i^2;
    then, on the interval into sigma = 0, Tweedie's denoising x = D(x, sigma_last).
    NFE = n_steps_each * (positive levels) + 1 when the grid ends at 0.
    """
    if not (isinstance(n_steps_each, int) and n_steps_each >= 1):
        raise ValueError(f"n_steps_each must be an integer >= 1, got {n_steps_each!r}")
    if not (0 < step_scale < 4):
        raise ValueError(f"step_scale must lie in (0, 4) for stability, got {step_scale}")
    s = _stochastic_grid(sigmas, "langevin")
    noise = NoiseStream.make(generator, x)

    def step(i, x, sigma, sigma_next, state):
        a = step_scale * sigma**2
        denoised = None
        for j in range(n_steps_each):
            denoised = call(denoiser, x, sigma)
            x = langevin_update(x, denoised, sigma, 0.5 * a, noise.normal(i, x, sub=j))
        if sigma_next == 0:
            denoised = call(denoiser, x, sigma)
            x = denoised
        return x, None, denoised

    return run(step, x, s, callback=callback)
