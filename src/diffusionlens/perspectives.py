"""Numbers of the perspectives on one denoiser that no other layer computes: pure functions, no files.

Notation (``docs/notation.md``): x_hat = x0 + sigma n, canonical denoiser D(x_hat, sigma) ~ E[x0 | x_hat],
score s(x_hat) = (D - x_hat) / sigma^2, log-SNR lambda = -2 log sigma.

* :func:`score_matching` — explicit score matching against the exact score and denoising score
  matching (Vincent 2011) on the same draws: they differ by a constant that does not depend on the
  model, so they share their minimiser, the exact posterior mean.
* :func:`implied_weighting` — the weighting over log-SNR that a loss configuration implies, in the eps
  form of Kingma & Gao 2023, with whether it is monotone (their condition for the objective to be an
  ELBO of noise-augmented data).
* :func:`langevin_tweedie` — annealed Langevin dynamics stopped at a positive noise level, then one
  Tweedie step x_hat + sigma^2 s = D: the score-estimator view of sampling.

Shapes: x0 and x_hat (batch, *data_shape); per-sample values (batch,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["score_matching", "implied_weighting", "langevin_tweedie"]


def _sigma_value(sigma) -> float:
    s = float(sigma)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    return s


@torch.no_grad()
def score_matching(denoiser, oracle, sigma: float, *, n: int = 4096, generator: torch.Generator | None = None) -> dict:
    """Explicit vs denoising score matching at noise level ``sigma`` (Vincent 2011, sec. 4.2), in units of 1/sigma^2.

    With x0 drawn from the exact mixture ``oracle`` and x_hat = x0 + sigma n (so x_hat ~ p_sigma):

        ESM = E ||s_theta(x_hat) - grad log p_sigma(x_hat)||^2 / d          (needs the exact score)
        DSM = E ||s_theta(x_hat) + n / sigma||^2 / d                         (needs only x0 and n)
        DSM - ESM = C(sigma) = E tr Cov[x0 | x_hat] / (d sigma^4),  whatever the model,

    since E[n / sigma | x_hat] = -grad log p_sigma(x_hat) (Tweedie) makes the cross term vanish. In
    denoiser units sigma^4 DSM is the denoising MSE, sigma^4 ESM the gap to the exact posterior mean
    and sigma^4 C the irreducible posterior variance.

    Returns {"sigma", "esm", "dsm", "difference" (DSM - ESM measured on the same draws), "stderr" (of the
    difference), "constant" (C from the oracle's posterior covariance on the same x_hat), "constant_stderr"}.
    """
    sigma = _sigma_value(sigma)
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    x0 = oracle.sample(n, generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x = x0 + sigma * noise
    s = torch.full((n,), sigma, dtype=x0.dtype)
    d = x0[0].numel()
    model = (_call(denoiser, x, s) - x) / sigma**2
    exact = oracle.score(x, s)
    esm = (model - exact).flatten(1).pow(2).sum(1) / d
    dsm = (model + noise / sigma).flatten(1).pow(2).sum(1) / d
    diff = dsm - esm
    const = oracle.posterior_cov_trace(x, s) / (d * sigma**4)
    return {"sigma": sigma, "esm": float(esm.mean()), "dsm": float(dsm.mean()), "difference": float(diff.mean()),
            "stderr": float(diff.std() / math.sqrt(n)), "constant": float(const.mean()),
            "constant_stderr": float(const.std() / math.sqrt(n))}


def _call(denoiser, x: Tensor, s: Tensor) -> Tensor:
    """D(x, s) in float64 on the CPU, called in the dtype and on the device of a network's parameters."""
    params = getattr(denoiser, "parameters", None)
    p = next(iter(params()), None) if params is not None else None
    if p is None:
        return denoiser(x, s).double()
    return denoiser(x.to(p.device, p.dtype), s.to(p.device, p.dtype)).double().cpu()


def implied_weighting(loss, *, points: int = 61) -> dict:
    """The weighting over log-SNR that a :class:`diffusionlens.losses.Loss` implies (Kingma & Gao 2023, eps form).

    Returns {"logsnr" (points,), "weight" (normalised to a maximum of 1), "monotone" (w non-increasing in
    lambda where it is positive: K&G's condition for the objective to equal the ELBO of data augmented
    with Gaussian noise), "peak_logsnr"} over the loss's noise-level range, lambda decreasing in t.
    """
    if not (isinstance(points, int) and points >= 3):
        raise ValueError(f"points must be an integer >= 3, got {points!r}")
    lo, hi = loss.sigma_range
    lam = torch.linspace(-2 * math.log(hi), -2 * math.log(lo), points, dtype=torch.float64)  # uniform in lambda
    t = loss.process.t_of_sigma(torch.exp(-lam / 2)).clamp(loss.t_min, loss.t_max)
    w = loss.implied_weighting(t, normalize=True)
    # non-increasing in lambda up to rounding (a flat weighting, e.g. the ELBO's, counts as monotone)
    monotone = bool((w[1:] <= w[:-1] * (1 + 1e-9) + 1e-12).all())
    return {"logsnr": lam.tolist(), "weight": w.tolist(), "monotone": monotone,
            "peak_logsnr": float(lam[int(torch.argmax(w))])}


@torch.no_grad()
def langevin_tweedie(denoiser, noise: Tensor, sigmas, *, n_steps_each: int = 4,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, float]:
    """Annealed Langevin dynamics (Song & Ermon 2019) down to sigmas[-1] > 0, then one Tweedie step.

    Args:
        noise: (batch, *data_shape) standard normal; the chain starts at sigmas[0] * noise.
        sigmas: decreasing positive levels (the last one is where Langevin stops).
    Returns:
        (x at sigmas[-1] (noisy), D(x, sigmas[-1]) (its Tweedie estimate of x0), NFE per sample).
    """
    from .samplers import SAMPLERS

    grid = torch.as_tensor(sigmas, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 2 or bool((grid <= 0).any()) or bool((grid[1:] >= grid[:-1]).any()):
        raise ValueError("sigmas must be a decreasing grid of at least 2 positive levels (Langevin stops above 0)")
    # the sampler runs its steps at every level but the grid's last, which only ends the loop: append one
    ends = torch.cat([grid, grid[-1:] / 2])
    x = SAMPLERS["langevin"](denoiser, noise * float(grid[0]), ends, generator=generator, n_steps_each=n_steps_each)
    last = torch.full((x.shape[0],), float(grid[-1]), dtype=x.dtype, device=x.device)
    return x, denoiser(x, last), float(n_steps_each * len(grid) + 1)
