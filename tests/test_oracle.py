"""The analytic oracle against independent computations: autograd, brute force, Monte Carlo."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from diffusionlens.oracle import GaussianMixture, random_mixture, ring, standard_cases


def small_full_mixture(d=3, K=4, seed=0):
    return random_mixture(d, K, seed=seed)


CASES = {
    "full": small_full_mixture(),
    "diag": GaussianMixture(torch.randn(3, 4, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64) + 0.1,
                            torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)),
    "scalar": ring(),
    "shared": GaussianMixture([[0.0, 1.0], [2.0, -1.0]], 0.3),
}


def brute_force(gm, x, sigma):
    """log p, score and denoiser from scipy densities and explicit solves (float64, small d)."""
    covs, means, w = gm.covs.numpy(), gm.means.numpy(), gm.weights.numpy()
    d = gm.dim
    comps = [multivariate_normal(means[k], covs[k] + sigma**2 * np.eye(d)) for k in range(len(w))]
    logn = np.stack([c.logpdf(x) for c in comps], -1)
    logn = logn.reshape(len(x), -1)
    joint = logn + np.log(w)
    lse = np.logaddexp.reduce(joint, axis=1)
    r = np.exp(joint - lse[:, None])
    score = np.zeros_like(x)
    D = np.zeros_like(x)
    for k in range(len(w)):
        A = covs[k] + sigma**2 * np.eye(d)
        z = np.linalg.solve(A, (x - means[k]).T).T
        score -= r[:, k : k + 1] * z
        D += r[:, k : k + 1] * (means[k] + (covs[k] @ z.T).T)
    return lse, score, D


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("sigma", [0.0, 0.05, 1.0, 30.0])
def test_matches_brute_force(name, sigma):
    gm = CASES[name]
    g = torch.Generator().manual_seed(3)
    x = gm.sample(50, g) + sigma * torch.randn(50, gm.dim, generator=g, dtype=torch.float64)
    lp, score, D = brute_force(gm, x.numpy(), sigma)
    np.testing.assert_allclose(gm.log_prob(x, sigma).numpy(), lp, rtol=1e-10, atol=1e-10)
    if sigma > 0:
        np.testing.assert_allclose(gm.score(x, sigma).numpy(), score, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(gm.denoise(x, sigma).numpy(), D, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["ring2d", "mix16"])
def test_autograd_of_log_prob_is_score_and_tweedie(name):
    gm = standard_cases()[name]
    g = torch.Generator().manual_seed(0)
    sigma = torch.exp(torch.linspace(math.log(1e-3), math.log(1e3), 64, dtype=torch.float64))
    x = (gm.sample(64, g) + sigma[:, None] * torch.randn(64, gm.dim, generator=g, dtype=torch.float64)).requires_grad_()
    (grad,) = torch.autograd.grad(gm.log_prob(x, sigma).sum(), x)
    score = gm.score(x.detach(), sigma)
    torch.testing.assert_close(grad, score, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gm.denoise(x.detach(), sigma), x.detach() + sigma[:, None] ** 2 * score,
                               rtol=1e-6, atol=1e-6 * (1 + sigma[:, None] ** 2 * score.abs()).max().item())


def test_density_normalizes_in_1d():
    gm = GaussianMixture([[-1.0], [2.0]], [[[0.04]], [[0.5]]], [0.3, 0.7])
    x = torch.linspace(-20, 20, 200_001, dtype=torch.float64)[:, None]
    for sigma in [0.0, 0.5, 3.0]:
        mass = torch.trapezoid(gm.log_prob(x, sigma).exp(), x[:, 0])
        assert abs(mass.item() - 1) < 1e-8


def test_monte_carlo_moments_of_noisy_samples():
    gm = random_mixture(5, 3, seed=2)
    g = torch.Generator().manual_seed(4)
    n, sigma = 400_000, 0.7
    x = gm.sample(n, g) + sigma * torch.randn(n, 5, generator=g, dtype=torch.float64)
    cov = gm.cov() + sigma**2 * torch.eye(5, dtype=torch.float64)
    # standard errors: mean ~ sqrt(diag(cov)/n); covariance entries ~ sqrt((C_ii C_jj + C_ij^2)/n) (Gaussian approx.)
    se_mean = (torch.diagonal(cov) / n).sqrt()
    assert bool(((x.mean(0) - gm.mean()).abs() < 5 * se_mean).all())
    dv = torch.diagonal(cov)
    se_cov = ((dv[:, None] * dv[None] + cov**2) / n).sqrt() * 2  # x2: mixtures have heavier tails than Gaussians
    assert bool(((torch.cov(x.T) - cov).abs() < 5 * se_cov).all())


def test_posterior_mean_is_mse_minimiser():
    """E||x0 - D(x)||^2 equals the mean of tr Cov[x0|x], and beats any perturbation of D."""
    gm = ring()
    g = torch.Generator().manual_seed(5)
    n, sigma = 200_000, 0.3
    x0 = gm.sample(n, g)
    x = x0 + sigma * torch.randn(n, 2, generator=g, dtype=torch.float64)
    D = gm.denoise(x, sigma)
    err = ((x0 - D) ** 2).sum(1)
    tr = gm.posterior_cov_trace(x, sigma)
    assert abs(err.mean().item() - tr.mean().item()) < 5 * err.std().item() / math.sqrt(n)
    worse = ((x0 - 1.05 * D) ** 2).sum(1).mean()
    assert worse > err.mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stable_over_sigma_range_and_d256(dtype):
    gm = random_mixture(256, 6, seed=7)
    g = torch.Generator().manual_seed(6)
    sigma = torch.tensor([1e-4, 1e-2, 1.0, 1e2, 1e4], dtype=dtype)
    x0 = gm.sample(5, g, dtype=dtype)
    x = x0 + sigma[:, None] * torch.randn(5, 256, generator=g, dtype=dtype)
    D, s, lp = gm.denoise(x, sigma), gm.score(x, sigma), gm.log_prob(x, sigma)
    assert bool(torch.isfinite(D).all() and torch.isfinite(s).all() and torch.isfinite(lp).all())
    ref = gm.denoise(x.double(), sigma.double())
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    assert (D.double() - ref).abs().max().item() < tol * (1 + ref.abs().max().item())
    # at large sigma, E[x0|x] = m + Cov[x0] (x - m) / sigma^2 + O(|x|^2 / sigma^4); at tiny sigma it is ~ x
    m, xs = gm.mean(), x[-1].double()
    lin = m + gm.cov() @ (xs - m) / 1e8
    assert (D[-1].double() - lin).abs().max().item() < (1e-3 if dtype == torch.float32 else 1e-6)
    assert (D[0].double() - x[0].double()).abs().max().item() < 1e-3


def test_image_shaped_inputs():
    gm = GaussianMixture(torch.zeros(2, 16), torch.ones(2, 16) * 0.1, data_shape=(1, 4, 4))
    x = gm.sample(3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 4, 4)
    assert gm.denoise(x, 0.5).shape == (3, 1, 4, 4)
    torch.testing.assert_close(gm.denoise(x, 0.5).reshape(3, 16), gm.denoise(x.reshape(3, 16), 0.5))


def test_sample_reproducible_with_generator():
    gm = random_mixture(4, 3, seed=1)
    a = gm.sample(10, torch.Generator().manual_seed(9))
    b = gm.sample(10, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b)


def test_bad_input():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture([[0.0], [1.0]], 1.0, [0.5, 0.6])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture([[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(ValueError, match=r"\(K, d\)"):
        GaussianMixture([0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="covs must have shape"):
        GaussianMixture([[0.0, 1.0]], torch.ones(2, 3))
    gm = ring()
    with pytest.raises(ValueError, match="-0.5"):
        gm.denoise(torch.zeros(3, 2), -0.5)
    with pytest.raises(ValueError, match="sigma must be finite and > 0, got 0.0"):
        gm.score(torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        gm.log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"\(batch,\)"):
        gm.denoise(torch.zeros(3, 2), torch.ones(4))
