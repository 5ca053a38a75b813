"""Evaluation: sample-quality metrics with their exact-sample noise floors, and the expectation gap.

Conventions: samples and reference data are (N, *data_shape) tensors; metrics are computed in float64
on the flattened (N, d) points. Every distance is reported next to its **noise floor**: the value the
same metric takes between two independent exact samples of the same sizes (for generated toy and
oracle data: fresh draws of the data generator against the held-out test set; for images: a
random subset of the train split, as large as the sample, against the test split — the Fréchet
distance is biased by O(tr Cov / n), so a floor at another size would mislead). A model is as good
as the metric can tell once it reaches the floor.

Metrics
* :func:`frechet_distance` — ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2, the W2
  distance between Gaussians (Dowson & Landau 1982; FID, Heusel et al. 2017), in the eigenvalue
  form: S1^1/2 from a symmetric eigendecomposition, then the eigenvalues of the symmetric PSD
  product, clamped at 0. No non-symmetric sqrtm, no complex round-off to discard.
* :func:`sliced_wasserstein` — SW2 (Rabin et al. 2011; Bonneel et al. 2015):
  (E_theta W2^2(theta#mu, theta#nu))^1/2 over uniform directions theta on the sphere, each 1-D W2
  computed exactly between the two empirical measures (any sizes) from their quantile functions:
  W2^2 = E a^2 + E b^2 - 2 sum_i a_(i) (G((i+1)/n) - G(i/n)) with G the integrated quantile function of
  the sorted reference. :class:`SW2` keeps the reference's sorted projections for many comparisons.
* :func:`mmd2` — the unbiased U-statistic MMD^2 (Gretton et al. 2012, eq. 3) with the RBF kernel
  exp(-||x - y||^2 / (2 h^2)); h is the median pairwise distance of the *reference* set (the median
  heuristic), fixed before the comparison so the model and the floor are measured with one kernel.
  Its expectation is exactly 0 for identical distributions; the floor is its spread. :class:`MMD`
  keeps the reference's kernel sum for many comparisons.
* :func:`log_likelihood_true` — the mean exact log-density of samples under the true data density,
  where it is known in closed form: the oracle mixtures (``oracle.log_prob``) and ``ring8`` (an
  8-component Gaussian mixture); for ``checkerboard`` the fraction of samples on the support
  (the density is uniform there). None for the other toys (no closed form; no KDE).
* :func:`image_frechet` — the Fréchet distance in the feature space of the project's own classifier
  (:mod:`diffusionlens.features`), with its test accuracy.
* :func:`expectation_gap` — the estimator-of-expectations perspective: at each noise level sigma,
  the MSE of the model's D(x_hat, sigma) against x0 splits, in expectation, into the irreducible part
  E tr Cov[x0 | x_hat] / d (the oracle's ``posterior_cov_trace``) and the gap E||D - D*||^2 / d to the
  exact posterior mean D* = E[x0 | x_hat]. The gap is what MSE training can still remove.
* :func:`dataset_bits_per_dim` — test-set bits/dim of image data through :mod:`diffusionlens.likelihood`
  (PF-ODE log-likelihood of uniformly dequantized data); :func:`pixel_baselines` — the same units for a
  uniform model and an independent per-pixel histogram, the references a bits/dim is read against.

:func:`evaluate_samples` bundles what applies to a data set into one JSON-able dict;
:func:`headline_scorer` gives its headline number (FD or SW2) as a cached function for sweeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ._util import device_of

__all__ = [
    "headline_floor",
    "frechet_distance",
    "gaussian_stats",
    "sliced_wasserstein",
    "SW2",
    "mmd2",
    "MMD",
    "median_bandwidth",
    "Floor",
    "noise_floor",
    "log_likelihood_true",
    "true_density",
    "image_frechet",
    "GapCurve",
    "expectation_gap",
    "dataset_bits_per_dim",
    "pixel_baselines",
    "evaluate_samples",
    "headline_scorer",
]


def _flat(x: Tensor, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains a non-finite value")
    return x


# ----------------------------------------------------------------------------- Fréchet distance


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (d,) and unbiased covariance (d, d), float64, of (N, d) features (N >= 2)."""
    f = _flat(features, "features")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {f.shape[0]}")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _psd_sqrt(S: Tensor) -> Tensor:
    ev, U = torch.linalg.eigh(0.5 * (S + S.T))
    return (U * ev.clamp_min(0).sqrt()) @ U.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Squared 2-Wasserstein distance between N(mu1, cov1) and N(mu2, cov2) (the 'FID' formula).

    Args: mu (d,), cov (d, d) symmetric positive semi-definite. Returns a float >= 0 (float64 inside).
    """
    mu1, mu2 = torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(mu2, dtype=torch.float64)
    cov1, cov2 = torch.as_tensor(cov1, dtype=torch.float64), torch.as_tensor(cov2, dtype=torch.float64)
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"shapes must be mu (d,), cov (d, d); got {tuple(mu1.shape)}, {tuple(cov1.shape)}, "
                         f"{tuple(mu2.shape)}, {tuple(cov2.shape)}")
    for name, v in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} contains a non-finite value")
    r = _psd_sqrt(cov1)
    m = r @ cov2 @ r
    cross = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0).sqrt().sum()
    fd = ((mu1 - mu2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross
    return max(float(fd), 0.0)


def _fd_of(a: Tensor, b: Tensor) -> float:
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# ----------------------------------------------------------------------------- SW2 and MMD


class _Quantiles:
    """Sorted 1-D projections b (m, P) of a reference set and the running integral of its quantile function.

    With G(u) = int_0^u F_b^{-1}, the cross term of W2^2 against any sorted a (n, P) is
    sum_i a_i (G((i+1)/n) - G(i/n)) (exact for step quantile functions), so
    W2^2 = E a^2 + E b^2 - 2 cross costs O(n P) per comparison once b is sorted.
    """

    def __init__(self, proj: Tensor):
        self.b, _ = proj.sort(0)
        self.m = self.b.shape[0]
        self.cum = torch.cat([torch.zeros_like(self.b[:1]), self.b.cumsum(0) / self.m])  # (m + 1, P): G(k/m)
        self.sq = (self.b**2).mean(0)

    def G(self, u: Tensor) -> Tensor:
        """int_0^u F_b^{-1} for u (k,) in [0, 1] -> (k, P)."""
        k = (u * self.m).floor().long().clamp(0, self.m)
        frac = (u - k.to(u.dtype) / self.m)[:, None]
        return self.cum[k] + frac * self.b[k.clamp_max(self.m - 1)]

    def w2sq(self, proj: Tensor) -> Tensor:
        """Exact W2^2 per column between the empirical measures of proj (n, P) and the reference."""
        a, _ = proj.sort(0)
        n = a.shape[0]
        if n == self.m:
            return ((a - self.b) ** 2).mean(0)
        g = self.G(torch.arange(n + 1, dtype=torch.float64, device=a.device) / n)
        cross = (a * (g[1:] - g[:-1])).sum(0)
        return ((a**2).mean(0) + self.sq - 2 * cross).clamp_min(0)


def _directions(d: int, projections: int, generator, directions: Tensor | None) -> Tensor:
    if directions is None:
        if not (isinstance(projections, int) and projections >= 1):
            raise ValueError(f"projections must be an integer >= 1, got {projections!r}")
        directions = torch.randn(projections, d, generator=generator, dtype=torch.float64)
    theta = torch.as_tensor(directions).to(torch.float64)
    if theta.ndim != 2 or theta.shape[1] != d:
        raise ValueError(f"directions must have shape (P, {d}), got {tuple(theta.shape)}")
    return theta / theta.norm(dim=1, keepdim=True)


def sliced_wasserstein(x: Tensor, y: Tensor, *, projections: int = 256, generator: torch.Generator | None = None,
                       directions: Tensor | None = None) -> float:
    """Sliced 2-Wasserstein distance between the samples x (n, ...) and y (m, ...) (any sizes).

    Args:
        projections: number of random directions (uniform on the sphere, drawn with ``generator``).
        directions: optional explicit (P, d) directions (rows are normalised); overrides ``projections``.
    """
    return SW2(y, projections=projections, generator=generator, directions=directions)(x)


class SW2:
    """:func:`sliced_wasserstein` against a fixed reference set, its sorted projections computed once.

    ``SW2(ref, directions=th)(x)`` equals ``sliced_wasserstein(x, ref, directions=th)``.
    """

    def __init__(self, reference: Tensor, *, projections: int = 256, generator: torch.Generator | None = None,
                 directions: Tensor | None = None):
        ref = _flat(reference, "reference")
        self.theta = _directions(ref.shape[1], projections, generator, directions)
        self.q = _Quantiles(ref @ self.theta.T)

    def __call__(self, x: Tensor) -> float:
        a = _flat(x, "x")
        if a.shape[1] != self.theta.shape[1]:
            raise ValueError(f"x and y have different dimensions: {a.shape[1]} vs {self.theta.shape[1]}")
        return float(self.q.w2sq(a @ self.theta.T).mean().sqrt())


def _sqdist(a: Tensor, b: Tensor) -> Tensor:
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T).clamp_min(0)


def median_bandwidth(ref: Tensor, max_points: int = 2000) -> float:
    """Median pairwise Euclidean distance of (the first ``max_points`` of) the reference set."""
    r = _flat(ref, "ref")[:max_points]
    if r.shape[0] < 2:
        raise ValueError("need at least 2 reference points for the median bandwidth")
    d = _sqdist(r, r)
    iu = torch.triu_indices(r.shape[0], r.shape[0], 1)
    h = float(d[iu[0], iu[1]].median().sqrt())
    if not h > 0:
        raise ValueError("reference points are all identical: the median bandwidth is 0")
    return h


def _mean_offdiag(k: Tensor) -> Tensor:
    n = k.shape[0]
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def _check_pair(a: Tensor, b: Tensor, bandwidth) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y have different dimensions: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("unbiased MMD needs at least 2 samples on each side")
    if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")


def mmd2(x: Tensor, y: Tensor, *, bandwidth: float) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with the RBF kernel exp(-||a - b||^2 / (2 bandwidth^2)).

    x (n, ...), y (m, ...), n, m >= 2. Can be slightly negative; its mean is 0 when x and y share a law.
    """
    return MMD(y, bandwidth=bandwidth)(x)


class MMD:
    """:func:`mmd2` against a fixed reference set, its self-similarity term computed once.

    ``MMD(ref, bandwidth=h)(x)`` equals ``mmd2(x, ref, bandwidth=h)``; use it when many sample sets
    (a model, its noise-floor draws, a sweep over samplers) are compared with one reference.
    """

    def __init__(self, reference: Tensor, *, bandwidth: float):
        self.ref = _flat(reference, "reference")
        _check_pair(self.ref, self.ref, bandwidth)
        self.g = -0.5 / bandwidth**2
        self.bandwidth = float(bandwidth)
        self.kyy = float(_mean_offdiag(torch.exp(self.g * _sqdist(self.ref, self.ref))))

    def __call__(self, x: Tensor) -> float:
        a = _flat(x, "x")
        _check_pair(a, self.ref, self.bandwidth)
        kxx = _mean_offdiag(torch.exp(self.g * _sqdist(a, a)))
        kxy = torch.exp(self.g * _sqdist(a, self.ref)).mean()
        return float(kxx + self.kyy - 2 * kxy)


@dataclass(frozen=True)
class Floor:
    """A metric's value between independent exact samples: mean and standard deviation over ``repeats``."""

    mean: float
    std: float
    repeats: int


def noise_floor(metric: Callable[[Tensor, Tensor], float], draw: Callable[[int], Tensor], reference: Tensor,
                n: int, repeats: int = 5) -> Floor:
    """The metric between ``repeats`` fresh exact samples ``draw(r)`` (each (n, ...)) and ``reference``."""
    vals = []
    for r in range(repeats):
        s = draw(r)
        if s.shape[0] != n:
            raise ValueError(f"draw({r}) returned {s.shape[0]} samples, expected {n}")
        vals.append(metric(s, reference))
    v = torch.tensor(vals, dtype=torch.float64)
    return Floor(mean=float(v.mean()), std=float(v.std()) if repeats > 1 else 0.0, repeats=repeats)


# ----------------------------------------------------------------------------- true densities


def true_density(name: str):
    """The closed-form density of a data set: a GaussianMixture (oracle-*, ring8), or None."""
    from .data import _check_name, oracle_for
    from .oracle import GaussianMixture

    _check_name(name)
    if name == "ring8":  # data._ring8: 8 Gaussians of std 0.5 at radius 4, everything divided by 1.414
        ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        means = (4.0 / 1.414) * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
        return GaussianMixture(means, torch.full((8,), (0.5 / 1.414) ** 2, dtype=torch.float64))
    return oracle_for(name)


def log_likelihood_true(samples: Tensor, name: str) -> dict | None:
    """Exact mean log-density (nats) of samples under the true density of data set ``name``.

    Returns {"mean", "stderr"} (oracle-*, ring8), {"on_support"} (checkerboard: the fraction of samples
    on the black squares, where the density is 1/32), or None where no closed form exists.
    """
    x = _flat(samples, "samples")
    if name == "checkerboard":  # data._checkerboard: support = 2 * {(x1, x2): floor(x1) + floor(x2) even} in [-4, 4]^2
        z = x / 2.0
        inside = (z.abs() <= 2).all(1) & ((torch.floor(z[:, 0]) + torch.floor(z[:, 1])) % 2 == 0)
        return {"on_support": float(inside.double().mean())}
    gm = true_density(name)
    if gm is None:
        return None
    lp = gm.log_prob(x.reshape((x.shape[0],) + tuple(gm.data_shape)))
    return {"mean": float(lp.mean()), "stderr": float(lp.std() / math.sqrt(len(lp))) if len(lp) > 1 else math.nan}


# ----------------------------------------------------------------------------- images


def image_frechet(samples: Tensor, reference: Tensor, *, dataset: str = "digits", classifier=None,
                  floor_samples: Tensor | None = None) -> dict:
    """Fréchet distance in the project classifier's feature space (and the floor if ``floor_samples``).

    Args:
        samples: (N, C, H, W) generated images in [-1, 1]. reference: the test split's images.
        floor_samples: exact images of the same law (the train split), to measure the floor.
    """
    from .features import extract_features, load_classifier

    clf = classifier if classifier is not None else load_classifier(dataset)
    ref_stats = gaussian_stats(extract_features(clf, reference))
    out = {"fd": frechet_distance(*gaussian_stats(extract_features(clf, samples)), *ref_stats),
           "classifier_test_accuracy": clf.test_accuracy, "n_samples": int(samples.shape[0]),
           "n_reference": int(reference.shape[0])}
    if floor_samples is not None:
        out["fd_floor"] = frechet_distance(*gaussian_stats(extract_features(clf, floor_samples)), *ref_stats)
        out["n_floor"] = int(floor_samples.shape[0])
    return out


# ----------------------------------------------------------------------------- the expectation perspective


@dataclass(frozen=True)
class GapCurve:
    """Per noise level (all lists of equal length): MSEs per dimension against x0.

    ``mse_model`` = E||D - x0||^2/d, ``irreducible`` = E tr Cov[x0|x_hat]/d (oracle), ``gap`` =
    E||D - D*||^2/d, ``relative`` = gap / irreducible. ``summary`` is the mean of ``relative`` over the
    log-uniform sigma grid.
    """

    sigmas: list[float]
    mse_model: list[float]
    mse_oracle: list[float]
    irreducible: list[float]
    gap: list[float]
    relative: list[float]
    summary: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def expectation_gap(denoiser, oracle, x0: Tensor, *, sigmas=None, generator: torch.Generator | None = None,
                    batch_size: int = 2048) -> GapCurve:
    """Gap between a denoiser and the exact posterior mean E[x0 | x_hat] of an oracle, per noise level.

    Args:
        denoiser: canonical D(x_hat, sigma). oracle: the GaussianMixture the data ``x0`` (N, ...) came from.
        sigmas: noise levels (default 13 log-uniform levels from 0.01 to 10).
        generator: randomness of the noise n (x_hat = x0 + sigma n).
    """
    x0 = x0.detach().cpu().to(torch.float64)
    _flat(x0, "x0")
    dev = device_of(denoiser)
    if sigmas is None:
        sigmas = torch.logspace(-2, 1, 13, dtype=torch.float64).tolist()
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(not (math.isfinite(s) and s > 0) for s in sigmas):
        raise ValueError(f"sigmas must be finite and > 0, got {sigmas}")
    d = x0[0].numel()
    rows = {k: [] for k in ("mse_model", "mse_oracle", "irreducible", "gap")}
    for s in sigmas:
        acc = dict.fromkeys(rows, 0.0)
        for i in range(0, x0.shape[0], batch_size):
            xb = x0[i:i + batch_size]
            n = torch.randn(xb.shape, generator=generator, dtype=torch.float64)
            xh = xb + s * n
            dm = denoiser(xh.to(dev, torch.float32), s).to("cpu", torch.float64)
            if not bool(torch.isfinite(dm).all()):
                raise FloatingPointError(f"denoiser returned a non-finite value at sigma={s}")
            do = oracle.denoise(xh, s)
            acc["mse_model"] += float(((dm - xb) ** 2).sum())
            acc["mse_oracle"] += float(((do - xb) ** 2).sum())
            acc["irreducible"] += float(oracle.posterior_cov_trace(xh, s).sum())
            acc["gap"] += float(((dm - do) ** 2).sum())
        for k in rows:
            rows[k].append(acc[k] / (x0.shape[0] * d))
    rel = [g / max(r, 1e-300) for g, r in zip(rows["gap"], rows["irreducible"])]
    return GapCurve(sigmas=sigmas, relative=rel, summary=float(sum(rel) / len(rel)), **rows)


# ----------------------------------------------------------------------------- likelihood


def dataset_bits_per_dim(denoiser, x: Tensor, *, levels: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                      probes: int = 1, rtol: float = 1e-4, atol: float = 1e-4, batch_size: int = 100,
                      generator: torch.Generator | None = None, progress: bool = False) -> dict:
    """Dequantized test-set bits/dim through the PF-ODE likelihood (Hutchinson trace with ``probes``).

    ``x``: (N, C, H, W) images in [-1, 1] on the grid of ``levels`` values k * 2/(levels-1) - 1
    (digits: 17 levels, MNIST: 256). Returns {"mean", "stderr", "n"}; an upper bound on the
    discrete negative log-likelihood in bits per dimension (see :mod:`diffusionlens.likelihood.bpd`).
    """
    from .likelihood import bits_per_dim, dequantize, evaluate, log_likelihood

    k = _levels_of(x, levels).reshape(x.shape)
    dim = x[0].numel()
    dev = device_of(denoiser)

    def per_batch(kb: Tensor) -> Tensor:
        xd = dequantize(kb, generator, levels=levels)
        ll = log_likelihood(denoiser, xd.to(dev, torch.float32), sigma_min=sigma_min, sigma_max=sigma_max,
                            divergence="hutchinson", probes=probes, rtol=rtol, atol=atol, generator=generator)
        return bits_per_dim(ll.cpu().double(), dim, levels=levels)

    s = evaluate(per_batch, k, batch_size=batch_size, progress=progress, desc="bits/dim")
    return {"mean": s.mean, "stderr": s.stderr, "n": s.n, "probes": probes, "rtol": rtol}


def _levels_of(x: Tensor, levels: int) -> Tensor:
    """The integer levels k of images on the grid k * 2/(levels-1) - 1 of [-1, 1]; ValueError otherwise."""
    if not (isinstance(levels, int) and levels >= 2):
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    u = (_flat(x, "x") + 1) * (levels - 1) / 2
    k = torch.round(u)
    if bool(((k < 0) | (k > levels - 1)).any()) or float((u - k).abs().max()) > 1e-3:
        raise ValueError(f"images are not on the {levels}-level grid k * 2/{levels - 1} - 1 of [-1, 1] "
                         f"(bits/dim is defined for discrete data)")
    return k.long()


def pixel_baselines(train: Tensor, test: Tensor, *, levels: int) -> dict:
    """Bits/dim of two reference models on the test images, in the units of :func:`dataset_bits_per_dim`.

    ``uniform``: every level equally likely, log2(levels) exactly. ``histogram``: each pixel an
    independent categorical fitted to the train split with add-one (Laplace) smoothing, so a level
    unseen in training keeps a finite cost. Both are exact discrete negative log-likelihoods; a
    diffusion model's dequantized bound is an upper bound on its own, so it beats them only by
    modelling the dependence between pixels. Returns {"uniform", "histogram", "histogram_stderr"}.
    """
    ktr, kte = _levels_of(train, levels), _levels_of(test, levels)
    if ktr.shape[1] != kte.shape[1]:
        raise ValueError(f"train and test images differ in size: {ktr.shape[1]} against {kte.shape[1]} values")
    d = ktr.shape[1]
    counts = torch.ones(d, levels, dtype=torch.float64)
    counts.scatter_add_(1, ktr.t(), torch.ones(d, ktr.shape[0], dtype=torch.float64))
    logp = counts.log() - counts.sum(1, keepdim=True).log()
    per_image = -logp.gather(1, kte.t()).sum(0) / (d * math.log(2))
    n = per_image.shape[0]
    stderr = float(per_image.std() / math.sqrt(n)) if n > 1 else math.nan
    return {"uniform": math.log2(levels), "histogram": float(per_image.mean()), "histogram_stderr": stderr}


# ----------------------------------------------------------------------------- one call per data set


def headline_scorer(dataset: str, *, seed: int = 0, projections: int = 256,
                    classifier=None) -> Callable[[Tensor], float]:
    """The headline metric of ``dataset`` as a function of samples, its reference work done once.

    Images: the classifier-feature Fréchet distance to the test split; other data: SW2 to the test
    split. Gives exactly :func:`evaluate_samples`' ``fd`` / ``sw2`` (same seed, directions, features),
    without the floors, for sweeps that score many sample sets (quality vs NFE).
    """
    from .data import load_dataset

    test = load_dataset(dataset, "test", seed=seed)
    shape = tuple(test.data_shape)

    def check(x: Tensor) -> Tensor:
        x = x.detach().cpu()
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"samples have shape {tuple(x.shape[1:])} per item, data set {dataset!r} has {shape}")
        return x

    if test.is_image:
        from .features import extract_features, load_classifier

        clf = classifier if classifier is not None else load_classifier(dataset)
        ref = gaussian_stats(extract_features(clf, test.x))
        return lambda x: frechet_distance(*gaussian_stats(extract_features(clf, check(x))), *ref)
    g = torch.Generator().manual_seed(seed)
    sw = SW2(test.x, directions=torch.randn(projections, test.x[0].numel(), generator=g, dtype=torch.float64))
    return lambda x: sw(check(x))


def headline_floor(dataset: str, n: int, *, seed: int = 0):
    """The floor of ``dataset``'s headline metric at ``n`` samples, as :func:`evaluate_samples` measures it
    beside a set of that size: images, the Fréchet distance of ``n`` train images to the test split (a
    float); other data, the SW2 of exact draws of that size ({"mean", "std", ...})."""
    from .data import load_dataset

    data = load_dataset(dataset, "train", seed=seed)
    if not data.is_image:  # generated data: a draw of that size
        data = load_dataset(dataset, "train", seed=seed, n=n)
    if len(data) < n:
        raise ValueError(f"data set {dataset!r} has {len(data)} train items, fewer than the {n} asked for")
    m = evaluate_samples(data.x[:n], dataset, seed=seed)
    return m["fd_floor"] if "fd" in m else m["sw2_floor"]


def evaluate_samples(samples: Tensor, dataset: str, *, seed: int = 0, repeats: int = 5, projections: int = 256,
                     mmd_reference: int = 2000, classifier=None) -> dict:
    """Every sample-quality metric that applies to ``dataset``, each with its noise floor.

    Images: the classifier-feature Fréchet distance to the test split, the train-vs-test floor and the
    classifier's test accuracy. Toy and oracle data: SW2 to the test split (5,000 points) and MMD^2 to its
    first ``mmd_reference`` points (the kernel sums are quadratic in the sizes), each with
    floors from ``repeats`` fresh exact draws of the same size as ``samples``, and the exact
    log-likelihood where the density is known (with the same quantity for exact samples as the target).
    """
    from .data import load_dataset

    test = load_dataset(dataset, "test", seed=seed)
    samples = samples.detach().cpu()
    if tuple(samples.shape[1:]) != tuple(test.data_shape):
        raise ValueError(f"samples have shape {tuple(samples.shape[1:])} per item, data set {dataset!r} has "
                         f"{tuple(test.data_shape)}")
    n = samples.shape[0]
    if test.is_image:
        # the floor at the same sample size: the Fréchet distance is biased by O(tr Cov / n)
        train = load_dataset(dataset, "train").x
        g = torch.Generator().manual_seed(seed)
        floor = train[torch.randperm(len(train), generator=g)[:n]] if n < len(train) else train
        out = image_frechet(samples, test.x, dataset=dataset, classifier=classifier, floor_samples=floor)
        out["metric"] = "frechet-classifier-features"
        return out
    g = torch.Generator().manual_seed(seed)
    sw_ref = SW2(test.x, directions=torch.randn(projections, test.x[0].numel(), generator=g, dtype=torch.float64))
    ref = test.x[:mmd_reference]
    h = median_bandwidth(ref)

    def sw(a, b):  # b is always test.x, whose sorted projections sw_ref holds
        return sw_ref(a)

    mmd_ref = MMD(ref, bandwidth=h)

    def mmd(a, b):  # b is always test.x, whose kernel term mmd_ref holds
        return mmd_ref(a)

    def draw(r):  # fresh exact samples: a different seed of the data generator's train stream
        return load_dataset(dataset, "train", seed=seed + 1000 + r, n=n).x

    exact = [draw(r) for r in range(repeats)]
    out = {"n_samples": n, "n_reference": int(test.x.shape[0]), "sw2": sw(samples, test.x),
           "mmd2": mmd(samples, ref), "n_mmd_reference": int(ref.shape[0]), "mmd_bandwidth": h,
           "projections": projections}
    out["sw2_floor"] = asdict(noise_floor(sw, lambda r: exact[r], test.x, n, repeats))
    out["mmd2_floor"] = asdict(noise_floor(mmd, lambda r: exact[r], ref, n, repeats))
    ll = log_likelihood_true(samples, dataset)
    if ll is not None:
        out["true_loglik"] = ll
        out["true_loglik_exact"] = log_likelihood_true(exact[0], dataset)
    return out
