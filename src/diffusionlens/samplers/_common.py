"""Shared vocabulary of the samplers: grids, the step loop, NFE counting, NaN checks and noise.

Conventions (see ``diffusionlens.processes``): every sampler integrates in the scale-free
coordinates ``x_hat = x0 + sigma n`` of the canonical denoiser ``D(x_hat, sigma)``, over a grid
``sigmas`` of shape (steps + 1,) that is either

* decreasing (sampling, noise -> data), strictly, with positive entries except possibly a final 0;
  ``x = noise * sigmas[0]``; or
* increasing from a ``sigma_min > 0`` (encoding, data -> noise), for the deterministic samplers.

Grid arithmetic is done on the host in float64 (Python floats): step coefficients such as
``expm1(-h)`` never see the data's dtype. The data ``x`` (batch, ...) keeps its dtype and device.

Noise: :class:`NoiseStream` is a counter-based Gaussian generator. Every sample ``b`` has a 64-bit
seed; the normal variate number ``j`` of sample ``b`` at step ``i`` (sub-draw ``k``) is a pure
function of ``(seed_b, i, k, j)`` — SplitMix64 (Steele, Lea & Flood 2014) of the counter, then
Box–Muller — computed with torch integer ops. So the noise of sample ``b`` does not depend on the
batch it is drawn in (the first B samples of a batch of B + k equal the batch of B), nor on the
device (integer hashing is exact; Box–Muller is evaluated in float64 and rounded to the data's dtype).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._util import as_tensor

__all__ = [
    "AnalyticStart",
    "Counted",
    "check_output",
    "NoiseStream",
    "noise_seeds",
    "randn",
    "check_grid",
    "grid_floats",
    "call",
    "check_finite",
    "lincomb",
    "report",
    "run",
]

Denoiser = Callable[..., Tensor]
Callback = Callable[[dict], None]


# ----------------------------------------------------------------------------- grid checks


def check_grid(sigmas, *, allow_increasing: bool = True, name: str = "sampler") -> Tensor:
    """Validate a noise-level grid and return it as a float64 CPU tensor of shape (n,).

    A decreasing grid must be strictly decreasing and positive except for an optional final 0; an
    increasing grid (only when ``allow_increasing``) must start above 0. Raises ValueError naming
    the offending entry otherwise.
    """
    s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
    if s.ndim != 1 or s.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D grid with at least 2 entries, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"sigmas must be finite, got {s.tolist()}")
    diff = s[1:] - s[:-1]
    if bool((diff < 0).all()):
        if bool((s[:-1] <= 0).any()):
            i = int(torch.nonzero(s[:-1] <= 0)[0, 0])
            raise ValueError(
                f"a decreasing grid must be positive before its last entry, got sigmas[{i}] = {s[i].item()}"
            )
        if s[-1].item() < 0:
            raise ValueError(f"sigmas must be >= 0, got sigmas[-1] = {s[-1].item()}")
        return s
    if bool((diff > 0).all()):
        if not allow_increasing:
            raise ValueError(f"{name} samples noise -> data and needs a decreasing grid; got an increasing one")
        if s[0].item() <= 0:
            raise ValueError(f"an increasing grid must start above 0, got sigmas[0] = {s[0].item()}")
        return s
    i = int(torch.nonzero(diff == 0)[0, 0]) if bool((diff == 0).any()) else int(
        torch.nonzero(torch.sign(diff) != torch.sign(diff[0]))[0, 0]
    )
    raise ValueError(
        f"sigmas must be strictly monotone (decreasing to sample, increasing to encode); "
        f"sigmas[{i}] = {s[i].item()}, sigmas[{i + 1}] = {s[i + 1].item()}"
    )


def grid_floats(sigmas, **kw) -> list[float]:
    """:func:`check_grid`, as a list of Python floats (host-side float64 step arithmetic)."""
    return check_grid(sigmas, **kw).tolist()


# ----------------------------------------------------------------------------- calls and checks


def call(denoiser: Denoiser, x: Tensor, sigma: float) -> Tensor:
    """D(x, sigma) with sigma passed as a (batch,) tensor in x's dtype and device."""
    return denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device))


def lincomb(*terms: tuple[float, Tensor]) -> Tensor:
    """sum_k c_k t_k for Python-float coefficients, as one multiply and in-place ``add_(alpha=c)``
    kernels into a fresh tensor (a step's whole update is one such combination: its coefficients are
    host float64 arithmetic, so the data sees one pass per term and no temporaries).
    Terms with coefficient 0 are skipped (a zero coefficient never touches a tensor)."""
    terms = [(c, t) for c, t in terms if c != 0.0]
    if not terms:
        raise ValueError("lincomb needs at least one nonzero coefficient")
    c0, t0 = terms[0]
    out = t0 * c0
    for c, t in terms[1:]:
        out.add_(t, alpha=c)
    return out


def check_finite(x: Tensor, step: int, sigma: float, what: str = "sample") -> None:
    """Raise FloatingPointError naming the step and noise level if ``x`` holds a NaN or inf.

    One reduction pass: a NaN or inf anywhere makes the sum non-finite; only then (or on a
    harmless overflow of the sum) are the elements checked one by one."""
    if bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1)
        raise FloatingPointError(
            f"non-finite {what} at step {step} (sigma={sigma:.6g}) in sample {int(torch.nonzero(bad)[0, 0])}"
        )


def report(callback: Callback | None, i: int, x: Tensor, sigma: float, sigma_next: float, denoised: Tensor | None):
    """Check the new state and pass k-diffusion-style step info to ``callback``."""
    check_finite(x, i, sigma_next)
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


class Counted:
    """Wraps a denoiser and counts its evaluations honestly.

    ``calls`` is the number of batched calls; ``rows`` the number of sample evaluations (the sum of
    the batch sizes of all calls). For a batch of B samples, ``rows / B`` is the mean NFE per sample
    (samplers that evaluate only some samples in a call, like the adaptive one, make them differ).
    Non-finite values are caught by the sampling loop, which knows the step index. The first
    evaluation's output is checked once against its input (a tensor of the same shape, batch, dtype and
    device), so that a plain callable returning something else fails here with one line instead of
    giving a wrong sample.
    """

    def __init__(self, denoiser: Denoiser):
        # a stateful denoiser (self-conditioning) gives each sampling run a fresh state
        fresh = getattr(denoiser, "trajectory", None)
        self.denoiser = fresh() if callable(fresh) else denoiser
        self.calls = 0
        self.rows = 0

    def __call__(self, x: Tensor, sigma, **cond) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        out = self.denoiser(x, sigma, **cond)
        if self.calls == 1:
            check_output(out, x)
        return out


def check_output(out, x: Tensor) -> None:
    """Raise one TypeError/ValueError unless ``out`` is a tensor like ``x`` (shape, dtype, device)."""
    if not isinstance(out, Tensor):
        raise TypeError(f"the denoiser must return a tensor like its input, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"the denoiser returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}: "
                         "D(x_hat, sigma) must have the shape of x_hat (batch included)")
    if out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"the denoiser returned {out.dtype} on {out.device} for an input of {x.dtype} on "
                         f"{x.device}: D(x_hat, sigma) must keep the input's dtype and device")


class AnalyticStart:
    """A denoiser whose evaluation at the top of the grid is replaced by the data mean.

    As sigma grows, D(x_hat, sigma) = E[x0 | x_hat] tends to E[x0]: for data of mean m and covariance
    C, D = m + C (C + sigma^2 I)^-1 (x_hat - m) + O(higher moments / sigma^3), and with x_hat of size
    sigma the deviation from m is about ||C|| / sigma (1e-2 for unit-scale data at sigma = 80, shrunk
    further by the flow on the way down). So the first evaluation of a sampler, at sigma_max, can be
    replaced by m at no cost — the "analytical first step" of Zhou et al. (2024, "Fast ODE-based
    sampling for diffusion models in around 5 steps"), there with m = 0; here m is measured (the mean
    of D over a pilot at sigma_max, :func:`data_mean`). Every sampler then gets one more step for the
    same NFE. The first call, if every sigma in it is >= ``sigma_max``, returns ``mean``; every other call
    goes to the denoiser (a sampler that evaluates the top level again, like annealed Langevin, pays for
    those). One wrapper serves one sampling run.

    ``mean`` may also be a :class:`~diffusionlens.samplers.GaussianModel`: the first evaluation is then
    the Gaussian's denoiser m + C (C + sigma^2 I)^-1 (x_hat - m), the next term of the same large-sigma
    expansion, which matters when the grid starts lower (``sample(..., teleport=...)``).
    """

    def __init__(self, denoiser, mean, sigma_max: float):
        self.denoiser = denoiser
        self.mean = mean
        self.sigma_max = float(sigma_max)
        self.used = False

    def __call__(self, x: Tensor, sigma, **cond) -> Tensor:
        if not self.used:
            self.used = True
            if bool((as_tensor(sigma) >= self.sigma_max * (1 - 1e-12)).all()):
                if isinstance(self.mean, Tensor):
                    return self.mean.to(device=x.device, dtype=x.dtype).expand_as(x).clone()
                return self.mean.denoise(x, self.sigma_max)
        return self.denoiser(x, sigma, **cond)


# ----------------------------------------------------------------------------- noise

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _s64(v: int) -> int:
    """Python int -> the int64 with the same 64 bits."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def _mix_int(z: int) -> int:
    """SplitMix64 finalizer on a Python int (reference implementation, exact)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _srl(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: Tensor) -> Tensor:
    """SplitMix64 finalizer on an int64 tensor; torch's int64 multiply wraps modulo 2^64."""
    z = (z ^ _srl(z, 30)) * _s64(_M1)
    z = (z ^ _srl(z, 27)) * _s64(_M2)
    return z ^ _srl(z, 31)


def _mix_(z: Tensor, t: Tensor) -> Tensor:
    """:func:`_mix` in place on ``z``, with ``t`` (same shape, int64) as the only scratch buffer."""
    for k, m in ((30, _M1), (27, _M2)):
        torch.bitwise_right_shift(z, k, out=t)
        z.bitwise_xor_(t.bitwise_and_((1 << (64 - k)) - 1)).mul_(_s64(m))
    torch.bitwise_right_shift(z, 31, out=t)
    return z.bitwise_xor_(t.bitwise_and_((1 << 33) - 1))


_COUNTERS: dict = {}


def _counter(n: int, device) -> Tensor:
    """(j + 1) * golden for j < n, int64 (cached: it is the same for every step)."""
    key = (n, str(device))
    c = _COUNTERS.get(key)
    if c is None:
        c = torch.arange(1, n + 1, dtype=torch.int64, device=device) * _s64(_GOLDEN)
        if len(_COUNTERS) > 32:
            _COUNTERS.clear()
        _COUNTERS[key] = c
    return c


def noise_seeds(generator: torch.Generator | None, batch: int, device=None) -> Tensor:
    """Per-sample 64-bit seeds (batch,) int64: one base seed drawn from ``generator``, then
    seed_b = SplitMix64(base + golden * (b + 1)), so seed b does not depend on the batch size."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    base = int(torch.randint(-(2**63), 2**63 - 1, (1,), generator=generator, dtype=torch.int64, device=gdev).item())
    idx = torch.arange(1, batch + 1, dtype=torch.int64, device=device) * _s64(_GOLDEN)
    return _mix(idx + base)


@dataclass(frozen=True)
class NoiseStream:
    """Counter-based per-sample Gaussian noise: ``normal(step, like, sub)`` is a pure function of
    (per-sample seed, step, sub, element index).

    Args:
        seeds: (batch,) int64 per-sample seeds (see :func:`noise_seeds`).
    """

    seeds: Tensor

    @classmethod
    def make(cls, generator, x: Tensor) -> NoiseStream:
        """From a ``torch.Generator`` (or None: the global one) or a (batch,) int64 tensor of seeds."""
        if isinstance(generator, Tensor):
            if generator.dtype != torch.int64 or generator.shape != (x.shape[0],):
                raise ValueError(
                    f"per-sample seeds must be an int64 tensor of shape ({x.shape[0]},), "
                    f"got {generator.dtype} {tuple(generator.shape)}"
                )
            return cls(generator.to(x.device))
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or per-sample seeds, got {type(generator).__name__}")
        return cls(noise_seeds(generator, x.shape[0], x.device))

    def normal(self, step: int, like: Tensor, sub: int = 0) -> Tensor:
        """Standard normal noise shaped like ``like`` (batch, ...) for draw ``sub`` of step ``step``."""
        B = like.shape[0]
        if not 0 <= sub < 1 << 20:
            raise ValueError(f"sub must lie in [0, 2^20), got {sub}")
        if B != self.seeds.shape[0]:
            raise ValueError(f"noise stream has {self.seeds.shape[0]} seeds, data has batch {B}")
        n = like[0].numel()
        half = (n + 1) // 2
        key = _mix(self.seeds + _s64(_mix_int(((step & 0xFFFFFFFF) << 20) | sub) ^ 0x5DEECE66D))
        h = torch.add(key[:, None], _counter(half, like.device))  # (B, half): 64 random bits each after the mix
        t = torch.empty_like(h)
        _mix_(h, t)
        # Box-Muller on (0, 1] x [0, 1): radius from the high word (never log 0), angle from the low word,
        # sqrt(-2 log((hi + 0.5) 2^-32)) * (cos, sin)(lo 2 pi 2^-32) in float64, in place: four large buffers
        # (the two integer ones reused as float64 for cos and sin), no temporaries: large allocations cost
        # more than this arithmetic on the CPU (the direct form's values are bit-identical)
        z = torch.empty((2, B, half), dtype=torch.float64, device=like.device)
        r, theta = z[0], z[1]
        torch.bitwise_right_shift(h, 32, out=t)
        r.copy_(t.bitwise_and_(0xFFFFFFFF))
        theta.copy_(h.bitwise_and_(0xFFFFFFFF))
        r.add_(0.5).mul_(2.0**-32).log_().mul_(-2.0).sqrt_()
        theta.mul_(2 * math.pi * 2.0**-32)
        c, s = t.view(torch.float64), h.view(torch.float64)  # the integer buffers are free now
        torch.cos(theta, out=c).mul_(r)
        torch.sin(theta, out=s).mul_(r)
        out = torch.empty((B, 2 * half), dtype=like.dtype, device=like.device)
        out[:, :half].copy_(c)
        out[:, half:].copy_(s)
        return (out if 2 * half == n else out[:, :n]).reshape(like.shape)


def randn(shape, generator: torch.Generator | Tensor | None = None, *, dtype=torch.float32, device=None) -> Tensor:
    """Standard normal initial noise of ``shape`` (batch, ...) from per-sample streams.

    Sample b depends only on its seed, so ``randn((B + k, ...), g)[:B]`` equals ``randn((B, ...), g')``
    for generators in the same state. Use it for the ``noise`` of :func:`diffusionlens.samplers.sample`
    to make whole trajectories batch-size invariant.
    """
    like = torch.empty(shape, dtype=dtype, device=device)
    return NoiseStream.make(generator, like).normal(-1, like)


# ----------------------------------------------------------------------------- the loop

Step = Callable[[int, Tensor, float, float, object], tuple[Tensor, object, Tensor | None]]


def run(step: Step, x: Tensor, sigmas: list[float], state=None, callback: Callback | None = None) -> Tensor:
    """The one sampling loop: ``x, state, denoised = step(i, x, sigma_i, sigma_{i+1}, state)`` per
    interval, checking every new state for NaN/inf (raised with the step and sigma) and reporting it
    to ``callback``. Multistep history lives in ``state``, a value each step returns."""
    for i in range(len(sigmas) - 1):
        x, state, denoised = step(i, x, sigmas[i], sigmas[i + 1], state)
        report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
    return x
