"""The exact velocity of an interpolant between two Gaussian mixtures under the independent coupling.

Target x0 ~ sum_i w_i N(m_i, A_i), source x1 ~ sum_j u_j N(n_j, B_j), independent, z ~ N(0, I). Given
the pair of components (i, j), (x_t, dx_t/dt) is jointly Gaussian:

    x_t      ~ N(mu_ij, S_ij),   mu_ij = a m_i + b n_j,   S_ij = a^2 A_i + b^2 B_j + g^2 I,
    Cov(dx_t/dt, x_t) = C_ij = a a' A_i + b b' B_j + g g' I,   E[dx_t/dt] = a' m_i + b' n_j,

so E[dx_t/dt | x_t = x, ij] = a' m_i + b' n_j + C_ij S_ij^{-1} (x - mu_ij), and the exact velocity is
its average under the posterior over pairs, r_ij(x) ∝ w_i u_j N(x; mu_ij, S_ij). The marginal of x_t
is itself the mixture over pairs (:meth:`ExactVelocity.marginal`).

Numerics: float64 Cholesky factors of S_ij, one set per distinct time in the batch (the transport
solvers evaluate a whole batch at one t), responsibilities by log-sum-exp.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..oracle import GaussianMixture
from .core import Interpolant

__all__ = ["ExactVelocity", "standard_normal"]


def standard_normal(d: int, data_shape: tuple[int, ...] | None = None) -> GaussianMixture:
    """N(0, I) in d dimensions as a one-component mixture (the Gaussian source)."""
    return GaussianMixture(torch.zeros(1, d, dtype=torch.float64), 1.0, data_shape=data_shape)


class ExactVelocity:
    """``v(x, t)``: the exact velocity E[dx_t/dt | x_t = x] for mixture ``target`` and ``source``."""

    def __init__(self, target: GaussianMixture, source: GaussianMixture, interpolant: Interpolant | None = None):
        if target.dim != source.dim:
            raise ValueError(f"target and source differ in dimension: {target.dim} vs {source.dim}")
        self.target, self.source = target, source
        self.interpolant = interpolant or Interpolant()
        K, J, d = target.n_components, source.n_components, target.dim
        self._m = target.means[:, None].expand(K, J, d).reshape(K * J, d)
        self._n = source.means[None].expand(K, J, d).reshape(K * J, d)
        self._A = target.covs[:, None].expand(K, J, d, d).reshape(K * J, d, d)
        self._B = source.covs[None].expand(K, J, d, d).reshape(K * J, d, d)
        self._logw = (target.weights[:, None].log() + source.weights[None].log()).reshape(K * J)

    def _at(self, t: Tensor):
        """Per time in ``t`` (T,): mu (T, P, d), S and C (T, P, d, d), the mean velocity (T, P, d)."""
        a, b, g, da, db, dg = (v[:, None, None] for v in self.interpolant.coefs(t.double()))
        eye = torch.eye(self.target.dim, dtype=torch.float64)
        mu = a * self._m + b * self._n
        a, b, g, da, db, dg = (v[..., None] for v in (a, b, g, da, db, dg))
        S = a * a * self._A + b * b * self._B + g * g * eye
        C = a * da * self._A + b * db * self._B + g * dg * eye
        return mu, S, C, da[..., 0] * self._m + db[..., 0] * self._n

    def marginal(self, t: float) -> GaussianMixture:
        """The law of x_t, a mixture over component pairs (at t = 0 the target, at t = 1 the source)."""
        mu, S, _, _ = (v[0] for v in self._at(torch.tensor([float(t)], dtype=torch.float64)))
        return GaussianMixture(mu, 0.5 * (S + S.transpose(-1, -2)), self._logw.exp() / self._logw.exp().sum(),
                               data_shape=self.target.data_shape)

    def __call__(self, x: Tensor, t) -> Tensor:
        xf = x.reshape(x.shape[0], -1).double()
        if xf.shape[1] != self.target.dim:
            raise ValueError(f"x must have {self.target.dim} entries per sample, got shape {tuple(x.shape)}")
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        times, which = torch.unique(tt, return_inverse=True)
        out = torch.empty_like(xf)
        # memory: one (P, d, d) factor per distinct time; chunk so a chunk holds ~2^22 such entries
        per = max(1, (1 << 22) // (self._A.numel()))
        for lo in range(0, len(times), per):
            sel = (which >= lo) & (which < lo + per)
            out[sel] = self._velocity(xf[sel], times[lo:lo + per], which[sel] - lo)
        return out.reshape(x.shape).to(x.dtype)

    def _velocity(self, x: Tensor, times: Tensor, which: Tensor) -> Tensor:
        mu, S, C, vm = self._at(times)
        L = torch.linalg.cholesky(S)[which]  # (B, P, d, d)
        r = x[:, None, :] - mu[which]  # (B, P, d)
        y = torch.linalg.solve_triangular(L, r[..., None], upper=False)[..., 0]  # L^{-1} r
        sol = torch.linalg.solve_triangular(L.transpose(-1, -2), y[..., None], upper=True)[..., 0]  # S^{-1} r
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        logn = -0.5 * ((y * y).sum(-1) + logdet + self.target.dim * math.log(2 * math.pi))
        resp = torch.softmax(logn + self._logw, dim=1)  # (B, P)
        cond = vm[which] + torch.einsum("bpij,bpj->bpi", C[which], sol)
        return (resp[..., None] * cond).sum(1)
