"""The spectral oracle: a stationary Gaussian with a power-law spectrum, exact in closed form.

Data x0 = m + idct2(sqrt(v) * z), z standard normal, with DCT-coefficient variances
v(f) = amplitude * f ** exponent at radial frequency f > 0 (the mean coefficient gets the variance of
the lowest nonzero frequency). Its covariance is diagonal in the DCT basis, so for x = x0 + sigma n
every quantity is a per-coefficient formula:

    denoise(x, sigma) = m + idct2(v / (v + sigma^2) * dct2(x - m))        (the Wiener filter)
    score(x, sigma)   = -idct2(dct2(x - m) / (v + sigma^2))
    log_prob(x, sigma) = -1/2 sum [u^2 / (v + sigma^2) + log(2 pi (v + sigma^2))],  u = dct2(x - m)

(the transform is orthonormal, so no Jacobian). The hinge, where v(f) = sigma^2, is
f* = (sigma^2 / amplitude) ** (1 / exponent). The exact probability-flow ODE scales each coefficient
by sqrt((v + sigma^2) / (v + sigma_max^2)), so the estimate at sigma is the final sample times
sqrt(v / (v + sigma^2)) per coefficient: the settled fraction in closed form, half settled at
sigma = sqrt(3 v(f)) — coarse (large v) before fine.

It has the call conventions of :class:`diffusionlens.oracle.GaussianMixture`: ``x`` is (batch, d) or
(batch, *data_shape), ``sigma`` a float or (batch,), computation in the input's dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._util import as_sigma
from .dct import MIN_SIZE, dct2, frequencies, idct2
from .spectra import Spectrum, radial_groups

__all__ = ["PowerLawGaussian"]


class PowerLawGaussian:
    """Stationary Gaussian on images of ``shape`` (C, H, W) or (H, W) with power-law DCT spectrum.

    Args:
        shape: image shape; sides >= 4.
        exponent: the power law's exponent (natural images: about -2); must be < 0.
        variance: mean per-pixel variance (the amplitude is set from it).
        mean: the constant mean pixel value m.
    """

    def __init__(self, shape, exponent: float = -2.0, variance: float = 0.25, mean: float = 0.0):
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < MIN_SIZE:
            raise ValueError(f"shape must be (C, H, W) or (H, W) with C >= 1 and sides >= {MIN_SIZE}, got {shape}")
        for name, v in (("exponent", exponent), ("variance", variance), ("mean", mean)):
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not (exponent < 0 and variance > 0):
            raise ValueError(f"need exponent < 0 and variance > 0, got exponent={exponent}, variance={variance}")
        f = frequencies(*shape[1:])
        rel = np.where(f > 0, f, f[f > 0].min()) ** exponent
        self.amplitude = float(variance / rel.mean())
        self.exponent, self.mean_value = float(exponent), float(mean)
        self.data_shape = shape
        self.dim = math.prod(shape)
        self._v = torch.from_numpy(self.amplitude * rel)  # (H, W) float64
        self._cache: dict = {}

    @property
    def variances(self) -> Tensor:
        """Per-coefficient variances (H, W), float64 (the same in every channel)."""
        return self._v

    def _var(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self._v.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _image(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.ndim < 1 or x.shape[1:] not in (torch.Size(self.data_shape), torch.Size([self.dim])):
            raise ValueError(f"x must have shape (batch, {self.dim}) or (batch, *{self.data_shape}), "
                             f"got {tuple(x.shape)}")
        return x.reshape((x.shape[0],) + self.data_shape)

    def _coefs(self, x: Tensor, sigma, allow_zero=False):
        xi = self._image(x)
        s = as_sigma(sigma, xi, allow_zero=allow_zero)
        return dct2(xi - self.mean_value), self._var(xi) + s[:, None, None, None] ** 2

    def denoise(self, x: Tensor, sigma) -> Tensor:
        """Exact posterior mean E[x0 | x0 + sigma n = x] (the Wiener filter), shaped like x."""
        u, lam = self._coefs(x, sigma)
        return (self.mean_value + idct2(self._var(u) * u / lam)).reshape(x.shape)

    __call__ = denoise

    def score(self, x: Tensor, sigma) -> Tensor:
        """Exact score of the noisy marginal, shaped like x."""
        u, lam = self._coefs(x, sigma)
        return (-idct2(u / lam)).reshape(x.shape)

    def log_prob(self, x: Tensor, sigma=0.0) -> Tensor:
        """Exact log-density (nats) of x under the marginal of x0 + sigma n, (batch,)."""
        u, lam = self._coefs(x, sigma, allow_zero=True)
        return -0.5 * (u**2 / lam + torch.log(2 * math.pi * lam)).flatten(1).sum(1)

    def posterior_cov_trace(self, x: Tensor, sigma) -> Tensor:
        """tr Cov[x0 | x] (batch,): the irreducible MSE of any denoiser (independent of x)."""
        u, lam = self._coefs(x, sigma)
        v = self._var(u)
        return (v * (lam - v) / lam).expand_as(u).flatten(1).sum(1)

    def mean(self) -> Tensor:
        """E[x0], (d,) float64."""
        return torch.full((self.dim,), self.mean_value, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64, device=None) -> Tensor:
        """n exact samples (n, *data_shape), drawn with ``generator`` only."""
        if not (isinstance(n, int) and n >= 0):
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        z = torch.randn((n,) + self.data_shape, generator=generator, dtype=torch.float64)
        x = self.mean_value + idct2(self._v.sqrt() * z)
        return x.to(dtype=dtype, device=device)

    # ------------------------------------------------------------------ closed forms of the frequency view
    def spectrum(self) -> Spectrum:
        """The exact radially averaged spectrum (what :func:`power_spectrum` of many samples tends to)."""
        freq, index = radial_groups(*self.data_shape[1:])
        f = freq[1:]
        counts = np.bincount(index.ravel())[1:] * self.data_shape[0]
        return Spectrum(f, self.amplitude * f**self.exponent, counts, 0, float(self._v[0, 0]))

    def hinge(self, sigma) -> np.ndarray:
        """The hinge frequency per sigma in closed form, clamped like :func:`hinge`: 0 when the noise
        dominates every frequency, the highest frequency when the signal dominates all of them."""
        f = self.spectrum().freq
        s = np.asarray(sigma, dtype=np.float64)
        if not bool(np.all(np.isfinite(s) & (s > 0))):
            raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
        star = (s**2 / self.amplitude) ** (1.0 / self.exponent)
        return np.where(star < f[0], 0.0, np.minimum(star, f[-1]))

    def settled(self, sigma) -> np.ndarray:
        """Settled fraction sqrt(v / (v + sigma^2)) per (sigma, frequency) under the exact flow, (len(sigma), m)."""
        v = self.spectrum().power
        s = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
        return np.sqrt(v[None] / (v[None] + s[:, None] ** 2))

    def half_settled_sigma(self) -> np.ndarray:
        """Per frequency, the sigma at which the exact flow has settled half of it: sqrt(3 v(f)), (m,)."""
        return np.sqrt(3 * self.spectrum().power)

    def __repr__(self) -> str:
        return f"PowerLawGaussian(shape={self.data_shape}, exponent={self.exponent:g}, amplitude={self.amplitude:.4g})"
