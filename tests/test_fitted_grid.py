"""Grids fitted to a model by a pilot solve (diffusionlens.samplers.fitted_grid)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusionlens.ode import solve
from diffusionlens.oracle import GaussianMixture, random_mixture
from diffusionlens.processes import logsnr_grid
from diffusionlens.samplers import ORDER, SAMPLERS, error_density, fitted_grid, make_grid, sample
from diffusionlens.samplers.adaptive import solve_exp_rk32


def _gaussian(s: float, d: int = 4) -> GaussianMixture:
    return GaussianMixture(torch.zeros(1, d, dtype=torch.float64), torch.full((1,), s**2, dtype=torch.float64),
                           torch.ones(1, dtype=torch.float64))


def _spacing_ratio(g) -> float:
    """Largest over smallest step in log sigma of the positive part of a grid."""
    dl = torch.log(g[:-2]) - torch.log(g[1:-1])
    return (dl.max() / dl.min()).item()


def test_structure_and_determinism():
    gm = random_mixture(4, 3, seed=5)
    g = fitted_grid(gm, (4,), 12, 0.01, 50.0, dtype=torch.float64)
    assert g.dtype == torch.float64 and g.shape == (13,)
    assert g[0].item() == 50.0 and g[-2].item() == 0.01 and g[-1].item() == 0.0
    assert bool((g[1:] < g[:-1]).all())
    torch.testing.assert_close(g, fitted_grid(gm, (4,), 12, 0.01, 50.0, dtype=torch.float64), rtol=0, atol=0)
    assert torch.equal(fitted_grid(gm, (4,), 1), torch.tensor([80.0, 0.0], dtype=torch.float64))
    # one pilot, grids of any length and order: the same as fitted_grid's
    dens = error_density(gm, (4,), 0.01, 50.0, dtype=torch.float64)
    assert dens.pilot_nfe > 3 and dens.n.shape == (4096,) and bool((dens.n >= 0).all())
    torch.testing.assert_close(dens.grid(12), g, rtol=0, atol=0)
    # a lower order follows the density more closely (exponent 3 / (p + 1)): more uneven spacing
    assert _spacing_ratio(dens.grid(12, order=1)) > _spacing_ratio(g)


def test_pilot_steps_tile_the_range_and_a_flat_denoiser_gives_the_logsnr_grid():
    gm = random_mixture(4, 3, seed=5)
    trace = []
    solve_exp_rk32(gm, torch.randn(6, 4, dtype=torch.float64) * 50.0, 50.0, 0.01, rtol=1e-3, atol=1e-3, trace=trace)
    a, b = (torch.cat([t[k] for t in trace]) for k in range(2))
    assert abs((b - a).sum().item() - 6 * math.log(50.0 / 0.01)) < 1e-9  # 6 samples, each tiles [lambda0, lambda1]
    # D = 0: the exponential integrator is exact, every error estimate is 0 -> no information -> uniform in log sigma
    g = fitted_grid(lambda x, s: torch.zeros_like(x), (4,), 9, 0.01, 50.0, dtype=torch.float64)
    torch.testing.assert_close(g, logsnr_grid(9, 0.01, 50.0), rtol=1e-12, atol=0)


def test_steps_concentrate_where_the_denoiser_changes():
    """Single Gaussian N(0, s^2 I): along the flow D = s z / sqrt(1 + (sigma/s)^2) changes only for sigma
    within a few multiples of s (its derivatives in log sigma decay like (sigma/s)^-1 above and
    (sigma/s)^2 below), so the densest part of the fitted grid lies within a factor e of s, and the grid is
    far from uniform in log sigma (the log-SNR grid's spacing ratio is 1)."""
    for s in (1.0, 10.0):
        g = fitted_grid(_gaussian(s), (4,), 40, dtype=torch.float64)
        ls = torch.log(g[:-1])
        i = int(torch.argmin(ls[:-1] - ls[1:]))
        densest = math.exp(0.5 * (ls[i] + ls[i + 1]).item())
        assert s / math.e < densest < s * math.e, (s, densest)
        assert _spacing_ratio(g) > 5, s


def test_grid_keeps_the_sampler_convergent():
    """The fitted grid is a fixed smooth map of the step index for every step count, so a multistep
    sampler keeps its global order on it: DEIS is at least second order (its order-1 first step), so
    doubling 32 -> 64 steps must divide the error by about 4 or more (rate > 1.75)."""
    gm = random_mixture(3, 4, seed=1, std_range=(0.3, 0.8))
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s_max, s_min = 80.0, 0.05
    ref, _ = solve(lambda t, y, idx: y - gm(y, torch.exp(t)), noise * s_max, math.log(s_max), math.log(s_min),
                   rtol=1e-12, atol=1e-12)
    dens = error_density(gm, (3,), s_min, s_max, dtype=torch.float64)
    errs = []
    for n in (16, 32, 64):
        x = SAMPLERS["deis"](gm, noise * s_max, dens.grid(n)[:-1])
        errs.append((x - ref).pow(2).mean().sqrt().item())
    assert math.log2(errs[1] / errs[2]) > 1.75, errs


def test_sample_with_a_fitted_grid():
    gm = random_mixture(4, 3, seed=5)
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, info = sample(gm, noise, sampler="unipc", steps=10, grid="fitted", return_info=True)
    assert info.nfe == 10  # the pilot is not part of the samples' NFE
    expect = fitted_grid(gm, (4,), 10, order=ORDER["unipc"], dtype=torch.float64)
    torch.testing.assert_close(info.sigmas, expect, rtol=0, atol=0)
    torch.testing.assert_close(x, sample(gm, noise, sampler="unipc", grid=expect), rtol=0, atol=0)


def test_bad_inputs_raise_naming_the_value():
    gm = random_mixture(4, 3, seed=5)
    for kw, msg in (({"steps": 0}, "steps"), ({"steps": 4, "sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min=5.0"),
                    ({"steps": 4, "order": 0}, "order"), ({"steps": 4, "pilot": 0}, "pilot"),
                    ({"steps": 4, "tol": 2.0}, "tol")):
        with pytest.raises(ValueError, match=msg):
            fitted_grid(gm, (4,), **kw)
    with pytest.raises(ValueError, match="needs the denoiser"):
        make_grid("fitted", 8)
