"""Evaluation metrics against closed forms and exact samples; the shipped feature classifier."""

from __future__ import annotations

import math

import pytest
import torch

from diffusionlens.data import load_dataset
from diffusionlens.evaluate import (
    MMD,
    SW2,
    dataset_bits_per_dim,
    evaluate_samples,
    expectation_gap,
    frechet_distance,
    gaussian_stats,
    headline_scorer,
    image_frechet,
    log_likelihood_true,
    median_bandwidth,
    mmd2,
    noise_floor,
    sliced_wasserstein,
    true_density,
)
from diffusionlens.features import load_classifier, save_classifier
from diffusionlens.features.classifier import _accuracy, train_classifier
from diffusionlens.likelihood import bits_per_dim, dequantize
from diffusionlens.oracle import GaussianMixture, ring

pytestmark = pytest.mark.usefixtures("one_thread")


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


# ----------------------------------------------------------------------------- Fréchet distance


@pytest.mark.parametrize("d", [1, 3, 16])
def test_frechet_commuting_covariances_closed_form(d):
    # S_i = Q diag(l_i) Q^T commute, so tr (S1^1/2 S2 S1^1/2)^1/2 = sum sqrt(l1 l2) and
    # FD = ||mu1 - mu2||^2 + sum (sqrt l1 - sqrt l2)^2.
    g = torch.Generator().manual_seed(d)
    Q = _rotation(d, d + 100)
    l1 = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.01
    l2 = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.01
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    S1, S2 = Q @ torch.diag(l1) @ Q.T, Q @ torch.diag(l2) @ Q.T
    exact = float(((mu1 - mu2) ** 2).sum() + ((l1.sqrt() - l2.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, S1, mu2, S2) == pytest.approx(exact, rel=1e-10, abs=1e-12)
    assert frechet_distance(mu2, S2, mu1, S1) == pytest.approx(exact, rel=1e-10, abs=1e-12)
    assert frechet_distance(mu1, S1, mu1, S1) == pytest.approx(0.0, abs=1e-10)


def test_frechet_non_commuting_matches_w2_of_gaussians_in_2d():
    # 2x2 closed form: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for PSD M = S1^1/2 S2 S1^1/2, and
    # tr M = tr(S1 S2), det M = det S1 det S2.
    S1 = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    S2 = torch.tensor([[0.4, -0.2], [-0.2, 1.5]], dtype=torch.float64)
    cross = math.sqrt(float(torch.trace(S1 @ S2)) + 2 * math.sqrt(float(torch.det(S1) * torch.det(S2))))
    mu1, mu2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.0])
    exact = 0.25 + 4.0 + float(torch.trace(S1) + torch.trace(S2)) - 2 * cross
    assert frechet_distance(mu1, S1, mu2, S2) == pytest.approx(exact, rel=1e-12)


def test_frechet_singular_covariance_and_stats():
    # rank-deficient covariances are PSD: no NaN, and N(0, diag(1, 0)) vs N(0, diag(0, 1)) gives 1 + 1
    assert frechet_distance(torch.zeros(2), torch.diag(torch.tensor([1.0, 0.0])), torch.zeros(2),
                            torch.diag(torch.tensor([0.0, 1.0]))) == pytest.approx(2.0, abs=1e-12)
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    mu, cov = gaussian_stats(x)
    assert torch.allclose(mu, x.double().mean(0))
    assert torch.allclose(cov, torch.cov(x.double().T), atol=1e-12)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(torch.zeros(2), torch.eye(2) * math.nan, torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(torch.zeros(1, 4))


# ----------------------------------------------------------------------------- SW2 and MMD


def test_sliced_wasserstein_of_a_translation_is_exact():
    # in 1-D, W2(a, a + c) = |c| exactly, so SW2(x, x + v)^2 = mean_theta (theta . v)^2
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 4, generator=g, dtype=torch.float64)
    v = torch.tensor([0.3, -1.0, 0.5, 2.0], dtype=torch.float64)
    dirs = torch.randn(64, 4, generator=g, dtype=torch.float64)
    theta = dirs / dirs.norm(dim=1, keepdim=True)
    exact = float((theta @ v).pow(2).mean().sqrt())
    assert sliced_wasserstein(x, x + v, directions=dirs) == pytest.approx(exact, rel=1e-10)
    # over the sphere E (theta . v)^2 = |v|^2 / d
    sw = sliced_wasserstein(x, x + v, projections=20000, generator=g)
    assert sw == pytest.approx(float(v.norm()) / 2, rel=0.03)


def test_sliced_wasserstein_unequal_sizes():
    # the empirical measure of a and of a repeated twice are the same: distance 0
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(2))
    assert sliced_wasserstein(x, torch.cat([x, x]), projections=16) == pytest.approx(0.0, abs=1e-7)
    # {0, 1} vs {0, 1, 2}: quantile functions differ by 1 on [1/3, 1/2) and [2/3, 1): W2^2 = 1/6 + 1/3
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [1.0], [2.0]])
    assert sliced_wasserstein(a, b, directions=torch.ones(1, 1)) == pytest.approx(math.sqrt(0.5), rel=1e-12)
    with pytest.raises(ValueError, match="different dimensions"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3))


def test_sliced_wasserstein_unequal_sizes_against_merged_quantiles():
    # brute force: the two quantile functions are constant between the merged breakpoints i/n, j/m
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(37, 1, generator=g, dtype=torch.float64), 2 + 0.5 * torch.randn(101, 1, generator=g,
                                                                                           dtype=torch.float64)
    qa, qb = a[:, 0].sort().values, b[:, 0].sort().values
    f64 = torch.float64
    u = torch.unique(torch.cat([torch.arange(38, dtype=f64) / 37, torch.arange(102, dtype=f64) / 101]))
    mid, w = 0.5 * (u[1:] + u[:-1]), u[1:] - u[:-1]
    brute = float((w * (qa[(mid * 37).long()] - qb[(mid * 101).long()]) ** 2).sum())
    one = torch.ones(1, 1)
    assert sliced_wasserstein(a, b, directions=one) ** 2 == pytest.approx(brute, rel=1e-10)
    assert sliced_wasserstein(b, a, directions=one) ** 2 == pytest.approx(brute, rel=1e-10)
    x, y = torch.randn(50, 3, generator=g), torch.randn(80, 3, generator=g)
    dirs = torch.randn(16, 3, generator=g)
    assert SW2(y, directions=dirs)(x) == pytest.approx(sliced_wasserstein(y, x, directions=dirs), rel=1e-10)


def test_mmd_unbiased_and_cached_reference():
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(400, 2, generator=g)
    h = median_bandwidth(ref)
    # median distance of N(0, I_2) pairs: |x - y| ~ sqrt(2) * Rayleigh, median sqrt(2) * sqrt(2 ln 2)
    assert h == pytest.approx(math.sqrt(2) * math.sqrt(2 * math.log(2)), rel=0.1)
    x = torch.randn(300, 2, generator=g)
    assert MMD(ref, bandwidth=h)(x) == pytest.approx(mmd2(x, ref, bandwidth=h), rel=1e-12, abs=1e-15)
    # unbiased: over independent repeats the mean is 0 within its standard error
    vals = torch.tensor([mmd2(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g), bandwidth=h)
                         for _ in range(30)], dtype=torch.float64)
    assert abs(float(vals.mean())) < 4 * float(vals.std()) / math.sqrt(len(vals))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2(x, ref, bandwidth=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        mmd2(x * math.inf, ref, bandwidth=1.0)
    with pytest.raises(ValueError, match="identical"):
        median_bandwidth(torch.ones(10, 2))


def test_noise_floor_logic():
    draws = [torch.full((4, 1), float(r)) for r in range(3)]
    fl = noise_floor(lambda a, b: float(a.mean() - b.mean()), lambda r: draws[r], torch.zeros(4, 1), 4, repeats=3)
    assert (fl.mean, fl.std, fl.repeats) == (pytest.approx(1.0), pytest.approx(1.0), 3)
    with pytest.raises(ValueError, match="expected 5"):
        noise_floor(lambda a, b: 0.0, lambda r: draws[r], torch.zeros(4, 1), 5, repeats=2)


def test_evaluate_samples_floor_separates_exact_from_shifted():
    n = 1000
    exact = load_dataset("ring8", "train", seed=77, n=n).x
    ev = evaluate_samples(exact, "ring8", repeats=10)
    sw, mm = ev["sw2_floor"], ev["mmd2_floor"]
    # exact samples are one more draw of the floor's law: within its spread. The spread is estimated
    # from 10 draws (s / std > 0.48 with 99 % probability), so 6 estimated stds are > 2.9 true ones.
    assert ev["sw2"] < sw["mean"] + 6 * sw["std"]
    assert abs(ev["mmd2"] - mm["mean"]) < 6 * mm["std"]
    # a shift by a quarter of a mode's spacing is far above it
    bad = evaluate_samples(exact + 0.5, "ring8", repeats=10)
    assert bad["sw2"] > sw["mean"] + 10 * sw["std"]
    assert bad["mmd2"] > mm["mean"] + 10 * mm["std"]
    # exact samples and the truth: equal mean log-density within standard errors
    t, e = ev["true_loglik"], ev["true_loglik_exact"]
    assert abs(t["mean"] - e["mean"]) < 4 * math.hypot(t["stderr"], e["stderr"])
    assert bad["true_loglik"]["mean"] < t["mean"] - 10 * t["stderr"]
    assert headline_scorer("ring8")(exact) == pytest.approx(ev["sw2"], rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        evaluate_samples(torch.zeros(10, 3), "ring8")
    with pytest.raises(ValueError, match="shape"):
        headline_scorer("ring8")(torch.zeros(10, 3))


def test_true_density_matches_the_generators():
    # ring8: the mixture's exact samples and the data generator's have the same mean log-density
    gm = true_density("ring8")
    x_gen = load_dataset("ring8", "test", n=4000).x
    x_gm = gm.sample(4000, torch.Generator().manual_seed(0))
    a, b = log_likelihood_true(x_gen, "ring8"), log_likelihood_true(x_gm, "ring8")
    assert abs(a["mean"] - b["mean"]) < 4 * math.hypot(a["stderr"], b["stderr"])
    assert torch.allclose(x_gen.double().mean(0), torch.zeros(2, dtype=torch.float64), atol=4 * 2.83 / math.sqrt(4000))
    # checkerboard: every exact sample on the support; uniform points on the square half of them
    assert log_likelihood_true(load_dataset("checkerboard", "test").x, "checkerboard")["on_support"] == 1.0
    u = 8 * torch.rand(20000, 2, generator=torch.Generator().manual_seed(1)) - 4
    assert log_likelihood_true(u, "checkerboard")["on_support"] == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(20000))
    assert log_likelihood_true(torch.zeros(3, 2), "moons") is None
    assert true_density("oracle-mix16") is not None
    with pytest.raises(ValueError, match="unknown dataset"):
        true_density("cifar")


# ----------------------------------------------------------------------------- expectation gap


def test_expectation_gap_of_the_oracle_is_zero_and_shifts_are_exact():
    gm = ring()
    x0 = gm.sample(2000, torch.Generator().manual_seed(0))
    sig = [0.02, 0.3, 2.0]
    c = expectation_gap(gm.denoise, gm, x0, sigmas=sig, generator=torch.Generator().manual_seed(1))
    for gap, irr in zip(c.gap, c.irreducible):
        assert gap < 1e-9 * max(irr, 1e-6)  # float32 rounding of the model input only
    assert c.summary < 1e-8
    # a constant offset b of the denoiser: E||D* + b - D*||^2 / d = |b|^2 / d exactly
    b = torch.tensor([0.1, -0.2])
    c2 = expectation_gap(lambda x, s: gm.denoise(x, s) + b.to(x.dtype), gm, x0, sigmas=sig,
                         generator=torch.Generator().manual_seed(1))
    assert c2.gap == pytest.approx([0.025] * 3, rel=1e-5)


def test_expectation_gap_oracle_mse_is_the_posterior_variance():
    # single Gaussian N(0, v I): Cov[x0|x] = v s^2 / (v + s^2) I, and ||D* - x0||^2 / that ~ chi^2_d,
    # so the Monte Carlo MSE matches the irreducible part within 5 relative standard errors sqrt(2 / (N d)).
    d, N, v = 4, 4000, 0.7
    gm = GaussianMixture(torch.zeros(1, d), torch.tensor([v], dtype=torch.float64), data_shape=(1, 2, 2))
    x0 = gm.sample(N, torch.Generator().manual_seed(0))
    c = expectation_gap(gm.denoise, gm, x0, sigmas=[0.1, 1.0], generator=torch.Generator().manual_seed(2))
    for s, mse, irr in zip(c.sigmas, c.mse_oracle, c.irreducible):
        assert irr == pytest.approx(v * s * s / (v + s * s), rel=1e-12)
        assert mse == pytest.approx(irr, rel=5 * math.sqrt(2 / (N * d)))
    with pytest.raises(ValueError, match="sigmas"):
        expectation_gap(gm.denoise, gm, x0, sigmas=[0.0])


# ----------------------------------------------------------------------------- bits/dim


def test_bits_per_dim_of_the_oracle_matches_its_exact_density():
    # images of shape (1, 2, 2) on a 17-level grid; the oracle's PF-ODE likelihood is its log-density
    levels, smin = 17, 0.002
    gm = GaussianMixture(torch.tensor([[0.3, -0.2, 0.1, 0.0], [-0.4, 0.2, 0.0, 0.3]]), torch.tensor([0.2, 0.1]),
                         data_shape=(1, 2, 2))
    x = gm.sample(120, torch.Generator().manual_seed(0)).clamp(-1, 1)
    k = torch.round((x + 1) * (levels - 1) / 2)
    x = (k * 2 / (levels - 1) - 1).float()
    got = dataset_bits_per_dim(gm.denoise, x, levels=levels, sigma_min=smin, sigma_max=80.0, probes=1,
                            generator=torch.Generator().manual_seed(1), batch_size=60)
    g2 = torch.Generator().manual_seed(5)
    ref = bits_per_dim(gm.log_prob(dequantize(k.long(), g2, levels=levels), smin), 4, levels=levels)
    se = math.hypot(got["stderr"], float(ref.std()) / math.sqrt(len(ref)))
    assert got["n"] == 120
    assert abs(got["mean"] - float(ref.mean())) < 4 * se
    with pytest.raises(ValueError, match="grid"):
        dataset_bits_per_dim(gm.denoise, x * 1.5, levels=levels)
    with pytest.raises(ValueError, match="grid"):
        dataset_bits_per_dim(gm.denoise, x + 0.03, levels=levels)


# ----------------------------------------------------------------------------- image metric and the classifier


def test_shipped_classifier_accuracy_and_features():
    clf = load_classifier("digits")
    test, train = load_dataset("digits", "test"), load_dataset("digits", "train")
    acc = _accuracy(clf, test.x, test.y)
    assert abs(acc - clf.test_accuracy) <= 0.005
    assert acc > 0.95
    f = clf.features(test.x[:5])
    assert f.shape == (5, 64) and bool(torch.isfinite(f).all())
    # FD of a set with itself is 0; the train-vs-test floor is small; noise is far from the digits
    assert image_frechet(test.x, test.x, classifier=clf)["fd"] == pytest.approx(0.0, abs=1e-6)
    floor = image_frechet(train.x[:300], test.x, classifier=clf)["fd"]
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert image_frechet(noise, test.x, classifier=clf)["fd"] > 10 * floor
    with pytest.raises(ValueError, match="expected images"):
        clf.features(torch.zeros(2, 64))


def test_shipped_mnist_classifier():
    clf = load_classifier("mnist")
    test = load_dataset("mnist", "test")
    assert abs(_accuracy(clf, test.x, test.y) - clf.test_accuracy) <= 0.005
    assert clf.test_accuracy > 0.95 and clf.features(test.x[:2]).shape == (2, 64)


def test_image_floor_at_the_sample_size():
    # the floor is measured with as many train images as there are samples (FD is biased by O(1/n))
    test = load_dataset("digits", "test")
    ev = evaluate_samples(test.x[:200], "digits")
    assert ev["n_floor"] == 200 and ev["n_samples"] == 200
    assert ev["classifier_test_accuracy"] > 0.95
    # the sweep's cached scorer gives the same number
    assert headline_scorer("digits")(test.x[:200]) == pytest.approx(ev["fd"], rel=1e-12)


def test_corrupt_or_missing_classifier(tmp_path):
    bad = tmp_path / "classifier-digits.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load_classifier("digits", path=bad)
    with pytest.raises(ValueError, match="no feature classifier"):
        load_classifier("moons")


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_train_classifier_reproduces_the_shipped_accuracy(tmp_path, dataset):
    clf, info = train_classifier(dataset, progress=False)
    assert abs(info.test_accuracy - load_classifier(dataset).test_accuracy) <= 0.005
    save_classifier(clf, tmp_path / "c.safetensors", dataset=dataset, info=info)
    again = load_classifier(dataset, path=tmp_path / "c.safetensors")
    assert again.test_accuracy == info.test_accuracy
