"""Parameterizations: exact round trips over all pairs, targets, implied weights, singular ends."""

import itertools

import pytest
import torch

from diffusionlens.parameterization import (
    Param,
    edm_precond,
    from_denoiser,
    implied_weighting,
    lognormal_logsnr_density,
    target,
    to_denoiser,
    x0_weight,
)
from diffusionlens.processes import EDM, VE, VP, DDPMTable, Flow

PROCESSES = [VP(), VP("cosine"), VE(sigma_lo=1e-3, sigma_hi=1e3), EDM(sigma_lo=1e-3, sigma_hi=1e3), Flow(), DDPMTable()]
SHAPES = [(64, 2), (64, 3, 4, 4)]


def setup(process, shape, seed=0):
    """Random x0, noise and log-uniform sigmas in [1e-3, 1e3] clipped to the process's range."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    n = torch.randn(shape, generator=g, dtype=torch.float64)
    lo, hi = max(process.sigma_min, 1e-3) * 1.0001, min(process.sigma_max, 1e3) * 0.9999
    u = torch.rand(shape[0], generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.log(torch.tensor(lo)) + u * (torch.log(torch.tensor(hi)) - torch.log(torch.tensor(lo))))
    c = process.coefs(process.t_of_sigma(sigma))
    x_hat = x0 + sigma.view(-1, *[1] * (len(shape) - 1)) * n
    return x0, n, x_hat, c


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=["rank2", "rank4"])
def test_round_trips_all_pairs(process, shape):
    _, _, x_hat, c = setup(process, shape)
    D = torch.randn_like(x_hat)
    for a, b in itertools.product(Param, Param):
        out_a = from_denoiser(a, D, x_hat, c)
        out_b = from_denoiser(b, to_denoiser(a, out_a, x_hat, c), x_hat, c)
        want = from_denoiser(b, D, x_hat, c)
        torch.testing.assert_close(out_b, want, rtol=1e-9, atol=1e-9 * want.abs().max().item(), msg=f"{a}->{b}")


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_targets_map_to_clean_data(process):
    x0, n, x_hat, c = setup(process, (64, 3, 2, 2))
    for kind in Param:
        torch.testing.assert_close(to_denoiser(kind, target(kind, x0, n, c), x_hat, c), x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(target(Param.EPS, x0, n, c), n)


def test_v_is_salimans_ho_for_vp():
    for process in [VP(), DDPMTable()]:
        x0, n, _, c = setup(process, (64, 5))
        alpha, sigma_t = c.scale[:, None], (c.scale * c.sigma)[:, None]
        torch.testing.assert_close(target(Param.V, x0, n, c), alpha * n - sigma_t * x0)


def test_velocity_is_time_derivative_of_the_path():
    """d x_t / dt along x_t = s(t)(x0 + sigma(t) n) for fixed (x0, n), by autograd, for every process."""
    for process in PROCESSES:
        x0, n, _, c = setup(process, (16, 3))
        t = c.t.clone().requires_grad_(True)
        xt = process.add_noise(x0, n, t)
        vel = torch.stack([torch.autograd.grad(xt[:, j].sum(), t, retain_graph=True)[0] for j in range(3)], 1)
        torch.testing.assert_close(target(Param.VELOCITY, x0, n, c), vel, rtol=1e-8, atol=1e-8)
    x0, n, _, c = setup(Flow(), (16, 3))
    torch.testing.assert_close(target(Param.VELOCITY, x0, n, c), n - x0)


def test_score_target_is_conditional_score_of_x_t():
    # grad_{x_t} log N(x_t; s x0, (s sigma)^2 I) = -(x_t - s x0) / (s sigma)^2 = -n / (s sigma)
    for process in [VP(), VE(), Flow()]:
        x0, n, _, c = setup(process, (32, 4))
        torch.testing.assert_close(target(Param.SCORE, x0, n, c), -n / (c.scale * c.sigma)[:, None])


def test_x0_weight_is_squared_slope():
    for process in PROCESSES:
        _, _, x_hat, c = setup(process, (32, 2))
        D = torch.randn_like(x_hat)
        for kind in Param:
            slope = from_denoiser(kind, D + 1, x_hat, c) - from_denoiser(kind, D, x_hat, c)
            torch.testing.assert_close(slope[:, 0] ** 2, x0_weight(kind, c), rtol=1e-6, atol=0)


def test_edm_preconditioning_unit_variance():
    # c_in makes the network input unit-variance and c_out the training target unit-variance for data std sigma_data.
    g = torch.Generator().manual_seed(1)
    sd = 0.5
    x0 = sd * torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    n = torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    for s in [0.01, 1.0, 50.0]:
        sigma = torch.full((200_000,), s, dtype=torch.float64)
        c_skip, c_out, c_in, _ = edm_precond(sigma, sd)
        c = EDM().coefs(EDM().t_of_sigma(sigma).clamp(0, 1))
        c = type(c)(t=c.t, sigma=sigma, scale=c.scale, dsigma=c.dsigma, dscale=c.dscale)
        assert abs((c_in[:, None] * (x0 + s * n)).std().item() - 1) < 0.01
        assert abs(target(Param.EDM, x0, n, c, sd).std().item() - 1) < 0.01


def test_implied_weighting_eps_uniform_t():
    # eps-MSE (x0 weight e^lambda) with uniform t: w(lambda) = p(lambda) = 1/|dlambda/dt|.
    p = VP("cosine")
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    c = p.coefs(t)
    density = 1 / p.dlogsnr(t).abs()
    torch.testing.assert_close(implied_weighting(Param.EPS, c, density), density)
    # v-MSE: w = p(lambda) (1 + e^-lambda) ... = p(lambda) (1 + sigma^2)
    torch.testing.assert_close(implied_weighting(Param.V, c, density), density * (1 + c.sigma**2))
    w = implied_weighting(Param.EDM, c, lognormal_logsnr_density(p.logsnr(t)), normalize=True)
    assert w.max().item() == 1.0


def test_unknown_parameterization():
    with pytest.raises(ValueError, match="'noise'.*'eps', 'x0', 'v', 'score', 'velocity', 'edm'"):
        Param.parse("noise")
