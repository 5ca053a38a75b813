"""Blurring diffusion (inverse heat dissipation) in the canonical form.

Rissanen et al. (2023) corrupt an image by the heat equation, which damps DCT coefficient k by
exp(-lambda_k tau), lambda_k = (2 pi f_k)^2; Hoogeboom & Salimans (2023) add Gaussian noise and show
the result is a Gaussian diffusion that is diagonal in the DCT basis, with a per-frequency scale.
Written scale-free, as every process here is, the corrupted input at noise level sigma is

    x_hat = B(sigma) x0 + sigma n,     B(sigma) = idct2 . diag(d(sigma)) . dct2,
    d_k(sigma) = (1 - d_min) exp(-lambda_k tau(sigma)) + d_min,
    tau(sigma) = tau_max sigma^2 / (1 + sigma^2),

which is their process (cosine schedule, dissipation time tau_max sin^2(pi t / 2)) divided by its
scale alpha_t = cos(pi t / 2). ``max_blur`` sets tau_max so that the lowest nonzero frequency is
damped by exp(-max_blur) at full blur, whatever the image size. The mean (f = 0) is never damped.

A network trained on this corruption is still a function D(x_hat, sigma) ~ E[x0 | x_hat], so the
training loop, EMA, checkpoints and the run layer's model loading are unchanged; only the objective
(:class:`diffusionlens.objectives.blurring.Blurring`, ``objective="blurring"``) and the sampler
(:func:`blurring_sample`) differ. It is an objective rather than a process because a process is a
scalar pair s(t), sigma(t) that every generic sampler relies on; a per-frequency scale would make
each of them silently wrong. A blurring run opens as :class:`diffusionlens.run.students.BlurringModel`,
which samples with :func:`blurring_sample` wherever the run layer generates.

Sampling works per DCT coefficient: with u = dct2(x_hat) and u0 = dct2(D), a deterministic step from
sigma to sigma' is DDIM, u' = d' u0 + sigma' (u - d u0) / sigma; the stochastic step draws from the
exact Gaussian posterior q(u' | u, u0) of the forward process (Hoogeboom & Salimans's sampler).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .._util import expand
from .dct import dct2, heat_rates, idct2

__all__ = ["Blur", "blurring_sample", "blurred_denoiser"]


@functools.cache
def _relative_rates(h: int, w: int) -> Tensor:
    """Heat-equation decay rates relative to the lowest nonzero one, (h, w) float64."""
    rates = heat_rates(h, w)
    return torch.from_numpy(rates / rates[rates > 0].min())


@dataclass(frozen=True)
class Blur:
    """The blur schedule: damping exp(-max_blur) of the lowest frequency at full blur, floor ``d_min``."""

    max_blur: float = 2.0
    d_min: float = 0.001

    def __post_init__(self):
        if not (self.max_blur >= 0 and 0 < self.d_min < 1):
            raise ValueError(f"need max_blur >= 0 and 0 < d_min < 1, got {self.max_blur}, {self.d_min}")

    def scales(self, sigma: Tensor, shape) -> Tensor:
        """Per-coefficient scales d(sigma), (batch, 1, H, W) in sigma's dtype, for images of ``shape`` (C, H, W)."""
        rel = _relative_rates(*shape[-2:]).to(dtype=sigma.dtype, device=sigma.device)
        frac = sigma**2 / (1 + sigma**2)
        damp = torch.exp(-self.max_blur * frac[:, None, None] * rel[None])
        return ((1 - self.d_min) * damp + self.d_min)[:, None]

    def corrupt(self, x0: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
        """x_hat = B(sigma) x0 + sigma n for x0, noise (batch, C, H, W) and sigma (batch,)."""
        return idct2(self.scales(sigma, x0.shape[1:]) * dct2(x0)) + expand(sigma, x0) * noise


def blurred_denoiser(oracle, blur: Blur):
    """The exact E[x0 | B(sigma) x0 + sigma n = x] of a :class:`~.oracle.PowerLawGaussian`, a D(x, sigma)."""

    def denoise(x: Tensor, sigma) -> Tensor:
        xi = oracle._image(x)
        s = torch.as_tensor(sigma, dtype=xi.dtype, device=xi.device).reshape(-1).expand(xi.shape[0])
        d, v, m = blur.scales(s, oracle.data_shape), oracle._var(xi), oracle.mean_value
        u = dct2(xi) - d * dct2(torch.full_like(xi, m))
        return (m + idct2(d * v / (d**2 * v + expand(s, xi) ** 2) * u)).reshape(x.shape)

    return denoise


@torch.no_grad()
def blurring_sample(denoiser, noise: Tensor, sigmas, blur: Blur = Blur(), *, stochastic: bool = False,
                    generator=None, callback=None) -> Tensor:
    """Sample a blurring-diffusion denoiser from ``noise`` (B, C, H, W) down the decreasing grid ``sigmas``
    (ending at 0); x starts at sigmas[0] * noise. One evaluation per step. ``generator``: a
    torch.Generator or per-sample seeds (the stochastic sampler's noise is per sample)."""
    from ..samplers._common import Counted, NoiseStream, call, check_grid, report

    grid = check_grid(sigmas, allow_increasing=False, name="blurring sampler").tolist()
    if grid[-1] != 0:
        raise ValueError(f"the blurring sampler needs a grid ending at 0, got last entry {grid[-1]}")
    den = Counted(denoiser)
    stream = NoiseStream.make(generator, noise) if stochastic else None
    x = noise * grid[0]
    for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
        d0 = call(den, x, s)
        if s_next == 0:
            x = d0
        else:
            sig = torch.tensor([s, s_next], dtype=x.dtype, device=x.device)
            d, d_next = blur.scales(sig, x.shape[1:])
            u, u0 = dct2(x), dct2(d0)
            if not stochastic:
                u_next = d_next * u0 + s_next * (u - d * u0) / s
            else:  # exact posterior of u_next given u and u0 under the forward process
                r = d / d_next
                var = s**2 - r**2 * s_next**2
                post = 1.0 / (1.0 / s_next**2 + r**2 / var)
                u_next = post * (d_next * u0 / s_next**2 + r * u / var) + post.sqrt() * stream.normal(i, u)
            x = idct2(u_next)
        report(callback, i, x, s, s_next, d0)
    return x
