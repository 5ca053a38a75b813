"""Radially averaged power spectra, the power-law fit, the hinge, and coarse-to-fine settling.

Everything here is measured in the orthonormal DCT basis (:mod:`.dct`). A :class:`Spectrum` holds,
per distinct radial frequency f > 0, the mean squared coefficient ("power", per coefficient) over
the images, channels and coefficients at that frequency. White noise of std sigma has power sigma^2
at every f, so a spectrum and a noise level compare directly: the **hinge** at sigma is the frequency
where the data's power falls to sigma^2. Below it the signal dominates a noisy image, above it the
noise does; as sigma falls during sampling the hinge moves up, which is why a sampler fixes the
coarse structure first (Dieleman 2024, "Diffusion is spectral autoregression").

Images are centred by their mean image before the transform (``center=True``): what competes with
the noise is the variance of each coefficient, the mean being known from the first denoiser call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from .dct import dct2, frequencies

__all__ = ["Spectrum", "PowerLaw", "power_spectrum", "fit_power_law", "hinge", "Settling", "settling",
           "radial_groups"]


@dataclass(frozen=True)
class Spectrum:
    """Power per coefficient at each distinct radial frequency (DC excluded).

    freq: (m,) ascending frequencies in cycles per pixel; power: (m,) mean squared DCT coefficient;
    count: (m,) coefficients per image (all channels) at that frequency; n: images averaged; dc: the
    power of the mean coefficient.
    """

    freq: np.ndarray
    power: np.ndarray
    count: np.ndarray
    n: int
    dc: float

    def to_dict(self) -> dict:
        return {"freq": self.freq.tolist(), "power": self.power.tolist(), "count": self.count.tolist(),
                "n": self.n, "dc": self.dc}


def radial_groups(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(freq (m + 1,), index (h, w)): the distinct radial frequencies (freq[0] = 0, the mean) and the
    group of each coefficient (coefficients (i, j) and (j, i) of a square image share one)."""
    f = frequencies(h, w)
    freq, index = np.unique(np.round(f, 12), return_inverse=True)
    return freq, index.reshape(h, w)


def _images(x) -> Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"images must have shape (N, H, W) or (N, C, H, W) with N >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain a non-finite value")
    return x.to(torch.float64)


def _group_mean(values: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group (sum over coefficients, count) of per-coefficient values (h, w)."""
    k = index.max() + 1
    return np.bincount(index.ravel(), values.ravel(), k), np.bincount(index.ravel(), minlength=k)


def power_spectrum(x, *, center: bool = True) -> Spectrum:
    """Radially averaged power spectrum of images x (N, [C,] H, W) (sides >= 4; ValueError otherwise)."""
    x = _images(x)
    if center:
        x = x - x.mean(0, keepdim=True)
    u2 = dct2(x).pow(2).mean(dim=(0, 1)).cpu().numpy()  # (H, W): per-coefficient power
    freq, index = radial_groups(*x.shape[-2:])
    total, count = _group_mean(u2, index)
    power = total / count
    return Spectrum(freq[1:], power[1:], count[1:] * x.shape[1], int(x.shape[0]), float(power[0]))


@dataclass(frozen=True)
class PowerLaw:
    """P(f) = amplitude * f ** exponent, fitted on [fmin, fmax]; ``ci`` the exponent's interval at ``level``."""

    exponent: float
    amplitude: float
    ci: tuple[float, float]
    level: float
    fmin: float
    fmax: float
    bins: int

    def __call__(self, f):
        return self.amplitude * np.asarray(f, dtype=np.float64) ** self.exponent

    def hinge(self, sigma):
        """Frequency where the law meets noise power sigma^2 (unclamped)."""
        return (np.asarray(sigma, dtype=np.float64) ** 2 / self.amplitude) ** (1.0 / self.exponent)

    def to_dict(self) -> dict:
        return {"exponent": self.exponent, "amplitude": self.amplitude, "ci": list(self.ci), "level": self.level,
                "fmin": self.fmin, "fmax": self.fmax, "bins": self.bins}


def fit_power_law(spec: Spectrum, *, fmin: float | None = None, fmax: float = 0.5, bins: int = 16,
                  level: float = 0.95) -> PowerLaw:
    """Least-squares line through log power against log frequency, on ``bins`` log-spaced bins of [fmin, fmax].

    Each bin contributes one point, the count-weighted mean of (log f, log P) of its frequencies, so
    every octave weighs the same (the many high frequencies would otherwise decide the slope) and a
    pure power law is fitted exactly. The interval is Student's t on the regression's standard error;
    it treats the binned points as independent, which the spread over seeds in ``benchmarks/spectra.py``
    checks. Needs >= 3 occupied bins.
    """
    fmin = float(spec.freq[0]) if fmin is None else float(fmin)
    if not (0 < fmin < fmax):
        raise ValueError(f"need 0 < fmin < fmax, got fmin={fmin}, fmax={fmax}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    keep = (spec.freq >= fmin * (1 - 1e-12)) & (spec.freq <= fmax * (1 + 1e-12)) & (spec.power > 0)
    f, p, c = spec.freq[keep], spec.power[keep], spec.count[keep].astype(np.float64)
    edges = np.linspace(np.log(fmin), np.log(fmax), bins + 1)
    which = np.clip(np.searchsorted(edges, np.log(f), side="right") - 1, 0, bins - 1)
    occupied = np.unique(which)
    if len(occupied) < 3:
        raise ValueError(f"the fit range [{fmin:.3g}, {fmax:.3g}] holds {len(occupied)} occupied frequency bins; "
                         "need >= 3 (images too small, or the range too narrow)")
    lx = np.array([np.average(np.log(f[which == b]), weights=c[which == b]) for b in occupied])
    ly = np.array([np.average(np.log(p[which == b]), weights=c[which == b]) for b in occupied])
    r = stats.linregress(lx, ly)
    half = stats.t.ppf(0.5 + level / 2, len(lx) - 2) * r.stderr if len(lx) > 2 else np.inf
    return PowerLaw(float(r.slope), float(np.exp(r.intercept)), (float(r.slope - half), float(r.slope + half)),
                    float(level), fmin, float(fmax), int(bins))


def hinge(spec: Spectrum, sigma) -> np.ndarray:
    """Per sigma, the frequency below which the data's power exceeds the noise power sigma^2.

    The first frequency whose power drops below sigma^2, interpolated linearly in (log f, log P)
    with the one before it (exact for a power law); 0 when the noise dominates every frequency, the
    highest frequency when the signal dominates all of them. Returns an array shaped like sigma.
    """
    s = np.asarray(sigma, dtype=np.float64)
    if not bool(np.all(np.isfinite(s) & (s > 0))):
        raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
    lf, lp = np.log(spec.freq), np.log(spec.power)
    out = np.empty(s.shape)
    for idx, level in np.ndenumerate(2 * np.log(s)):
        below = np.flatnonzero(lp < level)
        if len(below) == 0:
            out[idx] = spec.freq[-1]
        elif below[0] == 0:
            out[idx] = 0.0
        else:
            i = below[0]
            a = (level - lp[i - 1]) / (lp[i] - lp[i - 1])
            out[idx] = np.exp(lf[i - 1] + a * (lf[i] - lf[i - 1]))
    return out


@dataclass(frozen=True)
class Settling:
    """What a sampler's x0-estimate fixes at each step, per radial frequency.

    sigmas: (K,) the noise level of each evaluation; freq: (m,); settled: (K, m) the projection of the
    estimate at step k onto the final sample, <D_k - c, x - c>_f / <x - c, x - c>_f (0 = nothing of the
    final content yet, 1 = settled); change: (K, m) the power of D_k - D_{k-1} (D_{-1} = c), the
    spectrum of each step's change; c the centre (data mean).
    """

    sigmas: np.ndarray
    freq: np.ndarray
    settled: np.ndarray
    change: np.ndarray

    def half_sigma(self) -> np.ndarray:
        """(m,) per frequency the sigma at which half of it is settled (interpolated in log sigma; nan
        when it never is, sigmas[0] when it already is)."""
        out = np.full(len(self.freq), np.nan)
        ls = np.log(self.sigmas)
        for j in range(len(self.freq)):
            s = self.settled[:, j]
            above = np.flatnonzero(s >= 0.5)
            if len(above) == 0:
                continue
            i = above[0]
            if i == 0:
                out[j] = self.sigmas[0]
                continue
            a = (0.5 - s[i - 1]) / (s[i] - s[i - 1])
            out[j] = np.exp(ls[i - 1] + a * (ls[i] - ls[i - 1]))
        return out

    def to_dict(self) -> dict:
        return {"sigmas": self.sigmas.tolist(), "freq": self.freq.tolist(), "settled": self.settled.tolist(),
                "change": self.change.tolist(), "half_sigma": self.half_sigma().tolist()}


@torch.no_grad()
def settling(denoiser, noise: Tensor, *, sampler: str | None = "heun", steps: int = 32, mean=None, solve=None,
             **options) -> Settling:
    """Run ``sampler`` from ``noise`` (B, C, H, W) and measure, per step, what its estimate has settled.

    ``options`` go to :func:`diffusionlens.samplers.sample` (grid, sigma_min, sigma_max, ...); the
    estimate at step k is the first denoiser evaluation of that step, the final sample closes the
    sequence. ``solve``: instead, a function ``solve(callback) -> samples`` running any sampler that
    reports k-diffusion-style step info (e.g. :func:`~.blurring.blurring_sample`). ``mean``: the centre c
    (a tensor broadcasting against one image, or None for the mean of the final samples).
    """
    from ..samplers import sample

    x = _images(noise).to(device=noise.device, dtype=noise.dtype)
    seen: list[tuple[float, Tensor]] = []

    def keep(info):
        seen.append((float(info["sigma"]), info["denoised"].to("cpu", torch.float64)))

    if solve is None:
        out = sample(denoiser, x, sampler=sampler, steps=steps, callback=keep, **options)
    else:
        out = solve(keep)
    out = out.to("cpu", torch.float64)
    if not seen or any(d is None for _, d in seen):
        raise ValueError(f"sampler {sampler!r} reports no estimate per step; choose one that does (heun, euler, ...)")
    c = out.mean(0, keepdim=True) if mean is None else torch.as_tensor(mean, dtype=torch.float64)
    freq, index = radial_groups(*x.shape[-2:])
    final = dct2(out - c)
    norm, _ = _group_mean((final**2).sum(dim=(0, 1)).numpy(), index)
    settled, change, prev = [], [], torch.zeros_like(final)
    for _, d in seen:
        u = dct2(d - c)
        settled.append(_group_mean((u * final).sum(dim=(0, 1)).numpy(), index)[0] / norm)
        tot, cnt = _group_mean((u - prev).pow(2).mean(dim=(0, 1)).numpy(), index)
        change.append(tot / cnt)
        prev = u
    return Settling(np.array([s for s, _ in seen]), freq[1:], np.array(settled)[:, 1:], np.array(change)[:, 1:])
