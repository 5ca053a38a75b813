"""DDIM and DDPM ancestral sampling: one step with eta.

Conventions: scale-free coordinates ``x = x0 + sigma n`` (a VP model's x_t divided by
alpha = s(t)); ``D`` the canonical denoiser; ``eps = (x - D) / sigma``. The DDPM posterior
q(x_next | x, x0) in these coordinates is N(r x + (1 - r) x0, sigma_next^2 (1 - r)) with
r = sigma_next^2 / sigma^2 (:func:`diffusionlens.processes.posterior_coefs`). Song et al. 2021
("DDIM", eq. 12) in these coordinates, with the x_t-scale factors cancelled, is::

    x_next = D + sqrt(sigma_next^2 - eta^2 v) eps + eta sqrt(v') z

where v = sigma_next^2 (1 - r) is the posterior variance and v' = v (``Variance.POSTERIOR``, DDPM's
"fixedsmall" beta-tilde) or v' = (sigma^2 - sigma_next^2)(1 + sigma_next^2)/(1 + sigma^2)
(``Variance.LARGE``: DDPM's "fixedlarge" beta_t = 1 - abar_t / abar_prev, expressed in a VP
process's scale-free coordinates). eta = 0 is deterministic DDIM (identical to Euler on the PF-ODE,
Karras et al. 2022 sec. 4), eta = 1 with ``POSTERIOR`` is DDPM ancestral sampling (Ho et al. 2020
Alg. 2). The step into sigma = 0 returns D (DDPM adds no noise at its last step). On a
:func:`~diffusionlens.processes.timestep_grid` the denoiser is evaluated exactly at the table entries.
"""

from __future__ import annotations

import math

from torch import Tensor

from .._util import Choice
from ._common import Callback, NoiseStream, call, grid_floats, lincomb, run
from .spec import sampler

__all__ = ["Variance", "ddim_update", "ddim", "ddpm"]


class Variance(Choice, what="variance"):
    """DDPM's two choices of reverse-step variance (Ho et al. 2020, sec. 3.2)."""

    POSTERIOR = "posterior"  # beta-tilde, the true posterior variance ("fixedsmall")
    LARGE = "large"  # beta_t ("fixedlarge")


def ddim_update(
    x: Tensor,
    denoised: Tensor,
    sigma: float,
    sigma_next: float,
    eta: float = 0.0,
    z: Tensor | None = None,
    variance: Variance = Variance.POSTERIOR,
) -> Tensor:
    """One DDIM/DDPM step from sigma to sigma_next given D(x, sigma) and standard normal ``z`` (if eta > 0)."""
    if sigma_next == 0:
        return denoised
    r = (sigma_next / sigma) ** 2
    v_post = sigma_next**2 * (1 - r)
    c_eps = math.sqrt(max(sigma_next**2 - eta**2 * v_post, 0.0))
    w = c_eps / sigma
    if eta > 0:
        if variance is Variance.POSTERIOR:
            v = v_post
        else:
            v = (sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2)
        return lincomb((w, x), (1.0 - w, denoised), (eta * math.sqrt(v), z))
    return lincomb((w, x), (1.0 - w, denoised))


@sampler(order=1)
def ddim(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    generator=None,
    callback: Callback | None = None,
    eta: float = 0.0,
    variance: Variance | str = Variance.POSTERIOR,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) with stochasticity ``eta`` in [0, 1] (eta = 1: DDPM ancestral).

    Args:
        denoiser: canonical D(x, sigma), sigma a (batch,) tensor.
        x: (batch, ...) state at sigmas[0].
        sigmas: (steps + 1,) grid; decreasing (ending at 0 to sample), or increasing when eta = 0.
        generator: torch.Generator or per-sample seeds (used when eta > 0).
        eta: 0 deterministic, 1 ancestral.
        variance: ``"posterior"`` (beta-tilde) or ``"large"`` (beta_t), the noise variance at eta = 1.
    Returns x at sigmas[-1]. NFE = steps.
    """
    if not (0 <= eta):
        raise ValueError(f"eta must be >= 0, got {eta}")
    variance = Variance.parse(variance)
    s = grid_floats(sigmas, allow_increasing=eta == 0, name="stochastic DDIM (eta > 0)")
    noise = NoiseStream.make(generator, x) if eta > 0 else None

    def step(i, x, sigma, sigma_next, state):
        denoised = call(denoiser, x, sigma)
        z = noise.normal(i, x) if (eta > 0 and sigma_next > 0) else None
        return ddim_update(x, denoised, sigma, sigma_next, eta, z, variance), None, denoised

    return run(step, x, s, callback=callback)


@sampler(order=1, deterministic=False)
def ddpm(
    denoiser,
    x: Tensor,
    sigmas,
    *,
    generator=None,
    callback: Callback | None = None,
    variance: Variance | str = Variance.POSTERIOR,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2): :func:`ddim` with eta = 1.

    ``variance="posterior"`` uses beta-tilde, ``"large"`` uses beta_t. NFE = steps.
    """
    return ddim(denoiser, x, sigmas, generator=generator, callback=callback, eta=1.0, variance=variance)
