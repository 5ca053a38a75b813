"""The evidence lower bound of the latent-variable view: discrete-time DDPM and continuous-time VDM.

Conventions (``docs/notation.md``): x_hat = x0 + sigma n, canonical denoiser D(x_hat, sigma);
a T-step chain has noise levels 0 = sigma_0 < sigma_1 < ... < sigma_T and scales s_k (s_0 = 1).
KL divergences are invariant under the invertible map x_k = s_k x_hat_k, so every term is computed
in scale-free coordinates; the scales only enter the "large" posterior variance (DDPM's beta_k).
All results are negative ELBOs (upper bounds on -log p, "VLB") in nats; ``elbo = -total``.

Discrete time (Ho et al. 2020 eq. 5; Sohl-Dickstein et al. 2015)::

    VLB = L_T + sum_{k=2}^T L_{k-1} + L_0
    L_T     = KL(q(x_T | x0) || N(0, prior_var I))                                   closed form
    L_{k-1} = E_q KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k))                        Monte Carlo over x_k
    L_0     = E_q[-log p(x0 | x_1)]                                                    Monte Carlo over x_1

q(x_hat_{k-1} | x_hat_k, x0) = N(r x_hat_k + (1 - r) x0, sigma_{k-1}^2 (1 - r)), r = sigma_{k-1}^2 / sigma_k^2
(:func:`diffusionlens.processes.posterior_coefs`); the model replaces x0 by D(x_hat_k, sigma_k) and
uses either the same variance ("small", beta-tilde) or the forward step's, read in x_{k-1}
coordinates: beta_k / s_{k-1}^2 = (s_k / s_{k-1})^2 (sigma_k^2 - sigma_{k-1}^2) ("large", beta;
for a DDPM table beta_k = 1 - abar_k / abar_{k-1} exactly). With the small choice
L_{k-1} = (SNR_{k-1} - SNR_k) / 2 * ||x0 - D||^2, SNR = 1 / sigma^2.

The decoder p(x0 | x_1) has mean D(x_hat_1, sigma_1) and variance ``decoder_var`` (default: beta_1 =
s_1^2 sigma_1^2 for "large", improved-DDPM's clipped beta-tilde_2 = s_1^2 sigma_1^2 (1 - sigma_1^2 /
sigma_2^2) for "small"): a Gaussian density for continuous data, or the discretized Gaussian of
Ho et al. 2020 (sec. 3.3) for 8-bit data, the probability of the data's bin with the outer edges
at -inf / +inf, which makes the bound a bound on the discrete log-probability (no dequantization).

Continuous time (Kingma et al. 2021, eq. 17 in x-prediction form): as T -> infinity with fixed
end points sigma_min = sigma_1 and sigma_max = sigma_T, the sum of KL terms tends to

    L_inf = -1/2 int_0^1 SNR'(t) E||x0 - D(x_hat_t, sigma_t)||^2 dt
          = int_{sigma_min}^{sigma_max} E||x0 - D(x_hat, sigma)||^2 / sigma^3 dsigma,

which depends on the schedule only through its end points. The estimator draws log sigma at a density
shaped like the integrand (importance sampling; or t uniformly on a given schedule with weight
sigma'(t) / sigma(t)^3), stratified per sample (VDM's low-discrepancy sampler), with antithetic noise
pairs (n, -n) and a control variate, in independent rounds until a target standard error
(:func:`vdm_vlb`); the sampling changes the variance, never the mean.
With the exact denoiser E||x0 - D||^2 increases with sigma, so the right-endpoint sums of the
discrete bound exceed L_inf: the discrete VLB falls towards the continuous one as T grows.

Shapes: ``x0`` (batch, *data_shape); per-sample results (batch,), per-timestep terms (batch, T + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._util import Choice, as_tensor, expand
from ..processes import DDPMTable, Process, posterior_coefs
from .bpd import Binning, bin_centers, bin_width

__all__ = [
    "PosteriorVar",
    "Decoder",
    "VLB",
    "ContinuousVLB",
    "ddpm_vlb",
    "vdm_vlb",
    "gaussian_kl",
    "decoder_nll",
    "prior_kl",
]


class PosteriorVar(Choice, what="posterior variance"):
    """Reverse-step variance of the model: beta-tilde ("small") or beta ("large") (Ho et al. 2020, sec. 3.2)."""

    SMALL = "small"
    LARGE = "large"


class Decoder(Choice, what="decoder"):
    """The decoder p(x0 | x_1): Gaussian density (continuous data) or discretized Gaussian (8-bit data)."""

    GAUSSIAN = "gaussian"
    DISCRETIZED = "discretized"


@dataclass(frozen=True)
class VLB:
    """Discrete-time variational bound (nats, per sample).

    Attributes:
        terms: (batch, T + 1); column j is L_j: column 0 the decoder NLL L_0, columns 1..T-1 the KL
            terms L_{k-1} at steps k = 2..T, column T the prior KL L_T.
        stderr_terms: (batch, T + 1) Monte Carlo standard errors (0 for the closed-form prior; inf
            with one sample).
        total: (batch,) the bound on -log p(x0).
        stderr: (batch,) its Monte Carlo standard error.
        bpd: (batch,) total / (d ln 2). For the discretized decoder these are bits per dimension of the
            discrete data; for the Gaussian decoder they are of a continuous density (no offset).
        sigmas: (T,) the noise levels sigma_1..sigma_T used.
    """

    terms: Tensor
    stderr_terms: Tensor
    total: Tensor
    stderr: Tensor
    bpd: Tensor
    sigmas: Tensor

    @property
    def elbo(self) -> Tensor:
        return -self.total


@dataclass(frozen=True)
class ContinuousVLB:
    """Continuous-time (VDM) bound, nats per sample: ``total = prior + diffusion + decoder``."""

    prior: Tensor
    diffusion: Tensor
    decoder: Tensor
    total: Tensor
    stderr: Tensor
    bpd: Tensor
    draws: int = 0
    """(t, n) draws per data point of the diffusion term (all rounds)."""

    @property
    def elbo(self) -> Tensor:
        return -self.total


# ------------------------------------------------------------------------------------------- pieces


def gaussian_kl(mean_diff_sq: Tensor, var_q, var_p, d: int) -> Tensor:
    """KL(N(m_q, var_q I) || N(m_p, var_p I)) in d dimensions given ||m_q - m_p||^2 (batch,)."""
    ratio = var_q / var_p
    return 0.5 * (d * (ratio - 1 - torch.log(ratio)) + mean_diff_sq / var_p)


def prior_kl(x0: Tensor, sigma_max: float, prior_var: float) -> Tensor:
    """KL(N(x0, sigma_max^2 I) || N(0, prior_var I)) per sample (batch,), float64."""
    x = x0.flatten(1).double()
    var_q = torch.tensor(float(sigma_max) ** 2, dtype=torch.float64, device=x.device)
    return gaussian_kl(x.pow(2).sum(1), var_q, torch.tensor(float(prior_var), dtype=torch.float64), x.shape[1])


def _log_prob_bin(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi (either may be infinite), accurate in both tails."""
    # in the upper tail use Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi), so the larger term is never ~1
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    lb, la = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return lb + torch.log1p(-torch.exp(torch.clamp(la - lb, max=0.0)))


def decoder_nll(
    x0: Tensor,
    mean: Tensor,
    var,
    decoder: Decoder | str = Decoder.GAUSSIAN,
    *,
    levels: int = 256,
    binning: Binning | str = Binning.CENTERED,
) -> Tensor:
    """-log p(x0 | mean, var) per sample (batch,), float64: Gaussian density or discretized Gaussian.

    ``var`` is a float or (batch,). For the discretized decoder ``x0`` must lie on the bin centers of
    ``levels``/``binning`` (:mod:`.bpd`); the lowest and highest bins extend to -inf and +inf.
    """
    decoder = Decoder.parse(decoder)
    x = x0.flatten(1).double()
    m = mean.flatten(1).double()
    v = as_tensor(var, like=x).reshape(-1, 1) if as_tensor(var).ndim else as_tensor(var, like=x)
    if bool((v <= 0).any()):
        raise ValueError(f"decoder variance must be > 0, got {v.min().item()}")
    if decoder is Decoder.GAUSSIAN:
        v = v.expand_as(x)
        return 0.5 * (((x - m) ** 2 / v) + torch.log(2 * math.pi * v)).sum(1)
    delta = bin_width(levels, binning)
    lo_c = float(bin_centers(torch.tensor([0]), levels, binning))
    k = torch.round((x - lo_c) / delta)
    if bool((k < 0).any() or (k > levels - 1).any()) or bool(((lo_c + k * delta - x).abs() > 1e-4 * delta).any()):
        raise ValueError(
            f"discretized decoder needs x0 on the {levels}-level {Binning.parse(binning).value} grid of [-1, 1]; "
            "map integer data with diffusionlens.likelihood.bpd.bin_centers"
        )
    sd = v.sqrt()
    lo = torch.where(k == 0, torch.full_like(x, -math.inf), (x - 0.5 * delta - m) / sd)
    hi = torch.where(k == levels - 1, torch.full_like(x, math.inf), (x + 0.5 * delta - m) / sd)
    return -_log_prob_bin(lo, hi).sum(1)


def _chain(sigmas, process, scales, device):
    """(sigmas (T,), scales (T,)) float64 from the arguments of :func:`ddpm_vlb`."""
    if sigmas is None:
        if not isinstance(process, DDPMTable):
            raise ValueError("give sigmas (T,) or a DDPMTable process")
        sig = process.sigmas.to(torch.float64)
        sc = torch.sqrt(process.alphas_cumprod.to(torch.float64))
    else:
        sig = as_tensor(sigmas, dtype=torch.float64).flatten()
        if scales is not None:
            sc = as_tensor(scales, dtype=torch.float64).flatten()
        elif process is not None:
            if not isinstance(process, Process):
                raise TypeError(f"process must be a diffusionlens Process, got {process!r}")
            sc = process.scale_of_sigma(sig).to(torch.float64)
        else:
            sc = torch.ones_like(sig)
    if sig.ndim != 1 or sig.numel() < 2:
        raise ValueError(f"need at least 2 noise levels, got shape {tuple(sig.shape)}")
    if sc.shape != sig.shape:
        raise ValueError(f"scales shape {tuple(sc.shape)} differs from sigmas shape {tuple(sig.shape)}")
    if not bool(torch.isfinite(sig).all()) or bool((sig <= 0).any()) or bool((sig[1:] <= sig[:-1]).any()):
        raise ValueError("sigmas must be finite, positive and strictly increasing (sigma_1 < ... < sigma_T)")
    if not bool(torch.isfinite(sc).all()) or bool((sc <= 0).any()):
        raise ValueError("scales must be finite and positive")
    return sig.to(device), sc.to(device)


def _tile_cond(cond: dict, reps: int, B: int) -> dict:
    out = {}
    for k, v in cond.items():
        out[k] = v.repeat((reps,) + (1,) * (v.ndim - 1)) if isinstance(v, Tensor) and v.ndim and v.shape[0] == B else v
    return out


def _eval_denoiser(denoiser, x0: Tensor, sigma: Tensor, noise: Tensor, cond: dict) -> tuple[Tensor, Tensor]:
    """D(x0 + sigma n, sigma) and ||x0 - D||^2 for x0 tiled R times: x0 (B, ...), sigma (R*B,), noise (R*B, ...)."""
    B = x0.shape[0]
    R = sigma.shape[0] // B
    xr = x0.repeat((R,) + (1,) * (x0.ndim - 1))
    with torch.no_grad():
        D = denoiser(xr + expand(sigma, xr) * noise, sigma, **_tile_cond(cond, R, B))
    if D.shape != xr.shape:
        raise ValueError(f"denoiser output shape {tuple(D.shape)} differs from its input's {tuple(xr.shape)}")
    if not bool(torch.isfinite(D).all()):
        bad = int(torch.nonzero(~torch.isfinite(D.flatten(1)).all(1))[0])
        raise FloatingPointError(f"non-finite denoiser output at sigma={sigma[bad].item():.6g}")
    return D, (xr - D).flatten(1).double().pow(2).sum(1)


def _check_x0(x0):
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        raise TypeError("x0 must be a floating-point tensor")
    if x0.ndim < 2 or x0.shape[0] < 1:
        raise ValueError(f"x0 must have shape (batch, *data_shape), got {tuple(x0.shape)}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains a non-finite value")


def _check_samples(samples):
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")


# ------------------------------------------------------------------------------------ discrete time


def ddpm_vlb(
    denoiser,
    x0: Tensor,
    *,
    sigmas=None,
    process: Process | None = None,
    scales=None,
    posterior_var: PosteriorVar | str = PosteriorVar.SMALL,
    decoder: Decoder | str = Decoder.GAUSSIAN,
    decoder_var: float | None = None,
    prior_var: float | None = None,
    levels: int = 256,
    binning: Binning | str = Binning.CENTERED,
    samples: int = 1,
    generator: torch.Generator | None = None,
    max_batch: int = 16384,
    cond: dict | None = None,
) -> VLB:
    """DDPM variational bound with every term (module docstring), Monte Carlo over x_k with standard errors.

    Args:
        denoiser: canonical ``D(x_hat, sigma, **cond)``.
        x0: (batch, *data_shape) data (for the discretized decoder, on the bin centers of :mod:`.bpd`).
        sigmas: (T,) increasing noise levels sigma_1..sigma_T; or omit and pass a ``DDPMTable`` process.
        process: gives the scales s_k (``scale_of_sigma``); a ``DDPMTable`` gives sigmas too.
        scales: (T,) explicit scales instead (default 1: a variance-exploding chain).
        posterior_var: ``"small"`` (beta-tilde) or ``"large"`` (beta).
        decoder: ``"gaussian"`` (continuous data) or ``"discretized"`` (8-bit data).
        decoder_var: variance of p(x0 | x_1) (default in the module docstring).
        prior_var: variance of the prior on x_hat_T (default sigma_T^2 + 1: N(0, I) in a VP chain's
            own coordinates, since 1 / s_T^2 = 1 + sigma_T^2; pass sigma_T^2 + Var[x0] in general).
        samples: Monte Carlo draws of x_k per (sample, step); standard errors need >= 2.
        generator: randomness of the draws.
        max_batch: at most this many rows per denoiser call.
        cond: conditioning keyword arguments (tensors with leading dim batch are per sample).
    """
    _check_x0(x0)
    _check_samples(samples)
    pv = PosteriorVar.parse(posterior_var)
    dec = Decoder.parse(decoder)
    cond = dict(cond or {})
    dev = x0.device
    sig, sc = _chain(sigmas, process, scales, dev)
    T = sig.numel()
    B, d = x0.shape[0], x0[0].numel()
    prior_var = float(sig[-1] ** 2 + 1) if prior_var is None else float(prior_var)
    if not prior_var > 0:
        raise ValueError(f"prior_var must be > 0, got {prior_var}")

    c_x0, var_q, var_p, decoder_var = _kl_coefficients(sig, sc, pv, decoder_var)
    terms = torch.zeros(samples, B, T + 1, dtype=torch.float64, device=dev)
    per_call = max(1, max_batch // B)
    for r in range(samples):
        for lo in range(0, T, per_call):
            hi = min(T, lo + per_call)
            steps = torch.arange(lo, hi, device=dev)  # 0-based: step k = index + 1
            D, err = _denoise_steps(denoiser, x0, sig[steps], generator, cond)
            for j, step in enumerate(steps.tolist()):
                if step == 0:  # the decoder needs D itself, not only its squared error
                    terms[r, :, 0] = decoder_nll(x0, D[:B], decoder_var, dec, levels=levels, binning=binning)
                else:
                    i = step - 1  # index into the k = 2..T coefficient arrays
                    terms[r, :, step] = gaussian_kl(c_x0[i] ** 2 * err[j], var_q[i], var_p[i], d)
        terms[r, :, T] = prior_kl(x0, float(sig[-1]), prior_var)
    mean_terms = terms.mean(0)
    totals = terms.sum(2)  # (samples, B)
    if samples > 1:
        se_terms = terms.std(0, unbiased=True) / math.sqrt(samples)
        se = totals.std(0, unbiased=True) / math.sqrt(samples)
    else:
        se_terms = torch.full_like(mean_terms, math.inf)
        se = torch.full((B,), math.inf, dtype=torch.float64, device=dev)
    se_terms[:, T] = 0.0
    total = totals.mean(0)
    return VLB(terms=mean_terms, stderr_terms=se_terms, total=total, stderr=se, bpd=total / (d * math.log(2)),
               sigmas=sig)


def _kl_coefficients(sig: Tensor, sc: Tensor, pv: PosteriorVar, decoder_var: float | None):
    """Per-step KL coefficients for k = 2..T (index k - 2): c_x0, the posterior's and the model's
    variances; and the decoder's variance (default in the module docstring)."""
    s_prev, s_k = sig[:-1], sig[1:]
    _, c_x0, var_q = posterior_coefs(s_k, s_prev)
    var_large = (sc[1:] / sc[:-1]) ** 2 * (s_k**2 - s_prev**2)
    var_p = var_q if pv is PosteriorVar.SMALL else var_large
    if decoder_var is None:
        if pv is PosteriorVar.LARGE:
            decoder_var = float(sc[0] ** 2 * sig[0] ** 2)
        else:
            decoder_var = float(sc[0] ** 2 * posterior_coefs(sig[1], sig[0])[2])
    if not decoder_var > 0:
        raise ValueError(f"decoder_var must be > 0, got {decoder_var}")
    return c_x0, var_q, var_p, decoder_var


def _denoise_steps(denoiser, x0: Tensor, levels: Tensor, generator, cond: dict) -> tuple[Tensor, Tensor]:
    """D at x0 + sigma n for each of the ``levels`` (S,), x0 tiled S times (one call), and the squared
    errors ||x0 - D||^2 as (S, B)."""
    B, S, dev, dtype = x0.shape[0], levels.shape[0], x0.device, x0.dtype
    sigma = levels.repeat_interleave(B).to(dtype)
    gdev = generator.device if generator is not None else dev
    noise = torch.randn((S * B,) + tuple(x0.shape[1:]), generator=generator, device=gdev, dtype=dtype).to(dev)
    D, err = _eval_denoiser(denoiser, x0, sigma, noise, cond)
    return D, err.reshape(S, B)


# ---------------------------------------------------------------------------------- continuous time


def _schedule(process: Process | None, sigma_min: float, sigma_max: float, u: Tensor):
    """Map u in [0, 1) to (sigma, weight) with E_u[weight * f(sigma)] = int f(sigma) / sigma^3 dsigma."""
    if process is None:  # log-linear in sigma (a VE schedule between the end points)
        L = math.log(sigma_max / sigma_min)
        sigma = sigma_min * torch.exp(u * L)
        return sigma, L / sigma**2
    t_lo = float(process.t_of_sigma(torch.tensor(sigma_min, dtype=torch.float64)))
    t_hi = float(process.t_of_sigma(torch.tensor(sigma_max, dtype=torch.float64)))
    if not (0 <= t_lo < t_hi <= 1):
        raise ValueError(f"sigma range [{sigma_min}, {sigma_max}] maps to t in [{t_lo}, {t_hi}] for {process!r}")
    t = t_lo + u * (t_hi - t_lo)
    sigma = process.sigma(t)
    return sigma, (t_hi - t_lo) * process.dsigma(t) / sigma**3


def _importance(data_var: float, sigma_min: float, sigma_max: float, u: Tensor):
    """Like :func:`_schedule`, drawing log sigma at the density q proportional to v / (v + sigma^2), v = ``data_var``.

    For data of per-dimension variance v the integrand over log sigma, E||x0 - D||^2 / sigma^2, is
    d v / (v + sigma^2) (exact for Gaussian data): flat below the data's scale, falling as sigma^-2
    above it. q follows that shape, so the weights stay bounded and no draw is spent far above the
    data. Its CDF is closed form in phi(sigma) = log sigma - log1p(sigma^2 / v) / 2, uniform under q.
    """
    v = float(data_var)

    def phi(s: float) -> float:
        return math.log(s) - 0.5 * math.log1p(s * s / v)

    lo, hi = phi(sigma_min), phi(sigma_max)
    f = lo + u * (hi - lo)
    # invert phi: sigma^2 = a^2 / (1 - a^2 / v) with a = e^phi < sqrt(v); log1p keeps 1 - a^2/v exact near 1
    log_sigma = f - 0.5 * torch.log1p(-torch.exp(2 * f) / v)
    sigma = torch.exp(log_sigma).clamp(sigma_min, sigma_max)
    # int f dsigma / sigma^3 = int f / sigma^2 dlog sigma = E_q[(hi - lo) (1 + sigma^2 / v) f / sigma^2]
    return sigma, (hi - lo) * (1 + sigma**2 / v) / sigma**2


def _control(sigma: Tensor, noise_sq: Tensor, d: int, data_var: float) -> Tensor:
    """A zero-mean control variate for ||x0 - D(x0 + sigma n)||^2: g(sigma) sigma^2 (||n||^2 - d).

    For Gaussian data of variance v, x0 - D = (sigma^2 (x0 - mu) - v sigma n) / (v + sigma^2), whose
    squared norm holds the term (v sigma / (v + sigma^2))^2 ||n||^2 (the cross term is removed by the
    antithetic pair); its chi-square fluctuation is most of the variance below the data's scale,
    where D is close to the identity. E||n||^2 = d, so subtracting it changes no mean.
    """
    g = (data_var / (data_var + sigma**2)) ** 2
    return g * sigma**2 * (noise_sq - d)


def _rounds(denoiser, x0: Tensor, sig: Tensor, weight: Tensor, n: Tensor, *, data_var: float, control_variate: bool,
            dec: Decoder, decoder_var: float, sigma_min: float, generator, max_batch: int, cond: dict, **bins):
    """K rounds of the diffusion and decoder estimates, each (K, B), from the draws sig, weight (K, M, B)
    and noise n (K, M, B, ...); each round's decoder term from one antithetic pair at sigma_min."""
    K, M, B = sig.shape
    d = x0[0].numel()
    err = torch.empty(K * M, B, dtype=torch.float64, device=x0.device)
    sig_f, n_f = sig.reshape(K * M, B), n.reshape((K * M, B) + tuple(x0.shape[1:]))
    per_call = max(1, max_batch // B)
    for lo in range(0, K * M, per_call):
        hi = min(K * M, lo + per_call)
        err[lo:hi] = _eval_denoiser(denoiser, x0, sig_f[lo:hi].reshape(-1).to(x0.dtype),
                                    n_f[lo:hi].reshape((-1,) + tuple(x0.shape[1:])), cond)[1].reshape(hi - lo, B)
    err = err.reshape(K, M, B)
    if control_variate:
        err = err - _control(sig, n.flatten(3).double().pow(2).sum(3), d, data_var)
    diffusion = (weight * err).mean(1)
    gdev = generator.device if generator is not None else x0.device
    n0 = torch.randn((K,) + tuple(x0.shape), generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
    z = torch.cat([n0, -n0]).flatten(0, 1)  # (2 K B, ...): the decoder's fluctuation is small
    x2 = x0.repeat((2 * K,) + (1,) * (x0.ndim - 1))
    smin = torch.full((x2.shape[0],), sigma_min, dtype=x0.dtype, device=x0.device)
    D0 = torch.cat([_call(denoiser, x2[i:i + max_batch] + sigma_min * z[i:i + max_batch], smin[i:i + max_batch],
                          _tile_cond(cond, 2 * K, B), i, B) for i in range(0, x2.shape[0], max_batch)])
    v = decoder_nll(x2, D0, decoder_var, dec, **bins)
    if control_variate and dec is Decoder.GAUSSIAN:
        sq = z.flatten(1).double().pow(2).sum(1)
        v = v - _control(torch.tensor(sigma_min, dtype=torch.float64), sq, d, data_var) / (2 * decoder_var)
    v = v.reshape(2, K, B)
    return diffusion, (v[0] + v[1]) / 2


def _call(denoiser, x: Tensor, sigma: Tensor, cond: dict, start: int, B: int) -> Tensor:
    """D on rows [start, start + len(x)) of a stack of copies of a batch of B (conditioning sliced to match)."""
    c = {k: (v[start:start + x.shape[0]] if isinstance(v, Tensor) and v.ndim and v.shape[0] > B else v)
         for k, v in cond.items()}
    with torch.no_grad():
        return denoiser(x, sigma, **c)


def _draws(K: int, B: int, M: int, *, stratified: bool, antithetic: bool, shape, dtype, dev, generator):
    """(u (K, M, B) in [0, 1), noise n (K, M, B, *shape)) of K rounds."""
    gdev = generator.device if generator is not None else dev
    if stratified:
        u0 = torch.rand(K, 1, B, generator=generator, device=gdev, dtype=torch.float64).to(dev)
        u = torch.remainder(u0 + torch.arange(M, device=dev, dtype=torch.float64)[:, None] / M, 1.0)
    else:
        u = torch.rand(K, M, B, generator=generator, device=gdev, dtype=torch.float64).to(dev)
    half = M // 2 if antithetic else M
    n = torch.randn((K, half, B) + tuple(shape), generator=generator, device=gdev, dtype=dtype).to(dev)
    return u, (torch.cat([n, -n], 1) if antithetic else n)


def _more_rounds(both: Tensor, d: int, target: float, rounds: int | None, max_rounds: int) -> int:
    """How many rounds to add after the (R, B) estimates so far: the rest of a fixed count, or (adaptive) the
    rounds the current standard error says the target needs (at least as many again, capped), 0 when done."""
    R = both.shape[0]
    if rounds is not None:
        return rounds - R
    if R < 2:
        return 2 - R
    se = float((both.std(0, unbiased=True) / math.sqrt(R)).pow(2).mean().sqrt()) / d
    # aim 15 % below the target: the error is itself estimated (and read when it happens to be low), and
    # heavy-tailed rounds make it optimistic; measured in benchmarks/results/elbo_variance.md
    aim = 0.85 * target
    if se < aim or R >= max_rounds:
        return 0
    need = math.ceil(R * (se / aim) ** 2)  # SE falls as 1 / sqrt(rounds)
    return min(max_rounds - R, max(need - R, 1))


def vdm_vlb(
    denoiser,
    x0: Tensor,
    *,
    sigma_min: float,
    sigma_max: float,
    process: Process | None = None,
    data_var: float = 1.0,
    samples: int = 16,
    rounds: int | None = None,
    target: float = 0.05,
    max_rounds: int = 512,
    stratified: bool = True,
    antithetic: bool = True,
    control_variate: bool = True,
    decoder: Decoder | str = Decoder.GAUSSIAN,
    decoder_var: float | None = None,
    prior_var: float | None = None,
    levels: int = 256,
    binning: Binning | str = Binning.CENTERED,
    generator: torch.Generator | None = None,
    max_batch: int = 16384,
    cond: dict | None = None,
) -> ContinuousVLB:
    """Continuous-time VDM bound (Kingma et al. 2021): prior KL + L_inf + decoder NLL, nats per sample.

    The diffusion term is estimated with importance sampling of the noise level (Song et al. 2021,
    "Maximum likelihood training of score-based diffusion models", sec. 5: draw t in proportion to
    the integrand's weight), stratified draws (VDM's low-discrepancy sampler), antithetic noise pairs
    and a control variate for the noise's chi-square fluctuation (:func:`_control`), in independent
    rounds of ``samples`` draws; the standard error is the rounds' own (independent replicates).

    Args:
        sigma_min, sigma_max: the fixed end points (decoder at sigma_min, prior at sigma_max).
        process: None (default): log sigma is drawn at the density proportional to
            ``data_var / (data_var + sigma^2)`` (:func:`_importance`); a process: t uniform on its
            schedule instead (higher variance, e.g. VP; kept to compare schedules). Only the
            variance depends on the choice, never the mean.
        data_var: per-dimension data variance v shaping the density and the control variate (any
            v > 0 is unbiased; too small a v puts too few draws near the data's scale, so prefer an
            upper bound: 1 for data in [-1, 1]).
        samples: draws of (t, n) per data point and round (even when ``antithetic``).
        rounds: independent rounds; None (default): at least 2, then more until the standard error,
            root-mean-square over the batch, is 15 % below ``target`` nats per dimension (a margin for the
            error of the estimated error), at most ``max_rounds``.
        stratified: t_j = t_lo + (u0 + j / samples) mod 1 per sample and round (low-discrepancy), else i.i.d.
        antithetic: pair every noise n with -n.
        control_variate: subtract the zero-mean term of :func:`_control` from every draw (and from the
            Gaussian decoder's).
        decoder, decoder_var, prior_var, levels, binning: as :func:`ddpm_vlb`; decoder_var defaults to
            sigma_min^2 (scale 1 at t = 0), prior_var to sigma_max^2 + 1. The decoder term takes one
            antithetic pair of draws at sigma_min per round.
    """
    _check_x0(x0)
    _check_samples(samples)
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not (isinstance(data_var, (int, float)) and 0 < data_var < math.inf):
        raise ValueError(f"data_var must be a positive number, got {data_var!r}")
    if rounds is not None and not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"rounds must be an integer >= 1 or None, got {rounds!r}")
    if not (isinstance(max_rounds, int) and max_rounds >= 2) or not target > 0:
        raise ValueError(f"need an integer max_rounds >= 2 and target > 0, got {max_rounds!r}, {target!r}")
    if antithetic and samples % 2:
        raise ValueError(f"antithetic sampling needs an even number of samples, got {samples}")
    dec = Decoder.parse(decoder)
    B, d = x0.shape[0], x0[0].numel()
    prior_var = sigma_max**2 + 1 if prior_var is None else float(prior_var)
    decoder_var = sigma_min**2 if decoder_var is None else float(decoder_var)
    kw = dict(data_var=float(data_var), control_variate=control_variate, dec=dec, decoder_var=decoder_var,
              sigma_min=sigma_min, generator=generator, max_batch=max_batch, cond=dict(cond or {}), levels=levels,
              binning=binning)
    diff = torch.empty(0, B, dtype=torch.float64, device=x0.device)
    decs = torch.empty_like(diff)
    while (k := _more_rounds(diff + decs, d, target, rounds, max_rounds)) > 0:
        u, n = _draws(k, B, samples, stratified=stratified, antithetic=antithetic, shape=x0.shape[1:],
                      dtype=x0.dtype, dev=x0.device, generator=generator)
        sig, weight = (_importance(data_var, sigma_min, sigma_max, u) if process is None
                       else _schedule(process, sigma_min, sigma_max, u))
        a, b = _rounds(denoiser, x0, sig, weight, n, **kw)
        diff, decs = torch.cat([diff, a]), torch.cat([decs, b])
    R = diff.shape[0]
    both = diff + decs  # (R, B)
    se = both.std(0, unbiased=True) / math.sqrt(R) if R > 1 else torch.full((B,), math.inf, dtype=torch.float64)
    prior = prior_kl(x0, sigma_max, prior_var)
    diffusion, dec_nll = diff.mean(0), decs.mean(0)
    total = prior + diffusion + dec_nll
    return ContinuousVLB(prior=prior, diffusion=diffusion, decoder=dec_nll, total=total, stderr=se.to(total.device),
                         bpd=total / (d * math.log(2)), draws=R * samples)
