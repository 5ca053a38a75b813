"""Hutchinson probe vectors for the trace of the denoiser's Jacobian (:mod:`.pf_ode`'s module docstring,
"Divergence" and "Variance reduction"): fixed probes drawn once per sample, and rotating probes that move
through an orthonormal frame along log sigma.

Shapes: probes (batch, P, *data_shape); rotating frames (batch, P, turns + 1, d).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._util import Choice

__all__ = ["Probe", "draw_probes", "draw_rotating", "rotating_probe"]


class Probe(Choice, what="probe"):
    """Distribution of Hutchinson probe vectors (all have E[e e^T] = I)."""

    ROTATING = "rotating"
    RADEMACHER = "rademacher"
    GAUSSIAN = "gaussian"
    ORTHOGONAL = "orthogonal"


def draw_probes(
    shape: tuple[int, ...], probes: int, kind: Probe | str, generator: torch.Generator | None, dtype, device
) -> Tensor:
    """Probe vectors e with E[e e^T] = I, shape (batch, probes, *data_shape) for ``shape`` = (batch, *data_shape)."""
    kind = Probe.parse(kind)
    if kind is Probe.ROTATING:
        raise ValueError("rotating probes depend on the noise level: use draw_rotating and rotating_probe")
    B, d = shape[0], math.prod(shape[1:])
    gdev = generator.device if generator is not None else torch.device(device)
    if kind is Probe.RADEMACHER:
        e = torch.randint(0, 2, (B, probes, d), generator=generator, device=gdev).to(torch.float64) * 2 - 1
    elif kind is Probe.GAUSSIAN:
        e = torch.randn(B, probes, d, generator=generator, device=gdev, dtype=torch.float64)
    else:
        # blocks of min(P, d) orthonormal directions scaled by sqrt(d): E[e e^T] = d E[q q^T] = I per direction
        blocks = []
        left = probes
        while left > 0:
            k = min(left, d)
            g = torch.randn(B, d, k, generator=generator, device=gdev, dtype=torch.float64)
            q, r = torch.linalg.qr(g)
            q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar
            blocks.append(q.transpose(1, 2) * math.sqrt(d))
            left -= k
        e = torch.cat(blocks, 1)
    return e.reshape((B, probes) + tuple(shape[1:])).to(device=device, dtype=dtype)


def draw_rotating(batch: int, probes: int, d: int, turns: int, generator, dtype, device) -> Tensor:
    """Orthonormal frames of ``turns + 1`` directions per probe, scaled by sqrt(d): (batch, probes, turns + 1, d)."""
    if turns + 1 > d:
        raise ValueError(f"rotating probes need turns + 1 <= d orthonormal directions, got turns={turns}, d={d}")
    gdev = generator.device if generator is not None else torch.device(device)
    g = torch.randn(batch, probes, d, turns + 1, generator=generator, device=gdev, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]  # Haar
    return (q.transpose(-1, -2) * math.sqrt(d)).to(device=device, dtype=dtype)


def rotating_probe(frames: Tensor, u: Tensor, u_lo: float, u_hi: float) -> Tensor:
    """The rotating probe at log-noise ``u`` (b,), from ``frames`` (b, P, turns + 1, d): returns (b, P, d).

    On [k, k + 1] of the rescaled position tau = turns (u - u_lo)/(u_hi - u_lo) the probe is
    cos(pi/2 g) a_k + sin(pi/2 g) a_{k+1}, g = f^3 (10 - 15 f + 6 f^2) of the fraction f (C2 in u).
    """
    turns = frames.shape[2] - 1
    tau = ((u.double() - u_lo) / (u_hi - u_lo) * turns).clamp(0, turns)
    k = tau.floor().clamp(max=turns - 1).long()
    f = tau - k
    g = f**3 * (10 - 15 * f + 6 * f**2)
    c = torch.cos(0.5 * math.pi * g).to(frames.dtype)[:, None, None]
    s = torch.sin(0.5 * math.pi * g).to(frames.dtype)[:, None, None]
    rows = torch.arange(frames.shape[0], device=frames.device)
    return c * frames[rows, :, k] + s * frames[rows, :, k + 1]
