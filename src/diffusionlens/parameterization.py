"""What a network predicts, and the exact conversions to and from the canonical denoiser.

Conventions: ``x_hat = x0 + sigma n`` is the scale-free input, ``x_t = s x_hat`` the process's
state, ``D`` the canonical denoiser output (an estimate of x0). All functions take data of shape
(batch, ...) and per-sample coefficients of shape (batch,) (a :class:`~diffusionlens.processes.Coefs`
bundle from ``process.coefs(t)``). This module is the only place where a prediction target is
turned into ``D`` or back.

=============  ===================================  ====================================================
kind           network output                        D from output
=============  ===================================  ====================================================
``X0``         x0                                    out
``EPS``        n                                     x_hat - sigma * out
``V``          (n - sigma x0) / sqrt(1 + sigma^2)    (x_hat - sigma sqrt(1 + sigma^2) out) / (1 + sigma^2)
``SCORE``      grad_{x_t} log p_t(x_t)               x_hat + s sigma^2 out
``VELOCITY``   d x_t / dt = s' x_hat + s sigma' n     (a x_hat - out) / b,  b = s sigma'/sigma,  a = s' + b
``EDM``        F with D = c_skip x_hat + c_out F     c_skip x_hat + c_out out
=============  ===================================  ====================================================

``V`` is Salimans & Ho's v = alpha n - sigma_t x0, written in sigma alone (for VP, alpha = s =
1/sqrt(1+sigma^2) and sigma_t = s sigma); for other processes it is the same function of sigma,
the "angular" parameterization. ``VELOCITY`` is the probability-flow velocity in x_t coordinates,
dx_t/dt = s' x_hat + s sigma' n: for :class:`~diffusionlens.processes.Flow` it is n - x0, the
rectified-flow / flow-matching target (in this package's time direction; the flow-matching
papers' velocity is its negative).

Singular ends: D -> eps divides by sigma and D -> score by sigma^2, so these targets are
undefined at sigma = 0; the reverse directions are regular there. ``EDM`` preconditioning also
scales the network's input (``c_in``) and noise conditioning (``c_noise``); see :func:`edm_precond`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._util import Choice, expand
from .processes import Coefs

__all__ = [
    "Param",
    "to_denoiser",
    "from_denoiser",
    "target",
    "edm_precond",
    "x0_weight",
    "implied_weighting",
    "eps_from_denoiser",
    "score_from_denoiser",
    "lognormal_logsnr_density",
]


class Param(Choice, what="parameterization"):
    """Prediction targets a network may be trained on."""

    EPS = "eps"
    X0 = "x0"
    V = "v"
    SCORE = "score"
    VELOCITY = "velocity"
    EDM = "edm"


def edm_precond(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Karras et al. 2022, Table 1: (c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (batch,)."""
    sd2 = sigma_data**2
    r = sigma**2 + sd2
    return sd2 / r, sigma * sigma_data / torch.sqrt(r), torch.rsqrt(r), torch.log(sigma) / 4


def _velocity_parts(c: Coefs) -> tuple[Tensor, Tensor]:
    # vel = s' x_hat + s sigma' n and n = (x_hat - D) / sigma, so vel = a x_hat - b D with:
    b = c.scale * c.dsigma / c.sigma
    return c.dscale + b, b


def to_denoiser(kind: Param | str, out: Tensor, x_hat: Tensor, c: Coefs, sigma_data: float = 0.5) -> Tensor:
    """Convert a network output of ``kind`` at ``x_hat`` (batch, ...) into D(x_hat, sigma)."""
    kind = Param.parse(kind)
    sig = expand(c.sigma, x_hat)
    if kind is Param.X0:
        return out
    if kind is Param.EPS:
        return x_hat - sig * out
    if kind is Param.V:
        # v sqrt(1+sigma^2) = (x_hat - D)/sigma - sigma D  =>  D = (x_hat - sigma sqrt(1+sigma^2) v)/(1+sigma^2)
        return (x_hat - sig * torch.sqrt(1 + sig**2) * out) / (1 + sig**2)
    if kind is Param.SCORE:
        # score_t = (D - x_hat) / (s sigma^2)   (the x_t-space score is 1/s times the x_hat-space one)
        return x_hat + expand(c.scale, x_hat) * sig**2 * out
    if kind is Param.VELOCITY:
        a, b = _velocity_parts(c)
        return (expand(a, x_hat) * x_hat - out) / expand(b, x_hat)
    c_skip, c_out, _, _ = edm_precond(c.sigma, sigma_data)
    return expand(c_skip, x_hat) * x_hat + expand(c_out, x_hat) * out


def from_denoiser(kind: Param | str, D: Tensor, x_hat: Tensor, c: Coefs, sigma_data: float = 0.5) -> Tensor:
    """Inverse of :func:`to_denoiser`: what a network of ``kind`` outputs when its denoiser is ``D``."""
    kind = Param.parse(kind)
    sig = expand(c.sigma, x_hat)
    if kind is Param.X0:
        return D
    if kind is Param.EPS:
        return (x_hat - D) / sig
    if kind is Param.V:
        return ((x_hat - D) / sig - sig * D) / torch.sqrt(1 + sig**2)
    if kind is Param.SCORE:
        return (D - x_hat) / (expand(c.scale, x_hat) * sig**2)
    if kind is Param.VELOCITY:
        a, b = _velocity_parts(c)
        return expand(a, x_hat) * x_hat - expand(b, x_hat) * D
    c_skip, c_out, _, _ = edm_precond(c.sigma, sigma_data)
    return (D - expand(c_skip, x_hat) * x_hat) / expand(c_out, x_hat)


def target(kind: Param | str, x0: Tensor, noise: Tensor, c: Coefs, sigma_data: float = 0.5) -> Tensor:
    """Regression target for a network of ``kind``: its output when D is the true x0."""
    kind = Param.parse(kind)
    if kind is Param.EPS:
        return noise  # exact, and avoids (x_hat - x0) / sigma round-off at small sigma
    return from_denoiser(kind, x0, x0 + expand(c.sigma, x0) * noise, c, sigma_data)


def eps_from_denoiser(D: Tensor, x_hat: Tensor, sigma: Tensor | float) -> Tensor:
    """eps = (x_hat - D) / sigma for sigma (batch,) or one float (the samplers' host-side levels)."""
    return (x_hat - D) / (sigma if isinstance(sigma, float) else expand(sigma, x_hat))


def score_from_denoiser(D: Tensor, x_hat: Tensor, sigma: Tensor | float) -> Tensor:
    """Score of the scale-free marginal p(x_hat): (D - x_hat) / sigma^2 (Tweedie); sigma (batch,) or a float."""
    return (D - x_hat) / (sigma**2 if isinstance(sigma, float) else expand(sigma, x_hat) ** 2)


def x0_weight(kind: Param | str, c: Coefs, sigma_data: float = 0.5) -> Tensor:
    """Weight w such that ||out - target||^2 = w ||D - x0||^2 for a network of ``kind``.

    Every conversion is affine in D, so this is the squared slope d out / d D:
    eps 1/sigma^2 (= SNR), x0 1, v 1 + 1/sigma^2, score 1/(s sigma^2)^2,
    velocity (s sigma' / sigma)^2 (Flow: 1/t^2), EDM 1/c_out^2.
    """
    kind = Param.parse(kind)
    sig = c.sigma
    if kind is Param.X0:
        return torch.ones_like(sig)
    if kind is Param.EPS:
        return sig**-2
    if kind is Param.V:
        return 1 + sig**-2
    if kind is Param.SCORE:
        return (c.scale * sig**2) ** -2
    if kind is Param.VELOCITY:
        return _velocity_parts(c)[1] ** 2
    return edm_precond(sig, sigma_data)[1] ** -2


def implied_weighting(
    kind: Param | str, c: Coefs, density: Tensor, sigma_data: float = 0.5, normalize: bool = False
) -> Tensor:
    """Loss weighting over log-SNR implied by MSE on ``kind`` with noise levels drawn at ``density``.

    In Kingma & Gao (2023)'s form every denoising loss is ``integral w(lambda) ||eps_hat - eps||^2
    d lambda`` (up to a constant); since ||eps_hat - eps||^2 = e^lambda ||D - x0||^2,

        w(lambda) = p(lambda) * x0_weight(lambda) * e^{-lambda}

    where ``density`` is p(lambda) at the log-SNRs of ``c`` (for uniform t it is
    1 / |d lambda / dt|, i.e. ``1 / abs(process.dlogsnr(t))``). The ELBO corresponds to
    w = 1/2 up to the eps-to-ELBO constant; eps-MSE with uniform t on VP-cosine gives
    w = p(lambda). With ``normalize`` the result is divided by its maximum over the given points.
    """
    w = density * x0_weight(kind, c, sigma_data) * c.sigma**2
    return w / w.max() if normalize else w


def lognormal_logsnr_density(logsnr: Tensor, p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """Density over lambda of EDM's training noise (ln sigma ~ N(p_mean, p_std^2)); lambda = -2 ln sigma."""
    mu, sd = -2 * p_mean, 2 * p_std
    return torch.exp(-0.5 * ((logsnr - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
