"""Noise processes and sampling grids.

Conventions (fixed for the whole package, see ``docs/notation.md``):

* Time ``t`` runs in [0, 1]; t = 0 is clean data, t = 1 is (nearly) pure noise.
* A process is a scale ``s(t)`` and a noise level ``sigma(t)``::

      x_t = s(t) * (x0 + sigma(t) * n),      n ~ N(0, I)

  so ``x_hat = x_t / s(t) = x0 + sigma * n`` is the scale-free input that the canonical denoiser
  ``D(x_hat, sigma) ~ E[x0 | x_hat]`` sees. Log-SNR is ``logsnr = -2 log sigma``.
* VE / EDM: s = 1.  VP (and the discrete DDPM table): s^2 = 1 / (1 + sigma^2), so that
  ``alpha = s`` and the VP noise std is ``s * sigma``.  Flow (linear interpolant / rectified flow):
  x_t = (1 - t) x0 + t n, i.e. s = 1 - t, sigma = t / (1 - t).  Sub-VP: s^2 = abar,
  s * sigma = 1 - abar.

Every method takes ``t`` as a float or tensor of any shape and returns a tensor of the same shape;
internally everything is computed in float64 and cast back to the input's dtype (Python floats
give float64). Derivatives are analytic (tested against autograd).

Sampling grids (:func:`karras_grid`, :func:`logsnr_grid`, :func:`time_grid`,
:func:`timestep_grid`) return a decreasing float64 tensor of ``steps + 1`` noise levels whose last
entry is 0, the shape every sampler expects.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ._util import as_tensor, check_unit_interval

__all__ = [
    "Coefs",
    "Process",
    "VP",
    "SubVP",
    "VE",
    "EDM",
    "Flow",
    "DDPMTable",
    "VPSchedule",
    "Spacing",
    "posterior_coefs",
    "karras_grid",
    "logsnr_grid",
    "time_grid",
    "timestep_grid",
]


@dataclass(frozen=True)
class Coefs:
    """The coefficients of a process at times ``t`` (all tensors of the same shape as ``t``).

    ``dsigma`` and ``dscale`` are derivatives with respect to ``t``.
    """

    t: Tensor
    sigma: Tensor
    scale: Tensor
    dsigma: Tensor
    dscale: Tensor


def _f64(t) -> tuple[Tensor, torch.dtype]:
    t = as_tensor(t)
    dtype = t.dtype if t.is_floating_point() else torch.float64
    return t.to(torch.float64), dtype


class Process:
    """A noise process ``x_t = s(t) (x0 + sigma(t) n)`` on t in [0, 1].

    Subclasses implement ``_sigma``, ``_dsigma``, ``_scale_of_sigma`` / ``_scale`` and
    ``_t_of_sigma`` on float64 tensors; the public methods validate and cast.
    """

    # --- implemented by subclasses (float64 in, float64 out) ---
    def _sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _dsigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _t_of_sigma(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def _scale(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _dscale(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    # --- public API ---
    def sigma(self, t) -> Tensor:
        """Noise level sigma(t) (>= 0, increasing; may be +inf at t = 1)."""
        return self._eval(self._sigma, t)

    def dsigma(self, t) -> Tensor:
        """d sigma / dt."""
        return self._eval(self._dsigma, t)

    def scale(self, t) -> Tensor:
        """Scale s(t) in x_t = s(t) (x0 + sigma(t) n)."""
        return self._eval(self._scale, t)

    def dscale(self, t) -> Tensor:
        """d s / dt."""
        return self._eval(self._dscale, t)

    def logsnr(self, t) -> Tensor:
        """Log signal-to-noise ratio lambda(t) = -2 log sigma(t)."""
        return self._eval(lambda u: -2.0 * torch.log(self._sigma(u)), t)

    def dlogsnr(self, t) -> Tensor:
        """d lambda / dt = -2 sigma'(t) / sigma(t) (negative: log-SNR falls with time)."""
        return self._eval(lambda u: -2.0 * self._dsigma(u) / self._sigma(u), t)

    def t_of_sigma(self, sigma) -> Tensor:
        """Inverse of :meth:`sigma`. Noise levels outside [sigma(0), sigma(1)] map outside [0, 1]
        where the formula extends (VE, EDM) and raise where it cannot."""
        s, dtype = _f64(sigma)
        if bool((torch.isnan(s) | (s < 0)).any()):
            raise ValueError(f"sigma must be >= 0, got {s[torch.isnan(s) | (s < 0)].flatten()[0].item()}")
        return self._t_of_sigma(s).to(dtype)

    def t_of_logsnr(self, logsnr) -> Tensor:
        """Inverse of :meth:`logsnr`."""
        lam, dtype = _f64(logsnr)
        return self._t_of_sigma(torch.exp(-0.5 * lam)).to(dtype)

    def scale_of_sigma(self, sigma) -> Tensor:
        """s at the time where the noise level is ``sigma``."""
        s, dtype = _f64(sigma)
        return self._scale(self._t_of_sigma(s)).to(dtype)

    def coefs(self, t) -> Coefs:
        """All coefficients at ``t`` in one frozen bundle."""
        u, dtype = _f64(t)
        check_unit_interval(u)
        return Coefs(
            t=u.to(dtype),
            sigma=self._sigma(u).to(dtype),
            scale=self._scale(u).to(dtype),
            dsigma=self._dsigma(u).to(dtype),
            dscale=self._dscale(u).to(dtype),
        )

    def add_noise(self, x0: Tensor, noise: Tensor, t) -> Tensor:
        """x_t = s(t) (x0 + sigma(t) n) for x0, noise of shape (batch, ...) and t of shape (batch,)."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from data shape {tuple(x0.shape)}")
        t = as_tensor(t, like=x0)
        if t.ndim == 0:
            t = t.expand(x0.shape[0])
        c = self.coefs(t)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return c.scale.reshape(shape) * (x0 + c.sigma.reshape(shape) * noise)

    def sde(self, t) -> tuple[Tensor, Tensor]:
        """Forward SDE dx_t = f(t) x_t dt + g(t) dW of this process: returns (f, g^2).

        From x_t = s (x0 + sigma n): f = s'/s and g^2 = 2 s^2 sigma sigma' (Song et al. 2021, and
        Karras et al. 2022 eq. 6 read backwards).
        """
        u, dtype = _f64(t)
        check_unit_interval(u)
        s, sig = self._scale(u), self._sigma(u)
        return (self._dscale(u) / s).to(dtype), (2 * s**2 * sig * self._dsigma(u)).to(dtype)

    @property
    def sigma_min(self) -> float:
        """sigma(0)."""
        return float(self._sigma(torch.zeros((), dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        """sigma(1) (may be inf)."""
        return float(self._sigma(torch.ones((), dtype=torch.float64)))

    def _eval(self, fn, t) -> Tensor:
        u, dtype = _f64(t)
        check_unit_interval(u)
        return fn(u).to(dtype)


class _VPScaled(Process):
    """A variance-preserving process: s = 1 / sqrt(1 + sigma^2), s' = -s^3 sigma sigma'."""

    def _scale(self, t):
        return torch.rsqrt(1 + self._sigma(t) ** 2)

    def _dscale(self, t):
        sig = self._sigma(t)
        return -torch.rsqrt(1 + sig**2) ** 3 * sig * self._dsigma(t)


class VPSchedule(str, enum.Enum):
    """Continuous-time VP schedules: linear beta (Song et al. 2021) and cosine (Nichol & Dhariwal 2021)."""

    LINEAR = "linear"
    COSINE = "cosine"


@dataclass(frozen=True)
class VP(_VPScaled):
    """Variance-preserving process.

    * ``linear``: beta(t) = beta_min + t (beta_max - beta_min), abar(t) = exp(-B(t)) with
      B(t) = beta_min t + (beta_max - beta_min) t^2 / 2; sigma^2 = expm1(B).
    * ``cosine``: abar(t) = cos^2(theta(t)) / cos^2(theta(0)), theta(t) = (t + s) / (1 + s) pi / 2;
      sigma(1) = inf (use a finite sigma_max when sampling).
    """

    schedule: VPSchedule = VPSchedule.LINEAR
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008

    def __post_init__(self):
        object.__setattr__(self, "schedule", VPSchedule(self.schedule))
        if not (0 < self.beta_min < self.beta_max):
            raise ValueError(f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        if not self.cosine_s > 0:
            raise ValueError(f"cosine_s must be > 0, got {self.cosine_s}")

    # linear-beta helpers
    def _B(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    # cosine helpers
    def _theta(self, t):
        return (t + self.cosine_s) / (1 + self.cosine_s) * (math.pi / 2)

    @property
    def _theta0(self):
        return self.cosine_s / (1 + self.cosine_s) * (math.pi / 2)

    def _sigma(self, t):
        if self.schedule is VPSchedule.LINEAR:
            return torch.sqrt(torch.expm1(self._B(t)))
        th, th0 = self._theta(t), self._theta0
        # sigma^2 = cos^2 th0 / cos^2 th - 1 = sin(th - th0) sin(th + th0) / cos^2 th (no cancellation)
        return torch.sqrt(torch.sin(th - th0) * torch.sin(th + th0)) / torch.cos(th)

    def _dsigma(self, t):
        sig = self._sigma(t)
        if self.schedule is VPSchedule.LINEAR:
            # d(sigma^2)/dt = beta e^B
            return self._beta(t) * torch.exp(self._B(t)) / (2 * sig)
        th = self._theta(t)
        dth = math.pi / (2 * (1 + self.cosine_s))
        # d(sigma^2)/dt = cos^2 th0 * 2 sec^2 th tan th * dth
        return math.cos(self._theta0) ** 2 * torch.tan(th) / torch.cos(th) ** 2 * dth / sig

    def _t_of_sigma(self, sigma):
        if self.schedule is VPSchedule.LINEAR:
            B = torch.log1p(sigma**2)
            d = self.beta_max - self.beta_min
            # root of d/2 t^2 + beta_min t - B = 0 in the cancellation-free form
            return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * B))
        th0 = self._theta0
        # tan^2 th = (sigma^2 + sin^2 th0) / cos^2 th0
        th = torch.atan(torch.sqrt(sigma**2 + math.sin(th0) ** 2) / math.cos(th0))
        return th / (math.pi / 2) * (1 + self.cosine_s) - self.cosine_s


@dataclass(frozen=True)
class SubVP(Process):
    """Sub-VP process (Song et al. 2021): x_t = sqrt(abar) x0 + (1 - abar) n, linear-beta abar.

    s = exp(-B/2), sigma = (1 - abar) / sqrt(abar) = 2 sinh(B/2).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        if not (0 < self.beta_min < self.beta_max):
            raise ValueError(f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")

    def _B(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _sigma(self, t):
        return 2 * torch.sinh(0.5 * self._B(t))

    def _dsigma(self, t):
        return torch.cosh(0.5 * self._B(t)) * (self.beta_min + t * (self.beta_max - self.beta_min))

    def _scale(self, t):
        return torch.exp(-0.5 * self._B(t))

    def _dscale(self, t):
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min)) * self._scale(t)

    def _t_of_sigma(self, sigma):
        B = 2 * torch.asinh(0.5 * sigma)
        d = self.beta_max - self.beta_min
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * B))


@dataclass(frozen=True)
class VE(Process):
    """Variance-exploding process (Song et al. 2021): sigma(t) = sigma_min (sigma_max / sigma_min)^t, s = 1."""

    sigma_lo: float = 0.01
    sigma_hi: float = 50.0

    def __post_init__(self):
        if not (0 < self.sigma_lo < self.sigma_hi < math.inf):
            raise ValueError(f"need 0 < sigma_lo < sigma_hi < inf, got {self.sigma_lo}, {self.sigma_hi}")

    @property
    def _log_ratio(self):
        return math.log(self.sigma_hi / self.sigma_lo)

    def _sigma(self, t):
        return self.sigma_lo * torch.exp(t * self._log_ratio)

    def _dsigma(self, t):
        return self._sigma(t) * self._log_ratio

    def _t_of_sigma(self, sigma):
        return torch.log(sigma / self.sigma_lo) / self._log_ratio


@dataclass(frozen=True)
class EDM(Process):
    """EDM process (Karras et al. 2022): s = 1 and sigma(t) is the rho-schedule
    sigma(t) = (a + t (b - a))^rho with a = sigma_lo^(1/rho), b = sigma_hi^(1/rho).

    EDM's *training* density over sigma (log-normal) is a loss choice, not part of the process.
    """

    sigma_lo: float = 0.002
    sigma_hi: float = 80.0
    rho: float = 7.0

    def __post_init__(self):
        if not (0 < self.sigma_lo < self.sigma_hi < math.inf):
            raise ValueError(f"need 0 < sigma_lo < sigma_hi < inf, got {self.sigma_lo}, {self.sigma_hi}")
        if not self.rho > 0:
            raise ValueError(f"rho must be > 0, got {self.rho}")

    @property
    def _ab(self):
        return self.sigma_lo ** (1 / self.rho), self.sigma_hi ** (1 / self.rho)

    def _sigma(self, t):
        a, b = self._ab
        return (a + t * (b - a)) ** self.rho

    def _dsigma(self, t):
        a, b = self._ab
        return self.rho * (b - a) * (a + t * (b - a)) ** (self.rho - 1)

    def _t_of_sigma(self, sigma):
        a, b = self._ab
        return (sigma ** (1 / self.rho) - a) / (b - a)


@dataclass(frozen=True)
class Flow(Process):
    """Linear-interpolant flow (rectified flow / flow matching): x_t = (1 - t) x0 + t n.

    s = 1 - t, sigma = t / (1 - t) (inf at t = 1). Flow-matching papers put data at t = 1 and
    noise at t = 0; convert their time with :meth:`import_time` / :meth:`export_time`, only at the
    boundary.
    """

    @staticmethod
    def import_time(t_fm) -> Tensor:
        """Flow-matching time (data at 1, noise at 0) -> this package's time (data at 0)."""
        u = as_tensor(t_fm)
        check_unit_interval(u, "flow-matching time")
        return 1 - u

    @staticmethod
    def export_time(t) -> Tensor:
        """This package's time -> flow-matching time (data at 1)."""
        u = as_tensor(t)
        check_unit_interval(u)
        return 1 - u

    def _sigma(self, t):
        return t / (1 - t)

    def _dsigma(self, t):
        return 1 / (1 - t) ** 2

    def _scale(self, t):
        return 1 - t

    def _dscale(self, t):
        return -torch.ones_like(t)

    def _t_of_sigma(self, sigma):
        # t = sigma / (1 + sigma), written to give exactly 1 at sigma = inf
        return 1 / (1 + 1 / sigma)


class DDPMSchedule(str, enum.Enum):
    """Beta schedules of discrete-time DDPM tables (names as diffusers uses them)."""

    LINEAR = "linear"  # Ho et al. 2020: beta from 1e-4 to 0.02
    SCALED_LINEAR = "scaled_linear"  # latent diffusion: sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012)
    COSINE = "cosine"  # Nichol & Dhariwal 2021 ("squaredcos_cap_v2"), betas capped at 0.999


def _ddpm_betas(schedule: DDPMSchedule, T: int, beta_start: float | None, beta_end: float | None):
    if schedule is DDPMSchedule.LINEAR:
        return torch.linspace(beta_start or 1e-4, beta_end or 0.02, T, dtype=torch.float64)
    if schedule is DDPMSchedule.SCALED_LINEAR:
        lo, hi = math.sqrt(beta_start or 0.00085), math.sqrt(beta_end or 0.012)
        return torch.linspace(lo, hi, T, dtype=torch.float64) ** 2

    u = torch.arange(T + 1, dtype=torch.float64) / T
    abar = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.clamp(1 - abar[1:] / abar[:-1], max=0.999)


@dataclass(frozen=True)
class DDPMTable(_VPScaled):
    """Discrete-time DDPM (Ho et al. 2020): a table of abar_k, k = 1..T, seen as a VP process.

    Integer step k (diffusers' 0-based ``timestep`` i = k - 1) sits at t = k / T with
    sigma_k = sqrt((1 - abar_k) / abar_k); t = 0 is clean data. Between steps, log sigma is
    interpolated linearly in t (sigma linearly on [0, 1/T]), as k-diffusion does, so a sampler can
    use any noise level and still hit every table entry exactly.
    """

    T: int = 1000
    schedule: DDPMSchedule = DDPMSchedule.LINEAR
    beta_start: float | None = None
    beta_end: float | None = None
    betas: Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: Tensor = field(init=False, repr=False, compare=False)
    sigmas: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not (isinstance(self.T, int) and self.T >= 2):
            raise ValueError(f"T must be an integer >= 2, got {self.T!r}")
        object.__setattr__(self, "schedule", DDPMSchedule(self.schedule))
        betas = _ddpm_betas(self.schedule, self.T, self.beta_start, self.beta_end)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1); got range [{betas.min().item()}, {betas.max().item()}]")
        abar = torch.cumprod(1 - betas, 0)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", abar)
        object.__setattr__(self, "sigmas", torch.sqrt((1 - abar) / abar))

    def _u_parts(self, t):
        u = t * self.T  # continuous step index, knots at 1..T
        k = torch.clamp(torch.floor(u), 1, self.T - 1).long()  # interval [k, k+1]
        return u, k

    def _sigma(self, t):
        u, k = self._u_parts(t)
        ls = torch.log(self.sigmas.to(t.device))
        lo, hi = ls[k - 1], ls[k]
        inner = torch.exp(lo + (u - k) * (hi - lo))
        return torch.where(u < 1, u * self.sigmas[0].to(t.device), inner)

    def _dsigma(self, t):
        u, k = self._u_parts(t)
        ls = torch.log(self.sigmas.to(t.device))
        slope = (ls[k] - ls[k - 1]) * self.T
        return torch.where(u < 1, self.sigmas[0].to(t.device) * self.T, self._sigma(t) * slope)

    def _t_of_sigma(self, sigma):
        sig = self.sigmas.to(sigma.device)
        ls = torch.log(sig)
        lsig = torch.log(sigma.clamp_min(1e-300))
        k = torch.clamp(torch.searchsorted(ls, lsig.contiguous(), right=True), 1, self.T - 1)
        u_inner = k + (lsig - ls[k - 1]) / (ls[k] - ls[k - 1])
        u = torch.where(sigma < sig[0], sigma / sig[0], u_inner)
        return u / self.T

    def timestep(self, sigma) -> Tensor:
        """The (fractional) diffusers-style 0-based timestep index of noise level ``sigma``."""
        return self.t_of_sigma(sigma) * self.T - 1

    def sigma_at(self, timestep) -> Tensor:
        """Noise level of a (possibly fractional) 0-based timestep index in [-1, T - 1]."""
        i = as_tensor(timestep)
        return self.sigma((i.to(torch.float64) + 1) / self.T)


def posterior_coefs(sigma_t: Tensor, sigma_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian posterior q(x_hat_s | x_hat_t, x0) for sigma_s < sigma_t, in scale-free coordinates.

    Since x_hat_t = x_hat_s + sqrt(sigma_t^2 - sigma_s^2) z, the posterior is
    N(r x_hat_t + (1 - r) x0, sigma_s^2 (1 - r)) with r = sigma_s^2 / sigma_t^2. Returns
    (coefficient of x_hat_t, coefficient of x0, variance); in a VP process's own coordinates
    multiply the mean by s(t_s) and the variance by s(t_s)^2 (DDPM's posterior, Ho et al. 2020 eq. 7).
    sigma_s = 0 gives (0, 1, 0).
    """
    r = (sigma_s / sigma_t) ** 2
    return r, 1 - r, sigma_s**2 * (1 - r)


# --------------------------------------------------------------------------- grids


def _check_grid_args(steps: int, sigma_min: float, sigma_max: float) -> None:
    if not (isinstance(steps, (int, np.integer)) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _finish(sig: Tensor, device) -> Tensor:
    return torch.cat([sig, sig.new_zeros(1)]).to(device)


def karras_grid(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, device=None) -> Tensor:
    """Karras et al. 2022 eq. 5: sigma_i = (b + i/(N-1) (a - b))^rho, a = sigma_min^(1/rho), b = sigma_max^(1/rho).

    Returns (steps + 1,) float64, decreasing, last entry 0.
    """
    _check_grid_args(steps, sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if steps == 1:
        return _finish(torch.tensor([sigma_max], dtype=torch.float64), device)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    a, b = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((b + ramp * (a - b)) ** rho, device)


def logsnr_grid(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, device=None) -> Tensor:
    """Uniform in log-SNR (equivalently in log sigma) from sigma_max to sigma_min, then 0."""
    _check_grid_args(steps, sigma_min, sigma_max)
    if steps == 1:
        return _finish(torch.tensor([sigma_max], dtype=torch.float64), device)
    ls = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64)
    return _finish(torch.exp(ls), device)


def time_grid(process: Process, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, device=None) -> Tensor:
    """Uniform in the process's time t, from t(sigma_max) down to t(sigma_min), then 0."""
    _check_grid_args(steps, sigma_min, sigma_max)
    t_hi = process.t_of_sigma(torch.tensor(sigma_max, dtype=torch.float64))
    t_lo = process.t_of_sigma(torch.tensor(sigma_min, dtype=torch.float64))
    if not (0 <= float(t_lo) < float(t_hi) <= 1):
        raise ValueError(
            f"sigma range [{sigma_min}, {sigma_max}] maps to t in [{float(t_lo)}, {float(t_hi)}], "
            f"outside [0, 1] for {process!r}"
        )
    if steps == 1:
        return _finish(torch.tensor([sigma_max], dtype=torch.float64), device)
    ts = torch.linspace(float(t_hi), float(t_lo), steps, dtype=torch.float64)
    return _finish(process.sigma(ts), device)


class Spacing(str, enum.Enum):
    """Integer-timestep spacings of DDPM/DDIM samplers (Lin et al. 2024, Table 2; diffusers' names)."""

    LEADING = "leading"
    TRAILING = "trailing"
    LINSPACE = "linspace"


def timesteps_of(process: DDPMTable, steps: int, spacing: Spacing | str = Spacing.LEADING, offset: int = 0) -> Tensor:
    """The decreasing integer timestep indices (0-based, as in diffusers) that a DDPM/DDIM user picks."""
    spacing = Spacing(spacing)
    T = process.T
    if not (isinstance(steps, (int, np.integer)) and 1 <= steps <= T):
        raise ValueError(f"steps must be an integer in [1, {T}], got {steps!r}")
    if spacing is Spacing.LINSPACE:
        ts = np.linspace(0, T - 1, steps).round()[::-1].copy()
    elif spacing is Spacing.LEADING:
        ts = (np.arange(0, steps) * (T // steps)).round()[::-1].copy() + offset
    else:
        ts = np.round(np.arange(T, 0, -T / steps)) - 1
    if ts.max() > T - 1 or ts.min() < 0:
        raise ValueError(f"offset {offset} pushes timesteps outside [0, {T - 1}]")
    return torch.from_numpy(ts.astype(np.int64))


def timestep_grid(
    process: DDPMTable, steps: int, spacing: Spacing | str = Spacing.LEADING, offset: int = 0, device=None
) -> Tensor:
    """Noise levels at the integer timesteps of :func:`timesteps_of`, then 0 (DDIM's final abar = 1).

    A sampler run on this grid evaluates the model exactly at table entries.
    """
    if not isinstance(process, DDPMTable):
        raise TypeError(f"timestep_grid needs a DDPMTable process, got {process!r}")
    ts = timesteps_of(process, steps, spacing, offset)
    return _finish(process.sigmas[ts], device)
