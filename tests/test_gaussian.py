"""The Gaussian view at large noise: moments measured on the denoiser, the exact Gaussian flow, and
the teleported start of the samplers (samplers.gaussian, stop_grid(teleport=...), sample(teleport=...))."""

import math

import pytest
import torch

from diffusionlens.ode import solve
from diffusionlens.oracle import GaussianMixture, random_mixture
from diffusionlens.samplers import (
    AnalyticStart,
    GaussianModel,
    error_density,
    gaussian_model,
    sample,
    start_candidates,
    stop_grid,
)


def _gaussian(d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = A @ A.T / d + 0.05 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(1, d, generator=g, dtype=torch.float64)
    return GaussianMixture(mean, cov[None])


def test_moments_are_exact_on_gaussian_data():
    """For Gaussian data D is affine at every sigma, so C = sigma^2 J (I - J)^-1 and m hold to rounding."""
    gm = _gaussian()
    G = gaussian_model(gm, (6,), dtype=torch.float64)
    C = gm.cov()
    # autograd differentiates the affine D exactly up to float64 rounding of inputs of size sigma = 80
    # (relative 80 * 1e-16 in J): 1e-12 relative leaves room for the eigen-decomposition
    assert float((G.cov - C).abs().max()) < 1e-12 * float(C.abs().max())
    assert float((G.mean - gm.mean()).abs().max()) < 1e-12


def test_moment_error_on_a_mixture_falls_like_one_over_sigma():
    """Non-Gaussian data: the posterior depends on x_hat at order ||C||^(1/2) ||x_hat|| / sigma^2, so the
    measured covariance is off by about ||C||^(1/2) / sigma relative; ten times sigma, a tenth of it."""
    gm = random_mixture(16, 10, seed=16)
    C = gm.cov()
    scale = math.sqrt(float(torch.linalg.matrix_norm(C, 2)))
    errs = []
    for sigma in (80.0, 800.0):
        G = gaussian_model(gm, (16,), sigma, dtype=torch.float64)
        errs.append(float(torch.linalg.matrix_norm(G.cov - C) / torch.linalg.matrix_norm(C)))
    assert errs[0] < 2 * scale / 80.0
    assert errs[1] < errs[0] / 5  # 1 / sigma: a factor 10, with room for the O(1/sigma^2) remainder


def test_flow_and_denoiser_are_the_exact_ones_for_gaussian_data():
    gm = _gaussian(d=4, seed=1)
    G = GaussianModel.from_moments(gm.mean(), gm.cov())
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80.0
    y, _ = solve(lambda t, y, idx: y - gm(y, torch.exp(t)), x, math.log(80.0), math.log(3.0), rtol=1e-11,
                 atol=1e-11)
    assert float((G.flow(x, 80.0, 3.0) - y).abs().max()) < 1e-8
    assert float((G.denoise(y, 3.0) - gm(y, 3.0)).abs().max()) < 1e-12
    assert torch.equal(G.flow(x, 80.0, 80.0), x)


def test_analytic_start_with_a_model_returns_its_denoiser_once():
    gm = _gaussian(d=3)
    G = GaussianModel.from_moments(gm.mean(), gm.cov())
    calls = []

    def den(x, s):
        calls.append(1)
        return torch.zeros_like(x)

    a = AnalyticStart(den, G, 5.0)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(a(x, torch.full((4,), 5.0)), G.denoise(x, 5.0))
    a(x, torch.full((4,), 5.0))
    assert len(calls) == 1


def test_fitted_grid_cut_at_both_ends():
    gm = random_mixture(4, 3, seed=3)
    dens = error_density(gm, (4,), pilot=16, dtype=torch.float64)
    full = dens.grid(8, 3)
    assert torch.equal(dens.grid(8, 3, sigma_first=80.0), full)
    g = dens.grid(8, 3, sigma_last=0.05, sigma_first=10.0)
    assert g.shape == (9,) and float(g[0]) == 10.0 and float(g[-2]) == 0.05 and float(g[-1]) == 0.0
    assert bool((g[1:] < g[:-1]).all())
    with pytest.raises(ValueError, match="sigma_first"):
        dens.grid(8, 3, sigma_first=100.0)
    with pytest.raises(ValueError, match="sigma_last"):
        dens.grid(8, 3, sigma_last=20.0, sigma_first=10.0)


def test_teleported_stop_search_contains_the_plain_one():
    """Without the analytic start, the candidates at s1 = sigma_max are the plain stop search's, on the
    same pilot: the joint minimum cannot be above the plain one, and the grid starts at a candidate."""
    gm = random_mixture(8, 5, seed=8)
    dens = error_density(gm, (8,), pilot=32, dtype=torch.float64)
    G = gaussian_model(gm, (8,), dtype=torch.float64)
    g_tp, e_tp = stop_grid(gm, dens, "unipc", 5, teleport=G, return_errors=True)
    _, e_plain = stop_grid(gm, dens, "unipc", 5, return_errors=True)
    assert {k[1]: v for k, v in e_tp.items() if k[0] == 80.0} == e_plain
    assert min(e_tp.values()) <= min(e_plain.values())
    assert float(g_tp[0]) in start_candidates(80.0)


def test_sample_teleport_counts_and_improves_at_low_nfe():
    """On a d = 16 mixture at 5 evaluations the teleported start must not lose to the plain stop: both
    are chosen on the same 256-sample pilot, and the teleported search contains the plain one."""
    gm = random_mixture(16, 10, seed=16)
    noise = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, info = sample(gm, noise, sampler="unipc", steps=6, grid="fitted-stop", teleport=True, analytic_start=True,
                     return_info=True)
    assert info.nfe == 5.0
    assert float(info.sigmas[0]) in start_candidates(80.0)
    assert bool(torch.isfinite(x).all())
    G = gaussian_model(gm, (16,), dtype=torch.float64)
    x2 = sample(gm, noise, sampler="unipc", grid=info.sigmas, teleport=G, analytic_start=True)
    assert torch.equal(x, x2)  # an explicit teleported grid is the same run


def test_teleport_errors():
    gm = random_mixture(4, 3, seed=3)
    noise = torch.randn(4, 4, dtype=torch.float64)
    G = gaussian_model(gm, (4,), dtype=torch.float64)
    with pytest.raises(ValueError, match="fitted-stop"):
        sample(gm, noise, grid="karras", teleport=G)
    with pytest.raises(ValueError, match="adaptive"):
        sample(gm, noise, sampler="adaptive", teleport=G)
    with pytest.raises(ValueError, match="sigma_max"):
        sample(gm, noise, grid=torch.tensor([100.0, 1.0, 0.0], dtype=torch.float64), teleport=G)
    with pytest.raises(ValueError, match="data_mean"):
        sample(gm, noise, grid="fitted-stop", teleport=G, analytic_start=True, data_mean=torch.zeros(4))
    with pytest.raises(TypeError, match="teleport"):
        sample(gm, noise, teleport="yes")
    dens = error_density(gm, (4,), pilot=8, dtype=torch.float64)
    with pytest.raises(ValueError, match="one pilot"):
        stop_grid(gm, dens, "deis", 4, teleport=G, pilots=[(gm, dens), (gm, dens)])
    with pytest.raises(ValueError, match="start"):
        stop_grid(gm, dens, "deis", 4, teleport=G, starts=[200.0])
    with pytest.raises(ValueError, match="points"):
        gaussian_model(gm, (4,), points=0)
    with pytest.raises(ValueError, match="shape"):
        G.flow(torch.zeros(2, 5), 80.0, 1.0)
