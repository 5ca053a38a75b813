"""Noise processes: derivatives against autograd, inverses, SDE coefficients, grids, bad input."""

import math

import numpy as np
import pytest
import torch

from diffusionlens.processes import (
    EDM,
    VE,
    VP,
    DDPMTable,
    Flow,
    SubVP,
    karras_grid,
    logsnr_grid,
    posterior_coefs,
    time_grid,
    timestep_grid,
    timesteps_of,
)

PROCESSES = [
    VP(),
    VP("cosine"),
    SubVP(),
    VE(),
    EDM(),
    Flow(),
    DDPMTable(),
    DDPMTable(schedule="cosine"),
    DDPMTable(T=50, schedule="scaled_linear"),
]
IDS = [repr(p)[:40] for p in PROCESSES]


def interior_times(p, n=64):
    t = torch.linspace(0.02, 0.97, n, dtype=torch.float64)
    if isinstance(p, DDPMTable):  # derivatives are piecewise: stay off the knots k / T
        t = torch.unique((torch.floor(t * p.T) + 0.37) / p.T)
    return t


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_derivatives_match_autograd(p):
    t = interior_times(p).requires_grad_(True)
    for value, deriv in [(p.sigma, p.dsigma), (p.scale, p.dscale), (p.logsnr, p.dlogsnr)]:
        out = value(t)
        g = torch.autograd.grad(out.sum(), t)[0] if out.requires_grad else torch.zeros_like(out)  # constant s
        torch.testing.assert_close(deriv(t.detach()), g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_inverse_and_logsnr(p):
    t = interior_times(p)
    sig = p.sigma(t)
    assert bool((sig[1:] > sig[:-1]).all()), "sigma must increase with t"
    torch.testing.assert_close(p.t_of_sigma(sig), t, rtol=0, atol=1e-10)
    torch.testing.assert_close(p.t_of_logsnr(p.logsnr(t)), t, rtol=0, atol=1e-10)
    torch.testing.assert_close(p.logsnr(t), -2 * torch.log(sig))
    torch.testing.assert_close(p.scale_of_sigma(sig), p.scale(t))


@pytest.mark.parametrize("p", [VP(), VP("cosine"), DDPMTable()], ids=["vp", "vp-cos", "ddpm"])
def test_variance_preserving(p):
    t = interior_times(p)
    s, sig = p.scale(t), p.sigma(t)
    torch.testing.assert_close(s**2 * (1 + sig**2), torch.ones_like(t))


def test_vp_linear_matches_closed_form():
    p = VP()
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    abar = torch.exp(-(0.1 * t + 0.5 * 19.9 * t**2))
    torch.testing.assert_close(p.scale(t) ** 2, abar)
    torch.testing.assert_close((p.scale(t) * p.sigma(t)) ** 2, 1 - abar)


def test_subvp_and_flow_closed_forms():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    p = SubVP()
    abar = torch.exp(-(0.1 * t + 0.5 * 19.9 * t**2))
    torch.testing.assert_close(p.scale(t) * p.sigma(t), 1 - abar)
    f = Flow()
    torch.testing.assert_close(f.scale(t), 1 - t)
    torch.testing.assert_close(f.scale(t) * f.sigma(t), t)
    assert f.sigma_max == math.inf and f.sigma_min == 0
    torch.testing.assert_close(Flow.import_time(Flow.export_time(t)), t)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_sde_reproduces_marginal_variance(p):
    # For dx = f x dt + g dW the variance v of x_t given x0 obeys dv/dt = 2 f v + g^2, with v = (s sigma)^2.
    t = interior_times(p).requires_grad_(True)
    v = (p.scale(t) * p.sigma(t)) ** 2
    (dv,) = torch.autograd.grad(v.sum(), t)
    f, g2 = p.sde(t.detach())
    torch.testing.assert_close(dv, 2 * f * v.detach() + g2, rtol=1e-9, atol=1e-12)


def test_discrete_table_and_timesteps():
    p = DDPMTable()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(p.alphas_cumprod, abar)
    i = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(p.sigma_at(i), torch.sqrt((1 - abar) / abar))
    torch.testing.assert_close(p.timestep(p.sigmas), i, rtol=0, atol=1e-8)
    # interpolation is monotone between knots
    t = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    assert bool((p.sigma(t)[1:] > p.sigma(t)[:-1]).all())


def test_add_noise_any_rank():
    g = torch.Generator().manual_seed(0)
    for shape in [(5, 2), (5, 3, 4, 4)]:
        x0, n = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = torch.rand(5, generator=g)
        for p in [VP(), Flow()]:
            xt = p.add_noise(x0, n, t)
            c = p.coefs(t)
            want = c.scale.view(-1, *[1] * (len(shape) - 1)) * (x0 + c.sigma.view(-1, *[1] * (len(shape) - 1)) * n)
            torch.testing.assert_close(xt, want)
    f = Flow()
    x0, n, t = torch.randn(4, 2), torch.randn(4, 2), torch.rand(4)
    torch.testing.assert_close(f.add_noise(x0, n, t), (1 - t)[:, None] * x0 + t[:, None] * n)


def test_posterior_coefs_match_gaussian_conditioning():
    # Joint of (x_s, x_t) given x0 in scale-free coordinates; condition by the bivariate formula.
    st, ss = torch.tensor([2.0, 0.5]), torch.tensor([0.7, 0.1])
    cx, c0, var = posterior_coefs(st, ss)
    cov_st, var_t, var_s = ss**2, st**2, ss**2
    torch.testing.assert_close(cx, cov_st / var_t)
    torch.testing.assert_close(c0, 1 - cov_st / var_t)
    torch.testing.assert_close(var, var_s - cov_st**2 / var_t)


# ---------------------------------------------------------------- grids


def test_karras_grid_formula():
    s = karras_grid(10, 0.002, 80.0, rho=7.0)
    assert s.shape == (11,) and s[-1] == 0 and s.dtype == torch.float64
    torch.testing.assert_close(s[0], torch.tensor(80.0, dtype=torch.float64))
    torch.testing.assert_close(s[-2], torch.tensor(0.002, dtype=torch.float64))
    # rho-th roots are equally spaced
    d = torch.diff(s[:-1] ** (1 / 7))
    torch.testing.assert_close(d, d[0].expand_as(d))


def test_logsnr_and_time_grids():
    s = logsnr_grid(8, 0.01, 10.0)
    d = torch.diff(torch.log(s[:-1]))
    torch.testing.assert_close(d, d[0].expand_as(d))
    p = VP()
    s = time_grid(p, 8, 0.01, 10.0)
    t = p.t_of_sigma(s[:-1])
    d = torch.diff(t)
    torch.testing.assert_close(d, d[0].expand_as(d))
    assert s[-1] == 0 and abs(s[0].item() - 10) < 1e-9


def test_timestep_spacings_match_diffusers():
    import diffusers  # a test extra (scripts/test.sh installs the peers)
    p = DDPMTable()
    for spacing in ["leading", "trailing", "linspace"]:
        for steps in [10, 50, 7]:
            sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
            sched.set_timesteps(steps)
            np.testing.assert_array_equal(timesteps_of(p, steps, spacing).numpy(), sched.timesteps.numpy())
    grid = timestep_grid(p, 10, "trailing")
    torch.testing.assert_close(grid[:-1], p.sigmas[timesteps_of(p, 10, "trailing")])


# ---------------------------------------------------------------- bad input


def test_bad_input_names_the_value():
    p = VP()
    with pytest.raises(ValueError, match="1.5"):
        p.sigma(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="-0.1"):
        p.coefs(-0.1)
    with pytest.raises(ValueError, match="nan"):
        p.scale(float("nan"))
    with pytest.raises(ValueError, match="-1"):
        p.t_of_sigma(-1.0)
    with pytest.raises(ValueError, match="steps"):
        karras_grid(0)
    with pytest.raises(ValueError, match="sigma_min"):
        logsnr_grid(5, 10.0, 1.0)
    with pytest.raises(ValueError, match="'quadratic'"):
        VP("quadratic")
    with pytest.raises(ValueError, match="beta_min"):
        VP(beta_min=30.0)
    with pytest.raises(ValueError, match="T must be"):
        DDPMTable(T=1)
    with pytest.raises(ValueError, match="'middle'"):
        timestep_grid(DDPMTable(), 10, "middle")
    with pytest.raises(TypeError, match="DDPMTable"):
        timestep_grid(VP(), 10)
    with pytest.raises(ValueError, match="outside"):
        time_grid(VE(), 10, 0.002, 80.0)  # VE's sigma range is [0.01, 50]
