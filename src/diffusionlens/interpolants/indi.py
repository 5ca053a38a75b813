"""InDI, inversion by direct iteration (Delbracio & Milanfar 2023): restoration in small steps from a
degraded image y to the clean one, on the linear interpolant of the ``paired`` coupling.

With x_t = (1 - t) x0 + t y (t = 0 clean, t = 1 degraded, the package's time direction), the
network F(x_t, t) ~ E[x0 | x_t] of the paper and the velocity b(x, t) = E[y - x0 | x_t] that
:class:`~.objective.VelocityMatching` learns are one function: F = x_t - t b. The InDI step

    x_{t-d} = (d / t) F(x_t, t) + (1 - d / t) x_t

is therefore Euler's step x_{t-d} = x_t - d b(x_t, t) on the velocity ODE, and one step from t = 1
returns F(y, 1) = E[x0 | y], the MMSE regressor. More steps follow the flow, whose end has the law of
the clean images (the marginal property of the interpolant): sharper, further from the MMSE in
squared error: the perception-distortion trade, one knob, n.

:class:`LinearGaussianDegradation` (y = H x0 + s n) and :class:`PairedOracle` (a Gaussian-mixture
target) give the exact E[x0 | x_t] and velocity in closed form, for tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._util import expand
from ..oracle import GaussianMixture
from .core import Velocity

__all__ = ["clean_estimate", "restore", "psnr", "LinearGaussianDegradation", "PairedOracle"]


def clean_estimate(velocity: Velocity, x: Tensor, t) -> Tensor:
    """InDI's F(x_t, t) = x_t - t b(x_t, t) ~ E[x0 | x_t] from a velocity of the linear interpolant."""
    tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
    return x - expand(tt, x) * velocity(x, tt)


def restore(velocity: Velocity, y: Tensor, steps: int, *, keep_path: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Restore degraded ``y`` (batch, ...) in ``steps`` uniform InDI steps from t = 1 to 0 (1 step: the
    MMSE regressor); with ``keep_path`` also the states (steps + 1, batch, ...), y first."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    x, path = y, [y]
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            d = t - t_next
            x = (d / t) * clean_estimate(velocity, x, t) + (1 - d / t) * x
            if keep_path:
                path.append(x)
    return (x, torch.stack(path)) if keep_path else x


def psnr(x: Tensor, ref: Tensor, *, data_range: float = 2.0) -> Tensor:
    """Per-image peak signal-to-noise ratio in dB (batch,), for images in a range of width ``data_range``
    (2 for the package's [-1, 1] images)."""
    if x.shape != ref.shape:
        raise ValueError(f"restorations and references differ in shape: {tuple(x.shape)} vs {tuple(ref.shape)}")
    mse = (x.double() - ref.double()).flatten(1).pow(2).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-20))


class LinearGaussianDegradation:
    """y = H x0 + ``noise`` n on flattened samples: a paired source (``H`` (d, d), e.g. a blur matrix)."""

    paired = True

    def __init__(self, H: Tensor, noise: float):
        if H.ndim != 2 or H.shape[0] != H.shape[1]:
            raise ValueError(f"H must be a square (d, d) matrix, got shape {tuple(H.shape)}")
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be finite and >= 0, got {noise}")
        self.H, self.noise = H.double(), float(noise)

    def __call__(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        xf = x0.reshape(x0.shape[0], -1)
        n = torch.randn(xf.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return (xf @ self.H.to(x0).T + self.noise * n).reshape(x0.shape)


class PairedOracle:
    """The exact InDI field of a Gaussian-mixture target under a linear Gaussian degradation.

    x_t = M_t x0 + t s n with M_t = (1 - t) I + t H; given component i, x_t ~ N(M_t m_i, S_i),
    S_i = M_t A_i M_t^T + t^2 s^2 I, and E[x0 | x_t, i] = m_i + A_i M_t^T S_i^{-1} (x_t - M_t m_i),
    averaged with the posterior responsibilities of the components.
    """

    def __init__(self, target: GaussianMixture, degradation: LinearGaussianDegradation):
        if degradation.H.shape[0] != target.dim:
            raise ValueError(f"H is {tuple(degradation.H.shape)} for a target of dimension {target.dim}")
        self.target, self.degradation = target, degradation

    def _clean_at(self, x: Tensor, t: float) -> Tensor:
        gm, H, s = self.target, self.degradation.H, self.degradation.noise
        eye = torch.eye(gm.dim, dtype=torch.float64)
        M = (1 - t) * eye + t * H
        S = M @ gm.covs @ M.T + (t * s) ** 2 * eye  # (K, d, d)
        L = torch.linalg.cholesky(S)
        r = x[:, None, :] - (gm.means @ M.T)[None]  # (B, K, d)
        y = torch.linalg.solve_triangular(L[None], r[..., None], upper=False)[..., 0]
        sol = torch.linalg.solve_triangular(L.transpose(-1, -2)[None], y[..., None], upper=True)[..., 0]
        logn = -0.5 * (y * y).sum(-1) - torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        resp = torch.softmax(logn + gm.weights.log(), dim=1)
        cond = gm.means[None] + torch.einsum("kij,jl,bkl->bki", gm.covs, M.T, sol)
        return (resp[..., None] * cond).sum(1)

    def clean(self, x: Tensor, t) -> Tensor:
        """E[x0 | x_t = x] for x (batch, ...) at t (a float or (batch,)) in [0, 1]."""
        xf = x.reshape(x.shape[0], -1).double()
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        out = torch.empty_like(xf)
        for u in torch.unique(tt).tolist():
            sel = tt == u
            out[sel] = xf[sel] if u == 0 else self._clean_at(xf[sel], u)
        return out.reshape(x.shape).to(x.dtype)

    def velocity(self, x: Tensor, t) -> Tensor:
        """b(x, t) = E[y - x0 | x_t = x] = (x - E[x0 | x_t = x]) / t (at t = 0: H x - x, the limit)."""
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        at0 = (x.reshape(x.shape[0], -1).double() @ self.degradation.H.T).reshape(x.shape).to(x.dtype) - x
        safe = torch.where(tt > 0, tt, torch.ones_like(tt)).to(x.dtype)
        v = (x - self.clean(x, tt)) / expand(safe, x)
        return torch.where(expand(tt > 0, x), v, at0)
