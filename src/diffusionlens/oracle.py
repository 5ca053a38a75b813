"""The analytic oracle: a Gaussian mixture whose noisy marginals are known in closed form.

For data x0 ~ sum_k w_k N(mu_k, C_k) and x = x0 + sigma n (the scale-free noisy input), the
marginal is sum_k w_k N(mu_k, C_k + sigma^2 I), and with responsibilities r_k(x):

    score(x, sigma)   = -sum_k r_k (C_k + sigma^2 I)^{-1} (x - mu_k)
    denoise(x, sigma) = sum_k r_k [mu_k + C_k (C_k + sigma^2 I)^{-1} (x - mu_k)] = x + sigma^2 score

Numerics: each covariance is eigendecomposed once (C_k = U_k diag(l_k) U_k^T), so the
per-sample solve with (C_k + sigma^2 I) is a rotation and an elementwise division by l_k + sigma^2 —
an exact, well-conditioned solve for every sigma from 0 to 1e4 with no matrix inverse and no
per-sigma Cholesky; log-determinants are sums of log(l_k + sigma^2) and responsibilities use
log-sum-exp. ``denoise`` is formed as mu + C z rather than x + sigma^2 score, which avoids
cancellation at large sigma. Diagonal and scalar covariances skip the rotation.

Shapes: ``x`` (batch, d) or (batch, *shape) with prod(shape) = d; ``sigma`` a float or (batch,).
Computation happens in the input's dtype (float32 or float64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._util import as_sigma, as_tensor

__all__ = ["GaussianMixture", "ring", "random_mixture", "standard_cases"]


class GaussianMixture:
    """Mixture of K Gaussians in d dimensions.

    Args:
        means: (K, d).
        covs: full (K, d, d), diagonal (K, d), per-component scalar (K,), or one scalar shared by all.
        weights: (K,) positive, summing to 1 (default uniform).
        data_shape: optional shape the d coordinates are viewed as (e.g. (1, 8, 8)); inputs of shape
            (batch, *data_shape) are accepted and outputs keep the input's shape.
    """

    def __init__(self, means, covs, weights=None, *, data_shape: tuple[int, ...] | None = None):
        means = as_tensor(means, dtype=torch.float64)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"means must have shape (K, d) with K, d >= 1, got {tuple(means.shape)}")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means contain a non-finite value")
        K, d = means.shape
        covs = as_tensor(covs, dtype=torch.float64)
        if covs.ndim == 0:
            covs = covs.expand(K).clone()
        if covs.shape == (K,):
            kind = "scalar"
            evals = covs[:, None].expand(K, d).clone()
            evecs = None
        elif covs.shape == (K, d):
            kind = "diag"
            evals, evecs = covs.clone(), None
        elif covs.shape == (K, d, d):
            kind = "full"
            if not bool(torch.allclose(covs, covs.transpose(-1, -2), rtol=1e-10, atol=1e-12)):
                raise ValueError("full covariances must be symmetric")
            evals, evecs = torch.linalg.eigh(covs)
        else:
            raise ValueError(
                f"covs must have shape (K, d, d), (K, d), (K,) or () with K={K}, d={d}; got {tuple(covs.shape)}"
            )
        if not bool(torch.isfinite(evals).all()) or bool((evals <= 0).any()):
            k = int(torch.nonzero(~(evals > 0))[0, 0]) if bool((evals <= 0).any()) else 0
            raise ValueError(
                f"covariance of component {k} is not positive definite "
                f"(smallest eigenvalue {evals[k].min().item():.3g})"
            )
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        weights = as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape ({K},), got {tuple(weights.shape)}")
        if bool((weights <= 0).any()) or not bool(torch.isfinite(weights).all()):
            raise ValueError(f"weights must be positive and finite, got {weights.tolist()}")
        if abs(float(weights.sum()) - 1) > 1e-6:
            raise ValueError(f"weights must sum to 1, got sum {float(weights.sum())}")
        if data_shape is not None and math.prod(data_shape) != d:
            raise ValueError(f"data_shape {data_shape} has {math.prod(data_shape)} entries, not d={d}")
        self.kind = kind
        self.dim = d
        self.n_components = K
        self.data_shape = tuple(data_shape) if data_shape is not None else (d,)
        self._means, self._evals, self._evecs, self._weights = means, evals, evecs, weights
        self._cache: dict = {}

    # ------------------------------------------------------------------ properties
    @property
    def means(self) -> Tensor:
        return self._means

    @property
    def weights(self) -> Tensor:
        return self._weights

    @property
    def covs(self) -> Tensor:
        """Full covariances (K, d, d), float64."""
        if self._evecs is None:
            return torch.diag_embed(self._evals)
        return self._evecs @ torch.diag_embed(self._evals) @ self._evecs.transpose(-1, -2)

    def mean(self) -> Tensor:
        """Mixture mean E[x0], (d,)."""
        return self._weights @ self._means

    def cov(self) -> Tensor:
        """Mixture covariance Cov[x0], (d, d)."""
        mu = self.mean()
        dm = self._means - mu
        return torch.einsum("k,kij->ij", self._weights, self.covs) + torch.einsum("k,ki,kj->ij", self._weights, dm, dm)

    def _params(self, like: Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            def cast(v):
                return None if v is None else v.to(device=like.device, dtype=like.dtype)

            self._cache[key] = (cast(self._means), cast(self._evals), cast(self._evecs), cast(self._weights))
        return self._cache[key]

    # ------------------------------------------------------------------ core
    def _flat(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.ndim < 1 or x.shape[1:] not in (torch.Size(self.data_shape), torch.Size([self.dim])):
            raise ValueError(
                f"x must have shape (batch, {self.dim}) or (batch, *{self.data_shape}), got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.dim)

    def _stats(self, x: Tensor, var: Tensor):
        """For flat x (B, d) and total extra variance var (B,): rotated residual y (B,K,d),
        l + var (B,K,d) and log N(x; mu_k, C_k + var I) (B,K)."""
        mu, ev, U, _ = self._params(x)
        r = x[:, None, :] - mu[None]  # (B, K, d)
        y = r if U is None else torch.einsum("kij,bki->bkj", U, r)
        lam = ev[None] + var[:, None, None]  # (B, K, d)
        logn = -0.5 * ((y**2 / lam).sum(-1) + torch.log(lam).sum(-1) + self.dim * math.log(2 * math.pi))
        return y, lam, logn

    def _resp(self, logn: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        logw = torch.log(self._params(x)[3])
        joint = logn + logw
        lse = torch.logsumexp(joint, dim=1)
        return torch.exp(joint - lse[:, None]), lse

    def _rotate_back(self, z: Tensor, x: Tensor) -> Tensor:
        U = self._params(x)[2]
        return z if U is None else torch.einsum("kij,bkj->bki", U, z)

    def log_prob(self, x: Tensor, sigma=0.0) -> Tensor:
        """Exact log-density (nats) of x under the marginal of x0 + sigma n. Returns (batch,)."""
        xf = self._flat(x)
        s = as_sigma(sigma, xf, allow_zero=True)
        return self._resp(self._stats(xf, s**2)[2], xf)[1]

    def score(self, x: Tensor, sigma) -> Tensor:
        """Exact score grad_x log p_sigma(x), same shape as x."""
        xf = self._flat(x)
        s = as_sigma(sigma, xf)
        y, lam, logn = self._stats(xf, s**2)
        r, _ = self._resp(logn, xf)
        z = self._rotate_back(r[..., None] * y / lam, xf).sum(1)
        return (-z).reshape(x.shape)

    def denoise(self, x: Tensor, sigma) -> Tensor:
        """Exact posterior mean E[x0 | x0 + sigma n = x], same shape as x."""
        xf = self._flat(x)
        s = as_sigma(sigma, xf)
        y, lam, logn = self._stats(xf, s**2)
        r, _ = self._resp(logn, xf)
        mu, ev, _, _ = self._params(xf)
        shrunk = self._rotate_back(ev[None] * y / lam, xf)  # C_k (C_k + sigma^2 I)^{-1} (x - mu_k)
        return (r[..., None] * (mu[None] + shrunk)).sum(1).reshape(x.shape)

    __call__ = denoise

    def posterior_cov_trace(self, x: Tensor, sigma) -> Tensor:
        """Trace of Cov[x0 | x] (batch,): the irreducible MSE of any denoiser at this x and sigma."""
        xf = self._flat(x)
        s = as_sigma(sigma, xf)
        y, lam, logn = self._stats(xf, s**2)
        r, _ = self._resp(logn, xf)
        mu, ev, _, _ = self._params(xf)
        means_k = mu[None] + self._rotate_back(ev[None] * y / lam, xf)  # (B, K, d)
        within = (ev[None] * s[:, None, None] ** 2 / lam).sum(-1)  # tr(C (C + s^2)^-1 s^2)
        D = (r[..., None] * means_k).sum(1)
        between = ((means_k - D[:, None]) ** 2).sum(-1)
        return (r * (within + between)).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64, device=None) -> Tensor:
        """n exact samples of x0, shape (n, *data_shape). Uses only ``generator`` for randomness."""
        if not (isinstance(n, int) and n >= 0):
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        gdev = generator.device if generator is not None else torch.device("cpu")
        k = torch.multinomial(self._weights.to(gdev), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=gdev)
        mu, ev, U = self._means.to(gdev), self._evals.to(gdev), self._evecs
        w = z * ev[k].sqrt()
        if U is not None:
            w = torch.einsum("bij,bj->bi", U.to(gdev)[k], w)
        x = mu[k] + w
        return x.reshape((n,) + self.data_shape).to(dtype=dtype, device=device or gdev)

    def noisy(self, sigma: float) -> GaussianMixture:
        """The mixture of x0 + sigma n (covariances C_k + sigma^2 I), itself a GaussianMixture."""
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
        return GaussianMixture(self._means, self.covs + sigma**2 * torch.eye(self.dim, dtype=torch.float64),
                               self._weights, data_shape=self.data_shape)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, d={self.dim}, covs={self.kind})"


# ---------------------------------------------------------------------- standard cases


def ring(n_modes: int = 8, radius: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """2-D ring of ``n_modes`` isotropic Gaussians of std ``std`` on a circle of ``radius``."""
    if n_modes < 1 or radius <= 0 or std <= 0:
        raise ValueError(f"need n_modes >= 1, radius > 0, std > 0; got {n_modes}, {radius}, {std}")
    ang = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return GaussianMixture(means, torch.full((n_modes,), std**2, dtype=torch.float64))


def random_mixture(
    d: int, n_components: int = 10, *, seed: int = 0, spread: float = 1.0, std_range: tuple[float, float] = (0.05, 0.5)
) -> GaussianMixture:
    """A random mixture with anisotropic, randomly rotated full covariances.

    Means ~ N(0, spread^2 I); each covariance has eigenvalues whose square roots are log-uniform in
    ``std_range`` and a Haar-random rotation; weights ~ Dirichlet(2). Deterministic given ``seed``.
    """
    if d < 1 or n_components < 1:
        raise ValueError(f"need d >= 1 and n_components >= 1, got {d}, {n_components}")
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(n_components, d, generator=g, dtype=torch.float64)
    lo, hi = math.log(std_range[0]), math.log(std_range[1])
    stds = torch.exp(lo + (hi - lo) * torch.rand(n_components, d, generator=g, dtype=torch.float64))
    q, r = torch.linalg.qr(torch.randn(n_components, d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    covs = q @ torch.diag_embed(stds**2) @ q.transpose(-1, -2)
    covs = 0.5 * (covs + covs.transpose(-1, -2))
    w = -torch.log(torch.rand(n_components, generator=g, dtype=torch.float64)) - torch.log(
        torch.rand(n_components, generator=g, dtype=torch.float64)
    )  # Gamma(2, 1) draws -> Dirichlet(2) weights
    return GaussianMixture(means, covs, w / w.sum())


def standard_cases() -> dict[str, GaussianMixture]:
    """The test cases every claim is checked on: 2-D ring of 8, random d=16 and d=64 mixtures."""
    return {"ring2d": ring(), "mix16": random_mixture(16, 10, seed=16), "mix64": random_mixture(64, 10, seed=64)}
