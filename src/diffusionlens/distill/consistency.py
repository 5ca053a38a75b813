"""Consistency models (Song et al. 2023) with the improved training recipe (Song & Dhariwal 2023).

A consistency function f(x, sigma) maps every point of a probability-flow trajectory to the
trajectory's end at sigma_min. The boundary condition f(x, sigma_min) = x holds by construction:

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, ln(sigma) / 4),
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
    c_out  = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2),  c_in = 1/sqrt(sigma^2 + sigma_data^2).

Training compares f at adjacent levels sigma_i < sigma_{i+1} of a Karras discretisation, the lower
one under stop-gradient on the same network (no EMA teacher): x_{i+1} = x0 + sigma_{i+1} z and
x_i = x0 + sigma_i z (consistency training), or x_i one ODE-solver step from x_{i+1} with a teacher
denoiser (consistency distillation). The loss is the pseudo-Huber distance
sqrt(|a - b|^2 + c^2) - c with c = 0.00054 sqrt(d), weighted by 1 / (sigma_{i+1} - sigma_i), with i
drawn from a log-normal density over the discretisation and, in training, N(k) levels doubling
from s0 to s1 over the run (the curriculum).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._util import as_sigma, expand
from ..objectives.base import Batch, Objective, Streams
from ..samplers import NoiseStream, euler_update, heun_update

__all__ = ["ConsistencyFunction", "discretisation", "curriculum", "level_probabilities", "pseudo_huber",
           "ConsistencyTraining", "ConsistencyDistillation", "consistency_sample"]


class ConsistencyFunction(nn.Module):
    """f(x, sigma) around a network ``net(x_in, cond)`` (e.g. :class:`diffusionlens.nets.MLP`); a
    canonical denoiser-like callable, so the samplers and :func:`consistency_sample` accept it."""

    def __init__(self, net: nn.Module, *, sigma_min: float = 0.002, sigma_data: float = 0.5):
        super().__init__()
        if not (0 < sigma_min and sigma_data > 0):
            raise ValueError(f"need sigma_min > 0 and sigma_data > 0, got {sigma_min}, {sigma_data}")
        self.net, self.sigma_min, self.sigma_data = net, float(sigma_min), float(sigma_data)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sd2, d = self.sigma_data**2, sigma - self.sigma_min
        r = sigma**2 + sd2
        return sd2 / (d**2 + sd2), self.sigma_data * d / r.sqrt(), r.rsqrt()

    def forward(self, x: Tensor, sigma, **kwargs) -> Tensor:
        sigma = as_sigma(sigma, x)
        c_skip, c_out, c_in = self.scalings(sigma)
        out = self.net(expand(c_in, x) * x, torch.log(sigma) / 4, **kwargs)
        return expand(c_skip, x) * x + expand(c_out, x) * out


def discretisation(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """The n increasing Karras levels sigma_min = sigma_1 < ... < sigma_n = sigma_max (float64)."""
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"the discretisation needs n >= 2 levels, got {n!r}")
    if not (0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    a, b = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (a + u * (b - a)) ** rho


def curriculum(k: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) = min(s0 2^floor(k / K'), s1) + 1 with K' = floor(total / (log2(floor(s1/s0)) + 1))."""
    if not (isinstance(total, int) and total >= 1):
        raise ValueError(f"total training steps must be a positive integer, got {total!r}")
    if not (1 <= s0 <= s1):
        raise ValueError(f"need 1 <= s0 <= s1, got {s0}, {s1}")
    kp = max(1, math.floor(total / (math.log2(s1 // s0) + 1)))
    return min(s0 * 2 ** (k // kp), s1) + 1


def level_probabilities(sigmas: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """p(i) for the n - 1 pairs (sigma_i, sigma_{i+1}): the log-normal mass of [ln sigma_i, ln sigma_{i+1}]."""
    cdf = torch.erf((sigmas.log() - p_mean) / (math.sqrt(2) * p_std))
    p = (cdf[1:] - cdf[:-1]).clamp(min=0)
    return p / p.sum()


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """Per-sample sqrt(|a - b|^2 + c^2) - c."""
    return ((a - b).pow(2).flatten(1).sum(1) + c * c).sqrt() - c


class _Consistency(Objective):
    streams = ("t", "noise")

    def __init__(self, sigma_min, sigma_max, p_mean, p_std, c):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not (p_std > 0):
            raise ValueError(f"p_std must be > 0, got {p_std}")
        if c is not None and not c > 0:
            raise ValueError(f"the pseudo-Huber c must be > 0, got {c}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.p_mean, self.p_std, self.c = float(p_mean), float(p_std), c

    def levels(self) -> int:
        raise NotImplementedError

    def lower(self, x0: Tensor, x_hi: Tensor, z: Tensor, i: Tensor, sigmas: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        x0, n = batch.x0, batch.size
        sigmas = discretisation(self.levels(), self.sigma_min, self.sigma_max)
        i = torch.multinomial(level_probabilities(sigmas, self.p_mean, self.p_std), n, replacement=True,
                              generator=rng["t"])
        z = torch.randn(x0.shape, generator=rng["noise"], dtype=x0.dtype).to(x0.device)
        i, x0, z = batch.local(i), batch.local(x0), batch.local(z)
        s_lo, s_hi = sigmas[i].to(x0), sigmas[i + 1].to(x0)
        x_hi = x0 + expand(s_hi, x0) * z
        with torch.no_grad():
            target = model(self.lower(x0, x_hi, z, i, sigmas), s_lo)
        c = self.c if self.c is not None else 0.00054 * math.sqrt(x0[0].numel())
        loss = pseudo_huber(model(x_hi, s_hi), target, c) / (s_hi - s_lo)
        if not bool(torch.isfinite(loss).all()):
            raise FloatingPointError("non-finite consistency loss")
        return loss


class ConsistencyTraining(_Consistency):
    """Consistency training from data alone (improved recipe); the model is a :class:`ConsistencyFunction`.

    ``total`` training steps set the curriculum N(k) (``s0``, ``s1``); the objective counts its calls
    (one per training step) and that count is its state. ``c`` None: 0.00054 sqrt(d).
    """

    def __init__(self, total: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, p_mean: float = -1.1,
                 p_std: float = 2.0, s0: int = 10, s1: int = 1280, c: float | None = None):
        super().__init__(sigma_min, sigma_max, p_mean, p_std, c)
        curriculum(0, total, s0, s1)
        self.total, self.s0, self.s1, self.k = total, s0, s1, 0

    def levels(self) -> int:
        return curriculum(self.k, self.total, self.s0, self.s1)

    def lower(self, x0, x_hi, z, i, sigmas):
        return x0 + expand(sigmas[i].to(x0), x0) * z

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        loss = super().__call__(model, batch, rng)
        self.k += 1
        return loss

    def state_dict(self) -> dict:
        return {"k": self.k, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"k", "total"} or state["total"] != self.total:
            raise ValueError(f"consistency-training state must be {{k, total={self.total}}}, got {state}")
        self.k = int(state["k"])


class ConsistencyDistillation(_Consistency):
    """Consistency distillation: x_i is one ``solver`` step (``"euler"`` or ``"heun"``, the samplers'
    update functions) of the teacher's probability-flow ODE from x_{i+1}; ``n`` levels, fixed."""

    def __init__(self, teacher, *, n: int = 18, solver: str = "heun", sigma_min: float = 0.002,
                 sigma_max: float = 80.0, p_mean: float = -1.1, p_std: float = 2.0, c: float | None = None):
        super().__init__(sigma_min, sigma_max, p_mean, p_std, c)
        discretisation(n, sigma_min, sigma_max)
        if solver not in ("euler", "heun"):
            raise ValueError(f"unknown solver {solver!r}; choose euler or heun")
        self.teacher, self.n, self.solver = teacher, n, solver
        if isinstance(teacher, nn.Module):
            teacher.requires_grad_(False).eval()

    def levels(self) -> int:
        return self.n

    def lower(self, x0, x_hi, z, i, sigmas):
        out = torch.empty_like(x_hi)
        for k in i.unique().tolist():
            m = i == k
            out[m] = self.step(x_hi[m], float(sigmas[k + 1]), float(sigmas[k]))
        return out

    def step(self, x: Tensor, sigma: float, sigma_next: float) -> Tensor:
        d = self.teacher(x, as_sigma(sigma, x))
        x1 = euler_update(x, d, sigma, sigma_next)
        if self.solver == "euler":
            return x1
        return heun_update(x, d, x1, self.teacher(x1, as_sigma(sigma_next, x1)), sigma, sigma_next)


@torch.no_grad()
def consistency_sample(f, noise: Tensor, sigmas=(80.0,), *, sigma_min: float = 0.002,
                       generator: torch.Generator | Tensor | None = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): x = f(sigmas[0] noise, sigmas[0]),
    then for each later level tau: x = f(x + sqrt(tau^2 - sigma_min^2) z, tau). One level = one step.
    ``generator``: a torch.Generator, or (batch,) int64 per-sample seeds (batch-size invariant noise,
    as :func:`diffusionlens.samplers.sample` takes them)."""
    s = [float(v) for v in torch.as_tensor(sigmas, dtype=torch.float64).flatten()]
    if not s or any(not (v > sigma_min) for v in s) or any(a <= b for a, b in zip(s, s[1:])):
        raise ValueError(f"sigmas must decrease and stay above sigma_min={sigma_min}, got {s}")
    x = f(noise * s[0], as_sigma(s[0], noise))
    stream = NoiseStream.make(generator, x) if isinstance(generator, Tensor) else None
    for step, tau in enumerate(s[1:]):
        if stream is not None:
            z = stream.normal(step, x)
        else:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_tau = x + math.sqrt(tau**2 - sigma_min**2) * z
        x = f(x_tau, as_sigma(tau, x_tau))
    return x
