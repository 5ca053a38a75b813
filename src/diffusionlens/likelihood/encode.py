"""Encoding data into the latent noise of the probability-flow ODE, decoding back, and slerp.

Conventions (``docs/notation.md``): the PF-ODE ``d x_hat / d log sigma = x_hat - D(x_hat, sigma)``
is a deterministic, invertible map between x_hat at sigma_min (data, up to sigma_min noise) and the
latent x_hat at sigma_max (approximately N(mean, sigma_max^2 I)). :func:`encode` integrates it
forward (data -> latent), :func:`decode` backward. Both take and return scale-free x_hat; with
``process=`` the data side is read/written as x_t = s x_hat at the time of sigma_min and the latent is
returned as x_t at the time of sigma_max (for a VP process, approximately N(0, I)).

Integration: by default the adaptive Dormand–Prince solver of :mod:`diffusionlens.ode` in u = log
sigma with tolerances ``rtol``/``atol`` and per-sample step control; with an explicit ``sigmas`` grid
a fixed-step deterministic sampler of :mod:`diffusionlens.samplers` (default Heun) on that grid,
increasing for encoding and decreasing for decoding (the ODE's time reversal is the same sampler
run on the reversed grid, so a round trip is exact only up to the solver's error).

Shapes: ``x`` (batch, *data_shape) of any rank; per-sample values (batch,).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._util import expand
from ..ode import Method, solve
from ..processes import Process

__all__ = ["EncodeInfo", "encode", "decode", "round_trip", "slerp"]


@dataclass(frozen=True)
class EncodeInfo:
    """``nfe``: (batch,) denoiser evaluations per sample; ``sigmas``: the grid used, or None (adaptive)."""

    nfe: Tensor
    sigmas: Tensor | None


def _scale_at(process: Process | None, sigma: float) -> float:
    if process is None:
        return 1.0
    if not isinstance(process, Process):
        raise TypeError(f"process must be a diffusionlens Process, got {process!r}")
    return float(process.scale_of_sigma(torch.tensor(sigma, dtype=torch.float64)))


def _check(x, a: float, b: float):
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (batch, *data_shape), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains a non-finite value")
    if not (0 < a < b < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={a}, sigma_max={b}")


def _flow(denoiser, x_hat: Tensor, s_from: float, s_to: float, *, sigmas, sampler, rtol, atol, method, cond,
          max_steps):
    """Integrate the PF-ODE from noise level s_from to s_to (either direction); returns (x_hat, info)."""
    B, shape = x_hat.shape[0], tuple(x_hat.shape[1:])
    dtype = x_hat.dtype
    if sigmas is not None:
        from .. import samplers as _samplers  # the fixed-step samplers live one layer up in the design

        if isinstance(sampler, str):
            if sampler not in _samplers.DETERMINISTIC:
                raise ValueError(f"sampler {sampler!r} is not deterministic; choose one of: "
                                 + ", ".join(sorted(_samplers.DETERMINISTIC)))
            fn = _samplers.SAMPLERS[sampler]
        else:
            fn = sampler
        counted = _samplers.Counted(functools.partial(denoiser, **cond) if cond else denoiser)
        out = fn(counted, x_hat, sigmas)
        nfe = torch.full((B,), float(counted.calls), dtype=torch.float64, device=x_hat.device)
        return out, EncodeInfo(nfe=nfe, sigmas=sigmas)

    def rhs(u: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        xh = y.reshape((y.shape[0],) + shape).to(dtype)
        sig = torch.exp(u.double()).to(dtype)
        c = {k: (v[idx] if isinstance(v, Tensor) and v.ndim and v.shape[0] == B else v) for k, v in cond.items()}
        with torch.no_grad():
            D = denoiser(xh, sig, **c)
        return (xh - D).reshape(y.shape[0], -1).double()

    y, info = solve(rhs, x_hat.reshape(B, -1).double(), math.log(s_from), math.log(s_to), rtol=rtol, atol=atol,
                    method=method, max_steps=max_steps)
    return y.reshape(x_hat.shape).to(dtype), EncodeInfo(nfe=info.nfe, sigmas=None)


def _grid(sigmas, increasing: bool):
    if sigmas is None:
        return None, None, None
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    if s.numel() < 2 or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"sigmas must hold at least 2 finite positive noise levels, got {s.tolist()}")
    d = s[1:] - s[:-1]
    if not bool((d > 0).all() if increasing else (d < 0).all()):
        raise ValueError(f"sigmas must be strictly {'increasing' if increasing else 'decreasing'} "
                         f"({'encode' if increasing else 'decode'}), got {s.tolist()}")
    lo, hi = (float(s[0]), float(s[-1])) if increasing else (float(s[-1]), float(s[0]))
    return s, lo, hi


def encode(
    denoiser,
    x: Tensor,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    sigmas=None,
    sampler="heun",
    rtol: float = 1e-6,
    atol: float = 1e-6,
    method: Method | str = Method.DOPRI5,
    process: Process | None = None,
    cond: dict | None = None,
    max_steps: int = 10_000,
    return_info: bool = False,
):
    """Data -> latent: integrate the PF-ODE from sigma_min up to sigma_max.

    Args:
        denoiser: canonical ``D(x_hat, sigma, **cond)``.
        x: (batch, *data_shape) x_hat at sigma_min (x_t of ``process`` if given).
        sigma_min, sigma_max: the ends (adaptive solver); or
        sigmas: an increasing grid from sigma_min to sigma_max for a fixed-step ``sampler`` (a name in
            ``diffusionlens.samplers.DETERMINISTIC`` or a sampler function).
        rtol, atol, method: adaptive-solver options.
        process: read ``x`` as x_t = s x_hat at sigma_min and return the latent as x_t at sigma_max.
        cond: conditioning keyword arguments (tensors with leading dim batch are per sample).
        return_info: also return an :class:`EncodeInfo`.
    Returns:
        latent (batch, *data_shape) in x's dtype (and the info).
    """
    z, info = _transport(denoiser, x, True, sigma_min, sigma_max, sigmas, process, sampler=sampler, rtol=rtol,
                         atol=atol, method=method, cond=dict(cond or {}), max_steps=max_steps)
    return (z, info) if return_info else z


def decode(
    denoiser,
    z: Tensor,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    sigmas=None,
    sampler="heun",
    rtol: float = 1e-6,
    atol: float = 1e-6,
    method: Method | str = Method.DOPRI5,
    process: Process | None = None,
    cond: dict | None = None,
    max_steps: int = 10_000,
    return_info: bool = False,
):
    """Latent -> data: integrate the PF-ODE from sigma_max down to sigma_min (the inverse of :func:`encode`).

    ``sigmas``, if given, is a decreasing grid from sigma_max to sigma_min (> 0). Other arguments as
    :func:`encode`; ``z`` is x_hat at sigma_max (x_t of ``process`` if given).
    """
    x, info = _transport(denoiser, z, False, sigma_min, sigma_max, sigmas, process, sampler=sampler, rtol=rtol,
                         atol=atol, method=method, cond=dict(cond or {}), max_steps=max_steps)
    return (x, info) if return_info else x


def _transport(denoiser, x: Tensor, up: bool, sigma_min, sigma_max, sigmas, process, **flow):
    """The PF-ODE from one end of [sigma_min, sigma_max] to the other (``up``: encoding), in x_t units of
    ``process`` at both ends: the ends from the grid when one is given (increasing when encoding)."""
    grid, lo, hi = _grid(sigmas, increasing=up)
    if grid is not None:
        sigma_min, sigma_max = lo, hi
    if sigma_min is None or sigma_max is None:
        raise ValueError(f"give sigma_min and sigma_max, or an {'increasing' if up else 'decreasing'} sigmas grid")
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    _check(x, sigma_min, sigma_max)
    start, end = (sigma_min, sigma_max) if up else (sigma_max, sigma_min)
    y, info = _flow(denoiser, x / _scale_at(process, start), start, end, sigmas=grid, **flow)
    return y * _scale_at(process, end), info


def round_trip(denoiser, x: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
    """decode(encode(x)) and its per-sample relative error ||x_rec - x|| / ||x|| (batch,).

    ``kwargs`` go to both (``sigmas`` is the encoding grid; decoding runs it reversed).
    """
    sigmas = kwargs.pop("sigmas", None)
    z = encode(denoiser, x, sigmas=sigmas, **kwargs)
    back = None if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64).flip(0)
    x_rec = decode(denoiser, z, sigmas=back, **kwargs)
    err = (x_rec - x).flatten(1).double().norm(dim=1) / x.flatten(1).double().norm(dim=1).clamp_min(1e-300)
    return x_rec, err


def slerp(z0: Tensor, z1: Tensor, w) -> Tensor:
    """Spherical interpolation between latents, per sample (Shoemake 1985; as used for diffusion latents).

    slerp = sin((1 - w) theta) / sin(theta) z0 + sin(w theta) / sin(theta) z1, with theta the angle
    between the flattened z0 and z1; nearly parallel pairs (sin theta < 1e-6) fall back to linear
    interpolation. The norm is interpolated along the great circle only when ||z0|| = ||z1||; in
    general the path keeps the Gaussian-typical norm far better than a straight line.

    Args:
        z0, z1: (batch, *shape), the same shape.
        w: float or (batch,) interpolation weights (0 gives z0, 1 gives z1).
    Returns:
        (batch, *shape) in z0's dtype.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.ndim < 2:
        raise ValueError(f"latents must have shape (batch, *shape), got {tuple(z0.shape)}")
    a, b = z0.flatten(1).double(), z1.flatten(1).double()
    w = torch.as_tensor(w, dtype=torch.float64, device=z0.device)
    if w.ndim == 0:
        w = w.expand(z0.shape[0])
    if w.shape != (z0.shape[0],):
        raise ValueError(f"w must be a float or have shape ({z0.shape[0]},), got {tuple(w.shape)}")
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    theta = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(theta)
    near = sin < 1e-6
    safe = torch.where(near, torch.ones_like(sin), sin)
    c0 = torch.where(near, 1 - w, torch.sin((1 - w) * theta) / safe)
    c1 = torch.where(near, w, torch.sin(w * theta) / safe)
    out = expand(c0, a) * a + expand(c1, b) * b
    return out.reshape(z0.shape).to(z0.dtype)
