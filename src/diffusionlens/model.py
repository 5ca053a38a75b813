"""Turning a network into the canonical denoiser, and adapters for other conventions.

The canonical denoiser is any callable ``D(x_hat, sigma, **cond) -> x0_estimate`` with
``x_hat`` (batch, ...) the scale-free noisy input and ``sigma`` a float or (batch,) tensor.
:class:`Denoiser` builds one from a network, a process and a parameterization; the adapters at the
bottom convert models trained in other libraries' conventions (integer DDPM timesteps, flow
matching with data at t = 1) into it, so nothing downstream ever sees those conventions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor, nn

from ._util import as_sigma, expand
from .parameterization import Param, edm_precond, to_denoiser
from .processes import DDPMTable, Flow, Process

__all__ = ["DenoiserFn", "Denoiser", "from_timestep_model", "from_flow_matching"]


class DenoiserFn(Protocol):
    def __call__(self, x_hat: Tensor, sigma, **cond) -> Tensor: ...


NoiseCond = Callable[[Tensor, Tensor], Tensor]
"""Maps (sigma, t), both (batch,), to the noise conditioning the network receives."""


class Denoiser(nn.Module):
    """Canonical denoiser D(x_hat, sigma) around ``net(x_in, cond, **kwargs)``.

    The network sees ``x_in = s(t) * x_hat`` (the process's own x_t) — or ``c_in * x_hat`` for EDM
    preconditioning — and ``cond = noise_cond(sigma, t)``, by default the process time t (EDM:
    c_noise = ln(sigma) / 4). Its output is read as ``param`` and converted to D exactly.

    Args:
        net: module called as ``net(x_in, cond, **kwargs)``, returning a tensor shaped like x_in.
        process: the noise process the network was trained with.
        param: what the network predicts (:class:`~diffusionlens.parameterization.Param` or name).
        sigma_data: data std used by EDM preconditioning.
        noise_cond: optional override of the conditioning map.
    """

    def __init__(
        self,
        net: nn.Module | Callable,
        process: Process,
        param: Param | str = Param.EPS,
        *,
        sigma_data: float = 0.5,
        noise_cond: NoiseCond | None = None,
    ):
        super().__init__()
        if not isinstance(process, Process):
            raise TypeError(f"process must be a diffusionlens Process, got {process!r}")
        self.net = net
        self.process = process
        self.param = Param.parse(param)
        self.sigma_data = float(sigma_data)
        if self.sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.noise_cond = noise_cond

    def network_inputs(self, x_hat: Tensor, sigma: Tensor):
        """(x_in, cond, coefs) that the network sees at scale-free input x_hat and noise level sigma (batch,)."""
        t = self.process.t_of_sigma(sigma).clamp(0, 1)
        c = self.process.coefs(t)
        if self.param is Param.EDM:
            _, _, c_in, c_noise = edm_precond(sigma, self.sigma_data)
            x_in, default_cond = expand(c_in, x_hat) * x_hat, c_noise
        else:
            x_in, default_cond = expand(c.scale, x_hat) * x_hat, t
        cond = self.noise_cond(sigma, t) if self.noise_cond is not None else default_cond
        return x_in, cond, c

    def forward(self, x_hat: Tensor, sigma, **kwargs) -> Tensor:
        sigma = as_sigma(sigma, x_hat)
        x_in, cond, c = self.network_inputs(x_hat, sigma)
        out = self.net(x_in, cond, **kwargs)
        if out.shape != x_hat.shape:
            raise ValueError(f"network output shape {tuple(out.shape)} differs from input shape {tuple(x_hat.shape)}")
        return to_denoiser(self.param, out, x_hat, c, self.sigma_data)


def from_timestep_model(net: nn.Module | Callable, process: DDPMTable, param: Param | str = Param.EPS) -> Denoiser:
    """Adapter for an integer-timestep DDPM model (diffusers / improved-diffusion style).

    ``net(x_t, timestep, **kwargs)`` takes x_t = sqrt(abar) x0 + sqrt(1 - abar) n and the 0-based
    timestep index (fractional between table entries; exact integers on a
    :func:`~diffusionlens.processes.timestep_grid`), and predicts eps or v.
    """
    if not isinstance(process, DDPMTable):
        raise TypeError(f"from_timestep_model needs a DDPMTable process, got {process!r}")
    param = Param.parse(param)
    if param not in (Param.EPS, Param.V, Param.X0):
        raise ValueError(f"timestep models predict eps, v or x0, got {param.value!r}")
    return Denoiser(net, process, param, noise_cond=lambda sigma, t: t * process.T - 1)


class _ReversedTimeVelocity(nn.Module):
    """A flow-matching velocity net (data at t = 1) seen in this package's time: u(x, t) = -v(x, 1 - t)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t, **kwargs):
        return -self.net(x, Flow.export_time(t).to(x.dtype), **kwargs)


def from_flow_matching(net: nn.Module | Callable, *, data_at_one: bool = True) -> Denoiser:
    """Adapter for a flow-matching / rectified-flow velocity model ``net(x, t_fm, **kwargs)``.

    With ``data_at_one`` (torchcfm, flow_matching, Lipman et al. 2023) the net was trained on
    x = t_fm x1 + (1 - t_fm) x0_noise with target x1 - x0_noise; otherwise it already uses this
    package's direction (x_t = (1 - t) x0 + t n, target n - x0, as in rectified flow / minRF).
    """
    inner = _ReversedTimeVelocity(net) if data_at_one else net
    return Denoiser(inner, Flow(), Param.VELOCITY)
