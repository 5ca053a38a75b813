"""The Gaussian view of a denoiser at large noise: its mean and covariance, measured on the model,
give the exact flow and the exact denoiser of a Gaussian with those moments.

At large sigma, the posterior over x0 given x_hat = x0 + sigma n barely depends on where x_hat is,
so the denoiser is affine: D(x_hat, sigma) = m + C (C + sigma^2 I)^-1 (x_hat - m) + O(sigma^-3),
with m = E[x0] and C = Cov[x0]. For data that *are* Gaussian this holds at every sigma, and the
probability-flow ODE has the closed-form solution

    x(s) = m + V diag( sqrt((lam + s^2) / (lam + sigma^2)) ) V^T (x(sigma) - m),   C = V diag(lam) V^T.

Wang & Vastola (2023, "The hidden linear structure in score-based models") observed that trained
models follow this Gaussian flow closely at large noise and skipped the first steps of sampling
with it, the Gaussian moments taken from the training data. Here the moments are measured on the
denoiser itself (nothing but the model is needed): Tweedie's second-order identity gives the
posterior covariance as Cov[x0 | x_hat] = sigma^2 dD/dx_hat, so at one large sigma the Jacobian
J = dD/dx_hat of the affine form above is C (C + sigma^2 I)^-1, i.e.

    C = sigma^2 J (I - J)^-1,       m = (I - J)^-1 (D(x_hat) - J x_hat)     (exact for Gaussian data),

with J averaged (and symmetrised) over a few pilot points x_hat = sigma n. For non-Gaussian data
the error of C is of the order of the posterior's dependence on x_hat, ||C||^(1/2) ||x_hat|| / sigma^2
~ ||C||^(1/2) / sigma relative (a few per cent at sigma = 80 for unit-scale data).

:class:`GaussianModel` holds (m, C) and gives the Gaussian's denoiser and its exact flow map. The
samplers use it in two places: ``sample(..., teleport=...)`` starts the grid at a level s1 below
sigma_max, reached from the noise at sigma_max by the Gaussian flow (no evaluations), and
:class:`~diffusionlens.samplers.AnalyticStart` with a model replaces the first evaluation, at s1,
by the Gaussian denoiser instead of the bare mean. Where to start is a property of the data (how
far down the Gaussian flow is still right), so :func:`~diffusionlens.samplers.stop_grid` measures
it on the pilot, jointly with the last level. The cost is d vector-Jacobian products at each of the
``points`` pilot points, once per model (batched; not sampling evaluations), and O(d^2) memory:
this is for data of up to a few thousand dimensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._util import as_tensor, device_of

__all__ = ["GaussianModel", "gaussian_model"]


@dataclass(frozen=True)
class GaussianModel:
    """A Gaussian N(m, C) in the data's shape, C = V diag(lam) V^T.

    Attributes:
        mean: (*shape) float64, m.
        eigvals: (d,) float64, lam >= 0 (d = prod(shape)).
        eigvecs: (d, d) float64, V (columns orthonormal).
        sigma: the noise level it was measured at (None if built from given moments).
    """

    mean: Tensor
    eigvals: Tensor
    eigvecs: Tensor
    sigma: float | None = None

    @classmethod
    def from_moments(cls, mean: Tensor, cov: Tensor) -> GaussianModel:
        """From a mean of shape (*shape) and a symmetric positive semi-definite (d, d) covariance."""
        mean = torch.as_tensor(mean, dtype=torch.float64)
        d = mean.numel()
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.shape != (d, d):
            raise ValueError(f"cov must have shape ({d}, {d}) for a mean of {d} elements, got {tuple(cov.shape)}")
        lam, vec = torch.linalg.eigh(0.5 * (cov + cov.T))
        return cls(mean, lam.clamp_min(0.0), vec)

    @property
    def cov(self) -> Tensor:
        """(d, d) covariance C."""
        return (self.eigvecs * self.eigvals) @ self.eigvecs.T

    def _apply(self, x: Tensor, gain: Tensor) -> Tensor:
        """m + V diag(gain) V^T (x - m), computed in float64, returned in x's dtype."""
        if tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(f"x must have shape (batch, {', '.join(map(str, self.mean.shape))}), got {tuple(x.shape)}")
        B = x.shape[0]
        m = self.mean.to(x.device).reshape(1, -1)
        V = self.eigvecs.to(x.device)
        z = (x.reshape(B, -1).double() - m) @ V
        out = m + (z * gain.to(x.device)) @ V.T
        return out.reshape(x.shape).to(x.dtype)

    def denoise(self, x: Tensor, sigma) -> Tensor:
        """The Gaussian's exact denoiser E[x0 | x_hat] = m + C (C + sigma^2 I)^-1 (x_hat - m); sigma a scalar."""
        s2 = float(as_tensor(sigma).reshape(-1)[0]) ** 2
        return self._apply(x, self.eigvals / (self.eigvals + s2))

    def flow(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """The Gaussian's exact probability-flow map from noise level ``sigma_from`` to ``sigma_to``."""
        a, b = float(sigma_from), float(sigma_to)
        if not (a >= 0 and b >= 0 and math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"noise levels must be finite and >= 0, got {sigma_from}, {sigma_to}")
        if a == b:
            return x.clone()
        lam = self.eigvals
        return self._apply(x, torch.sqrt((lam + b * b) / (lam + a * a)))


def gaussian_model(
    denoiser,
    shape,
    sigma: float = 80.0,
    *,
    points: int = 16,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    chunk: int = 1024,
) -> GaussianModel:
    """Measure the data's mean and covariance on ``denoiser`` at noise level ``sigma`` (module docstring).

    The Jacobian of D at ``points`` pilot points x_hat = sigma n (n standard normal from ``generator``,
    default seed 0) is taken with d vector-Jacobian products per point, in batches of ``chunk`` rows;
    it is averaged and symmetrised, its eigenvalues j clipped to [0, 1), and C = sigma^2 J (I - J)^-1,
    m = (I - J)^-1 mean(D(x_hat) - J x_hat). The denoiser must be differentiable in its input.
    """
    shape = tuple(int(s) for s in shape)
    if not (isinstance(points, int) and points >= 1):
        raise ValueError(f"points must be an integer >= 1, got {points!r}")
    if not (0 < sigma < math.inf):
        raise ValueError(f"sigma must be finite and > 0, got {sigma}")
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    d = math.prod(shape)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    device = device if device is not None else device_of(denoiser)
    dtype = torch.promote_types(dtype, torch.float32)
    x = (torch.randn((points, *shape), generator=g, dtype=torch.float64) * sigma).to(device=device, dtype=dtype)
    eye = torch.eye(d, dtype=dtype, device=device)
    J = torch.zeros(d, d, dtype=torch.float64)
    resid = torch.zeros(d, dtype=torch.float64)
    per = max(1, chunk // points)  # basis rows per batch, for all points at once
    for start in range(0, d, per):
        rows = eye[start:start + per]  # (r, d)
        r = rows.shape[0]
        xs = x.repeat_interleave(r, 0).requires_grad_(True)  # (points * r, *shape)
        with torch.enable_grad():
            out = denoiser(xs, torch.full((xs.shape[0],), sigma, dtype=dtype, device=device))
            (grad,) = torch.autograd.grad(out, xs, rows.repeat(points, 1).reshape(out.shape))
        # the gradient of <e_i, D(x)> is J^T e_i, row i of J, for each point
        J[start:start + r] += grad.reshape(points, r, d).double().sum(0).cpu()
        if start == 0:
            resid += (out.detach().reshape(points, r, d)[:, 0].double().cpu()).sum(0)  # D at each point, once
    J /= points
    J = 0.5 * (J + J.T)
    j, U = torch.linalg.eigh(J)
    j = j.clamp(0.0, 1.0 - 1e-12)
    Js = (U * j) @ U.T
    mean_d = resid / points
    mean_x = x.reshape(points, d).double().mean(0).cpu()
    m = U @ ((U.T @ (mean_d - Js @ mean_x)) / (1.0 - j))
    lam = sigma * sigma * j / (1.0 - j)
    return GaussianModel(m.reshape(shape), lam, U, float(sigma))
