"""Weighted denoising losses: one form for every parameterization, noise density and weighting.

Notation as in :mod:`diffusionlens.processes`: x_hat = x0 + sigma n, x_t = s x_hat, log-SNR
lambda = -2 log sigma, t in [0, 1] with t = 0 clean. A loss is three independent choices
(Kingma & Gao 2023, "Understanding diffusion objectives"):

1. the **parameterization** ``param`` (what the network outputs; :mod:`diffusionlens.parameterization`
   supplies the target and the exact conversion, nothing is re-derived here);
2. the **density** of noise levels at training time, a small frozen value carrying its parameters:
   :class:`Uniform` in the process's t, EDM's :class:`LogNormal` (ln sigma ~ N(p_mean, p_std^2)), or
   :class:`LogitNormal` t (SD3, Esser et al. 2024); each truncated exactly to [t_min, t_max] and drawn
   by inverse CDF from one uniform number per sample;
3. the **weighting** of the squared error (:class:`TargetWeight`, :class:`MinSNR`, :class:`ELBOWeight`,
   :class:`Sigmoid`, :class:`EDMWeight`); the enums :class:`Density` and :class:`Weighting` name the kinds.

Per sample (shapes: x0 (batch, *data_shape), everything else (batch,)) the loss is

    loss_i = w(t_i) * mean_over_dims (out_i - target_i)^2

with ``out`` the network output and ``target = parameterization.target(...)``. Because every
conversion is affine in D, ||out - target||^2 = x0_weight(param) ||D - x0||^2, so each weighting is
defined by the factor ``u(t)`` it puts on the x0 error ||D - x0||^2 and then
w = u / parameterization.x0_weight(param):

===============  =======================================================================================
weighting        u(t): weight of mean ||D - x0||^2 per sample drawn at density p(lambda)
===============  =======================================================================================
``target``       x0_weight(param): plain MSE on the network's own target (eps -> SNR, v -> SNR + 1,
                 x0 -> 1, EDM -> 1/c_out^2, flow velocity -> (s sigma'/sigma)^2 = 1/t^2)
``min-snr``      min(SNR, gamma), SNR = e^lambda (Hang et al. 2023, "min-SNR-gamma")
``elbo``         e^lambda / (2 p(lambda)): the diffusion term of the continuous-time VDM bound
                 (Kingma et al. 2021, eq. 17 with -d lambda/dt taken from the process), importance-
                 weighted by the sampling density, so its mean is that bound in nats per dimension
                 whatever the density (up to the prior and reconstruction terms)
``sigmoid``      sigmoid(bias - lambda) e^lambda / (2 p(lambda)) (Kingma & Gao 2023, sigmoid weighting)
``edm``          1 / c_out^2 = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022, eq. 8)
===============  =======================================================================================

:meth:`Loss.implied_weighting` returns the resulting weighting over lambda in Kingma & Gao's eps form,
w(lambda) = p(lambda) u(lambda) e^{-lambda}, which for ``target`` equals
:func:`diffusionlens.parameterization.implied_weighting`.

Recipes: :func:`edm_loss`, :func:`ddpm_loss`, :func:`vdm_loss`, :func:`min_snr_loss` and
:func:`flow_matching_loss` (flow matching / rectified flow = the :class:`~diffusionlens.processes.Flow`
process with the velocity target n - x0 in this package's time direction, data at t = 0, and
uniform or logit-normal t). The model passed to a loss may be a
:class:`~diffusionlens.model.Denoiser` (the raw network output is regressed, no round trip) or
any canonical denoiser ``D(x_hat, sigma, **cond)`` such as the oracle (its output is converted
to the target space with ``from_denoiser``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ._util import Choice, expand
from .model import Denoiser
from .parameterization import Param, edm_precond, from_denoiser, target, x0_weight
from .processes import EDM, VP, Coefs, Flow, Process

__all__ = [
    "Density",
    "Weighting",
    "Uniform",
    "LogNormal",
    "LogitNormal",
    "TargetWeight",
    "MinSNR",
    "ELBOWeight",
    "Sigmoid",
    "EDMWeight",
    "parse_density",
    "parse_weighting",
    "predict",
    "Loss",
    "edm_loss",
    "ddpm_loss",
    "vdm_loss",
    "min_snr_loss",
    "flow_matching_loss",
]



class Density(Choice, what="noise density"):
    """Kinds of training densities over noise levels (the values below carry their parameters)."""

    UNIFORM = "uniform"  # t ~ U[t_min, t_max] of the process
    LOGNORMAL = "lognormal"  # ln sigma ~ N(p_mean, p_std^2), EDM
    LOGIT_NORMAL = "logit-normal"  # logit t ~ N(mean, std^2), SD3 / rectified flow


class Weighting(Choice, what="loss weighting"):
    """Kinds of weightings of the squared error (see the module table)."""

    TARGET = "target"
    MIN_SNR = "min-snr"
    ELBO = "elbo"
    SIGMOID = "sigmoid"
    EDM = "edm"


def _std_normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)


class _Value:
    """A small frozen choice with its own parameters: JSON form {"kind": ..., **params}, readable str.

    Every parameter is a finite number, checked on construction; those named in ``positive`` must be > 0.
    """

    kind: ClassVar[Choice]
    positive: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for f in dataclasses.fields(self):
            self._need(f.name, f.name in self.positive)

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, **self.params()}

    def __str__(self) -> str:
        p = ", ".join(f"{k}={v:g}" for k, v in self.params().items())
        return f"{self.kind.value}({p})" if p else self.kind.value

    def _need(self, name: str, positive: bool) -> None:
        v = getattr(self, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        if not ok:
            what = "a finite number > 0" if positive else "a finite number"
            raise ValueError(f"{self.kind.value} {name} must be {what}, got {v!r}")


@dataclass(frozen=True)
class Uniform(_Value):
    """t ~ U[t_min, t_max] in the process's own time."""

    kind: ClassVar[Choice] = Density.UNIFORM


@dataclass(frozen=True)
class LogNormal(_Value):
    """ln sigma ~ N(p_mean, p_std^2) truncated to the support (Karras et al. 2022)."""

    p_mean: float = -1.2
    p_std: float = 1.2
    kind: ClassVar[Choice] = Density.LOGNORMAL
    positive: ClassVar[tuple[str, ...]] = ("p_std",)


@dataclass(frozen=True)
class LogitNormal(_Value):
    """logit t ~ N(mean, std^2) truncated to the support (Esser et al. 2024)."""

    mean: float = 0.0
    std: float = 1.0
    kind: ClassVar[Choice] = Density.LOGIT_NORMAL
    positive: ClassVar[tuple[str, ...]] = ("std",)


@dataclass(frozen=True)
class TargetWeight(_Value):
    """Plain MSE on the network's own target."""

    kind: ClassVar[Choice] = Weighting.TARGET


@dataclass(frozen=True)
class MinSNR(_Value):
    """min(SNR, gamma) on the x0 error (Hang et al. 2023)."""

    gamma: float = 5.0
    kind: ClassVar[Choice] = Weighting.MIN_SNR
    positive: ClassVar[tuple[str, ...]] = ("gamma",)


@dataclass(frozen=True)
class ELBOWeight(_Value):
    """The continuous-time ELBO's weighting, importance-weighted by the density (Kingma et al. 2021)."""

    kind: ClassVar[Choice] = Weighting.ELBO


@dataclass(frozen=True)
class Sigmoid(_Value):
    """sigmoid(bias - lambda) times the ELBO weighting (Kingma & Gao 2023)."""

    bias: float = 2.0
    kind: ClassVar[Choice] = Weighting.SIGMOID


@dataclass(frozen=True)
class EDMWeight(_Value):
    """1 / c_out^2 on the x0 error (Karras et al. 2022, eq. 8)."""

    kind: ClassVar[Choice] = Weighting.EDM


DENSITIES = {v.kind: v for v in (Uniform, LogNormal, LogitNormal)}
WEIGHTINGS = {v.kind: v for v in (TargetWeight, MinSNR, ELBOWeight, Sigmoid, EDMWeight)}
NoiseDensity = Uniform | LogNormal | LogitNormal
LossWeighting = TargetWeight | MinSNR | ELBOWeight | Sigmoid | EDMWeight


def _parse_value(value, kinds: type[Choice], table: dict):
    if isinstance(value, tuple(table.values())):
        return value
    if isinstance(value, dict):
        params = dict(value)
        cls = table[kinds.parse(params.pop("kind", None))]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} of {kinds._what} {cls.kind.value!r}; known: "
                             f"{sorted(names)}")
        return cls(**params)
    if isinstance(value, (str, Choice)):
        return table[kinds.parse(value)]()
    raise TypeError(f"{kinds._what} must be a name, a dict with a 'kind' or a value such as "
                    f"{table[next(iter(table))]()!r}, got {value!r}")


def parse_density(value) -> NoiseDensity:
    """A noise density from a value, a kind name (default parameters) or its JSON dict."""
    return _parse_value(value, Density, DENSITIES)


def parse_weighting(value) -> LossWeighting:
    """A loss weighting from a value, a kind name (default parameters) or its JSON dict."""
    return _parse_value(value, Weighting, WEIGHTINGS)


def predict(model, param: Param, x_hat: Tensor, c: Coefs, sigma_data: float, **cond) -> Tensor:
    """The model's prediction in the space of ``param`` at (x_hat, c.sigma), shaped like x_hat.

    The one place where a loss looks inside a model: a :class:`~diffusionlens.model.Denoiser` is
    asked for its network's raw output (regressed directly, no round trip through D, and through the
    wrapped module so that a DDP wrapper syncs its gradients); any other canonical denoiser's D is
    converted with ``from_denoiser``.
    """
    if isinstance(model, Denoiser):
        x_in, net_cond, _ = model.network_inputs(x_hat, c.sigma)
        return model.net(x_in, net_cond, **cond)
    return from_denoiser(param, model(x_hat, c.sigma, **cond), x_hat, c, sigma_data)


def check_sigma_data(v) -> None:
    """sigma_data enters squared and inverted in float32: keep it where both stay finite."""
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 1e-15 < v < 1e15):
        raise ValueError(f"sigma_data must be a number in (1e-15, 1e15), got {v!r}")


@dataclass(frozen=True)
class Loss:
    """A weighted denoising loss (see the module docstring).

    Args:
        process: the noise process (fixes s(t), sigma(t) and the network's input scale).
        param: what the network outputs.
        density: density of training noise levels (:class:`LogNormal`, :class:`LogitNormal`,
            :class:`Uniform`, or a kind name for its default parameters).
        weighting: weighting of the squared error (:class:`EDMWeight`, :class:`MinSNR`, ...).
        sigma_data: data std for EDM preconditioning and the EDM weighting.
        t_min, t_max: support of the noise levels in the process's time; sigma(t_min) must be > 0
            and sigma(t_max) finite.
    """

    process: Process = EDM()
    param: Param = Param.EDM
    density: NoiseDensity = LogNormal()
    weighting: LossWeighting = EDMWeight()
    sigma_data: float = 0.5
    t_min: float = 1e-4
    t_max: float = 1 - 1e-4

    def __post_init__(self):
        if not isinstance(self.process, Process):
            raise TypeError(f"process must be a diffusionlens Process, got {self.process!r}")
        object.__setattr__(self, "param", Param.parse(self.param))
        object.__setattr__(self, "density", parse_density(self.density))
        object.__setattr__(self, "weighting", parse_weighting(self.weighting))
        check_sigma_data(self.sigma_data)
        if not (0 <= self.t_min < self.t_max <= 1):
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        lo, hi = self.sigma_range
        if not (lo > 0 and math.isfinite(hi)):
            raise ValueError(
                f"noise levels sigma(t) for t in [{self.t_min}, {self.t_max}] span [{lo}, {hi}] for "
                f"{self.process!r}; choose t_min with sigma > 0 and t_max with finite sigma"
            )
        if isinstance(self.density, LogitNormal) and self.t_min == 0:
            raise ValueError("the logit-normal density needs t_min > 0")

    # ------------------------------------------------------------------ noise levels
    @property
    def sigma_range(self) -> tuple[float, float]:
        """(sigma(t_min), sigma(t_max))."""
        s = self.process.sigma(torch.tensor([self.t_min, self.t_max], dtype=torch.float64))
        return float(s[0]), float(s[1])

    def _bounds(self) -> tuple[float, float, float, float]:
        """(mean, std, lower, upper) of the underlying normal of a truncated density."""
        d = self.density
        if isinstance(d, LogNormal):
            lo, hi = self.sigma_range
            return d.p_mean, d.p_std, math.log(lo), math.log(hi)
        return d.mean, d.std, math.log(self.t_min / (1 - self.t_min)), (
            math.log(self.t_max / (1 - self.t_max)) if self.t_max < 1 else math.inf
        )

    def t_from_uniform(self, u: Tensor) -> Tensor:
        """Map u in [0, 1] (any shape) to noise times t distributed at the loss's density (float64)."""
        u = u.to(torch.float64)
        if isinstance(self.density, Uniform):
            return self.t_min + u * (self.t_max - self.t_min)
        m, s, a, b = self._bounds()
        Fa = torch.special.ndtr(torch.tensor((a - m) / s, dtype=torch.float64))
        Fb = torch.special.ndtr(torch.tensor((b - m) / s, dtype=torch.float64))
        # keep the draw strictly inside (Fa, Fb) so ndtri stays finite
        p = (Fa + u * (Fb - Fa)).clamp(min=float(Fa), max=float(Fb))
        z = (m + s * torch.special.ndtri(p)).clamp(min=a, max=b)
        if isinstance(self.density, LogNormal):
            t = self.process.t_of_sigma(torch.exp(z))
        else:
            t = torch.sigmoid(z)
        return t.clamp(self.t_min, self.t_max)

    def sample_t(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """n noise times (n,) float64 drawn at the loss's density with ``generator``."""
        gdev = generator.device if generator is not None else device
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=gdev)
        return self.t_from_uniform(u).to(device or gdev)

    def logsnr_density(self, t: Tensor) -> Tensor:
        """p(lambda) at the log-SNRs of times t: the density, over lambda, of the training draws."""
        t = t.to(torch.float64)
        if isinstance(self.density, LogNormal):
            m, s, a, b = self._bounds()
            z = (torch.log(self.process.sigma(t)) - m) / s
            Z = math.erf((b - m) / (s * math.sqrt(2))) / 2 - math.erf((a - m) / (s * math.sqrt(2))) / 2
            return _std_normal_pdf(z) / (2 * s * Z)  # lambda = -2 ln sigma
        if isinstance(self.density, Uniform):
            p_t = torch.full_like(t, 1.0 / (self.t_max - self.t_min))
        else:
            m, s, a, b = self._bounds()
            Z = 0.5 * (math.erf((b - m) / (s * math.sqrt(2))) - math.erf((a - m) / (s * math.sqrt(2))))
            z = (torch.log(t / (1 - t)) - m) / s
            p_t = _std_normal_pdf(z) / (s * Z * t * (1 - t))
        return p_t / self.process.dlogsnr(t).abs()

    # ------------------------------------------------------------------ weights
    def x0_space_weight(self, c: Coefs, t: Tensor | None = None) -> Tensor:
        """u(t): the factor on mean ||D - x0||^2 of one sample drawn at time ``c.t`` (batch,)."""
        w = self.weighting
        sig = c.sigma
        if isinstance(w, TargetWeight):
            return x0_weight(self.param, c, self.sigma_data)
        if isinstance(w, MinSNR):
            return torch.clamp(sig**-2, max=w.gamma)
        if isinstance(w, EDMWeight):
            return edm_precond(sig, self.sigma_data)[1] ** -2
        snr = sig**-2
        p = self.logsnr_density(c.t).to(sig.dtype)
        if isinstance(w, ELBOWeight):
            return 0.5 * snr / p
        return 0.5 * torch.sigmoid(w.bias + 2 * torch.log(sig)) * snr / p  # sigmoid(b - lambda)

    def target_weight(self, c: Coefs) -> Tensor:
        """w(t): the factor on mean ||out - target||^2 (batch,)."""
        return self.x0_space_weight(c) / x0_weight(self.param, c, self.sigma_data)

    def implied_weighting(self, t: Tensor, normalize: bool = False) -> Tensor:
        """Kingma & Gao's w(lambda) = p(lambda) u(lambda) e^{-lambda} at times t (eps-MSE form, per unit lambda).

        For ``weighting="target"`` this is :func:`diffusionlens.parameterization.implied_weighting`;
        for ``elbo`` it is 1/2 whatever the density.
        """
        c = self.process.coefs(t.to(torch.float64))
        w = self.logsnr_density(c.t) * self.x0_space_weight(c) * c.sigma**2
        return w / w.max() if normalize else w

    # ------------------------------------------------------------------ the loss
    def __call__(
        self,
        model,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        **cond,
    ) -> Tensor:
        """Per-sample losses (batch,) of ``model`` on clean data x0 (batch, *data_shape).

        ``t`` (batch,) and ``noise`` (like x0) are drawn with ``generator`` unless given.
        Raises ValueError on a non-finite batch, FloatingPointError naming sigma where the loss is non-finite.
        """
        if not x0.is_floating_point():
            raise TypeError(f"x0 must be a floating-point tensor, got {x0.dtype}")
        if x0.ndim < 2 or x0.shape[0] == 0:
            raise ValueError(f"x0 must have shape (batch, *data_shape) with batch >= 1, got {tuple(x0.shape)}")
        if not bool(torch.isfinite(x0).all()):
            raise ValueError("the data batch contains a non-finite value (NaN or inf)")
        if isinstance(model, Denoiser) and (model.process != self.process or model.param is not self.param):
            raise ValueError(
                f"the model was built for ({model.process!r}, {model.param.value}) but the loss uses "
                f"({self.process!r}, {self.param.value})"
            )
        if t is None:
            t = self.sample_t(x0.shape[0], generator, device=x0.device)
        if noise is None:
            gdev = generator.device if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gdev).to(x0.device)
        if t.shape != (x0.shape[0],) or noise.shape != x0.shape:
            raise ValueError(f"t must be (batch,) and noise like x0; got {tuple(t.shape)}, {tuple(noise.shape)}")
        c64 = self.process.coefs(t.to(torch.float64))
        w = self.target_weight(c64).to(x0.dtype)
        c = Coefs(*(v.to(device=x0.device, dtype=x0.dtype) for v in (c64.t, c64.sigma, c64.scale, c64.dsigma,
                                                                      c64.dscale)))
        x_hat = x0 + expand(c.sigma, x0) * noise
        tgt = target(self.param, x0, noise, c, self.sigma_data)
        out = predict(model, self.param, x_hat, c, self.sigma_data, **cond)
        if out.shape != x0.shape:
            raise ValueError(f"model output shape {tuple(out.shape)} differs from data shape {tuple(x0.shape)}")
        loss = w * (out - tgt).pow(2).flatten(1).mean(1)
        bad = ~torch.isfinite(loss)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            sig, ti = c.sigma[i].item(), c.t[i].item()
            raise FloatingPointError(f"non-finite loss {loss[i].item()} at sigma={sig:.6g} (t={ti:.6g})")
        return loss


# ---------------------------------------------------------------------- recipes


def edm_loss(sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2) -> Loss:
    """Karras et al. 2022: EDM process and preconditioning, log-normal sigma, lambda(sigma) = 1/c_out^2."""
    return Loss(EDM(), Param.EDM, LogNormal(p_mean, p_std), EDMWeight(), sigma_data=sigma_data)


def ddpm_loss(schedule: str = "linear", param: Param | str = Param.EPS) -> Loss:
    """Ho et al. 2020 (``eps``) / Salimans & Ho 2022 (``v``): VP process, uniform t, plain MSE on the target."""
    return Loss(VP(schedule), Param.parse(param), Uniform(), TargetWeight())


def vdm_loss(schedule: str = "linear") -> Loss:
    """Kingma et al. 2021: eps prediction, uniform t, the continuous-time ELBO weighting."""
    return Loss(VP(schedule), Param.EPS, Uniform(), ELBOWeight())


def min_snr_loss(param: Param | str = Param.V, gamma: float = 5.0, schedule: str = "cosine") -> Loss:
    """Hang et al. 2023: min(SNR, gamma) on the x0 error, uniform t on a VP process."""
    return Loss(VP(schedule), Param.parse(param), Uniform(), MinSNR(gamma))


def flow_matching_loss(
    density: Density | str = Density.UNIFORM, logit_mean: float = 0.0, logit_std: float = 1.0
) -> Loss:
    """Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): Flow process, velocity
    target n - x0 (this package's time: data at t = 0), uniform or logit-normal t (Esser et al. 2024)."""
    kind = Density.parse(density)
    value = LogitNormal(logit_mean, logit_std) if kind is Density.LOGIT_NORMAL else parse_density(kind)
    return Loss(Flow(), Param.VELOCITY, value, TargetWeight())
