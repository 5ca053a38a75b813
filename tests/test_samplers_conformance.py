"""Conformance with the two reference clients, on the exact oracle denoiser and the same grid.

diffusers' schedulers run in a VP model's own coordinates (x_t = alpha x_hat, alpha = 1/sqrt(1 +
sigma^2)) with an eps-prediction model and their timestep convention; the oracle is wrapped as such
a model, and the scheduler's own sigma table (from ``DDPMTable()``'s betas) is handed to our
sampler. k-diffusion's samplers take the canonical denoiser directly. Both libraries are test-only
dependencies, installed by the README's test command (``scripts/test.sh``: ``setup.sh --test --peers``);
without them these tests fail rather than pass silently. Tolerances: k-diffusion computes in the data's float64
(1e-10); diffusers keeps its alpha-bar table and several step coefficients in float32, so its result
carries float32 rounding (relative 1e-6 per coefficient, amplified mildly over ~10 steps: 1e-4).
"""

import math

import diffusers
import pytest
import torch

from diffusionlens.oracle import random_mixture, ring
from diffusionlens.processes import DDPMTable, timestep_grid
from diffusionlens.samplers import ddim, deis, dpmpp_2m, dpmpp_3m, euler, heun, lms, lms_coefficients_log, unipc

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _k():
    from benchmarks.peers import k_sampling

    return k_sampling()


def _noise(gm, n=64, seed=0):
    return torch.randn(n, gm.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _heun_edm(*a, **k):
    return heun(*a, form="edm", **k)


@pytest.mark.parametrize(
    "name,ours",
    [("sample_euler", euler), ("sample_heun", _heun_edm), ("sample_dpmpp_2m", dpmpp_2m), ("sample_lms", lms)],
)
@pytest.mark.parametrize("steps", [5, 12])
def test_k_diffusion(name, ours, steps):
    K = _k()
    gm = random_mixture(4, 5, seed=3)
    sigmas = K.get_sigmas_karras(steps, 0.002, 80.0, rho=7.0, device="cpu").double()
    x = _noise(gm) * sigmas[0]
    theirs = getattr(K, name)(gm, x.clone(), sigmas, disable=True)
    mine = ours(gm, x.clone(), sigmas)
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)


def test_k_diffusion_dpmpp_3m_ode_is_3m_sde_with_eta0():
    """k-diffusion's 3M lives only in ``sample_dpmpp_3m_sde``; eta = 0 is the ODE solver."""
    K = _k()
    gm = ring()
    sigmas = K.get_sigmas_exponential(9, 0.002, 80.0).double()
    x = _noise(gm) * sigmas[0]
    theirs = K.sample_dpmpp_3m_sde(gm, x.clone(), sigmas, eta=0.0, disable=True)
    torch.testing.assert_close(dpmpp_3m(gm, x.clone(), sigmas, peer_3m=True), theirs, rtol=1e-10, atol=1e-10)


def _eps_model(gm, sigma_of_call):
    """The oracle as a diffusers eps-prediction model on VP x_t; sigma_of_call() gives the scheduler's sigma."""

    def model(x_t, timestep):
        sigma = float(sigma_of_call())
        x_hat = x_t * math.sqrt(1 + sigma**2)
        return (x_hat - gm.denoise(x_hat, sigma)) / sigma

    return model


def _scheduler(cls, **kw):
    betas = DDPMTable().betas.numpy()
    return cls(num_train_timesteps=1000, trained_betas=betas, prediction_type="epsilon", **kw)


def _run_diffusers(sched, gm, noise, steps, *, vp_input: bool):
    """Run a diffusers scheduler; returns (x0, the scheduler's distinct sigma grid in float64)."""
    sched.set_timesteps(steps)
    if hasattr(sched, "sigmas") and sched.sigmas is not None and len(sched.sigmas) > 1:
        sig = sched.sigmas.double()
    else:  # DDIM: sigma at each timestep from the scheduler's own alpha-bar table, then 0
        abar = sched.alphas_cumprod.double()[sched.timesteps]
        sig = torch.cat([torch.sqrt((1 - abar) / abar), torch.zeros(1, dtype=torch.float64)])
    calls = {"k": 0}

    def sigma_of_call():  # one model call per scheduler step (Heun's sigmas are interleaved to match)
        return sig[calls["k"]]

    model = _eps_model(gm, sigma_of_call)
    x_hat0 = noise * sig[0]
    x = x_hat0 / math.sqrt(1 + float(sig[0]) ** 2) if vp_input else x_hat0
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t) if not vp_input else x
        eps = model(x_in, t)
        x = sched.step(eps, t, x).prev_sample
        calls["k"] += 1
    return x, torch.unique_consecutive(sig)


@pytest.mark.parametrize("steps", [6, 10])
def test_diffusers_euler(steps):
    gm = ring()
    sched = _scheduler(diffusers.EulerDiscreteScheduler)
    noise = _noise(gm)
    theirs, sig = _run_diffusers(sched, gm, noise, steps, vp_input=False)
    mine = euler(gm, noise * sig[0], sig)
    torch.testing.assert_close(mine, theirs.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [6, 10])
def test_diffusers_euler_karras(steps):
    gm = random_mixture(4, 5, seed=3)
    sched = _scheduler(diffusers.EulerDiscreteScheduler, use_karras_sigmas=True)
    noise = _noise(gm)
    theirs, sig = _run_diffusers(sched, gm, noise, steps, vp_input=False)
    torch.testing.assert_close(euler(gm, noise * sig[0], sig), theirs.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [6, 10])
def test_diffusers_heun(steps):
    gm = ring()
    sched = _scheduler(diffusers.HeunDiscreteScheduler)
    noise = _noise(gm)
    theirs, sig = _run_diffusers(sched, gm, noise, steps, vp_input=False)
    assert len(sig) == steps + 1
    torch.testing.assert_close(heun(gm, noise * sig[0], sig, form="edm"), theirs.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [10, 50])
def test_diffusers_ddim_on_the_integer_grid(steps):
    gm = ring()
    sched = _scheduler(diffusers.DDIMScheduler, clip_sample=False)  # thresholding is a denoiser wrapper here
    noise = _noise(gm)
    theirs, sig = _run_diffusers(sched, gm, noise, steps, vp_input=True)
    # the same grid is our timestep_grid on the DDPMTable() table; diffusers' float32 alpha-bar makes
    # 1 - abar at abar = 1 - 1e-4 (timestep 0) good to 2^-24 / 1e-4 = 6e-4 relative, 3e-4 after the sqrt
    torch.testing.assert_close(sig, timestep_grid(DDPMTable(), steps, "leading"), rtol=3e-4, atol=0)
    torch.testing.assert_close(ddim(gm, noise * sig[0], sig), theirs.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [8, 20])
def test_diffusers_dpm_solver_multistep(order, steps):
    gm = random_mixture(4, 5, seed=3)
    sched = _scheduler(diffusers.DPMSolverMultistepScheduler, solver_order=order, lower_order_final=False)
    noise = _noise(gm)
    theirs, sig = _run_diffusers(sched, gm, noise, steps, vp_input=True)
    opts = {} if order == 2 else {"peer_3m": True}  # their third-order weight is half the exact one
    mine = (dpmpp_2m if order == 2 else dpmpp_3m)(gm, noise * sig[0], sig, solver_type="midpoint", **opts)
    torch.testing.assert_close(mine, theirs.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [8, 20])
def test_diffusers_unipc(order, steps):
    gm = random_mixture(4, 5, seed=3)
    sched = _scheduler(diffusers.UniPCMultistepScheduler, solver_order=order)
    noise = _noise(gm)
    theirs, sig = _run_diffusers(sched, gm, noise, steps, vp_input=True)
    mine = unipc(gm, noise * sig[0], sig, order=order)
    torch.testing.assert_close(mine, theirs.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order,steps", [(2, 8), (2, 20), (3, 8)])
def test_diffusers_deis(order, steps):
    # (3, 20) differs in a few samples near mode boundaries by up to 6e-3: diffusers evaluates its
    # third-order weights in float32 (relative error up to 8e-6, see the coefficient test below)
    gm = random_mixture(4, 5, seed=3)
    sched = _scheduler(diffusers.DEISMultistepScheduler, solver_order=order, lower_order_final=False)
    noise = _noise(gm)
    theirs, sig = _run_diffusers(sched, gm, noise, steps, vp_input=True)
    torch.testing.assert_close(deis(gm, noise * sig[0], sig, order=order), theirs.double(), rtol=1e-4, atol=1e-4)


def test_deis_weights_match_the_closed_form_log_rho_integrals():
    """diffusers' DEIS ``ind_fn`` antiderivatives (Zhang & Chen 2023), evaluated in float64, against
    our Gauss-Legendre weights, for second and third order on steps of 0.05 to 2 in log sigma."""
    L = math.log

    def ind2(t, b, c):
        return t * (-L(c) + L(t) - 1) / (L(b) - L(c))

    def ind3(t, b, c, d):
        num = t * (L(c) * (L(d) - L(t) + 1) - L(d) * L(t) + L(d) + L(t) ** 2 - 2 * L(t) + 2)
        return num / ((L(b) - L(c)) * (L(b) - L(d)))

    for h in (0.05, 0.5, 2.0):
        s0, s1, s2, st = 3.0, 3.0 * math.exp(1.3 * h), 3.0 * math.exp(2.1 * h), 3.0 * math.exp(-h)
        w2 = lms_coefficients_log([s0, s1], s0, st)
        ref2 = [ind2(st, s0, s1) - ind2(s0, s0, s1), ind2(st, s1, s0) - ind2(s0, s1, s0)]
        w3 = lms_coefficients_log([s0, s1, s2], s0, st)
        ref3 = [ind3(st, s0, s1, s2) - ind3(s0, s0, s1, s2), ind3(st, s1, s2, s0) - ind3(s0, s1, s2, s0),
                ind3(st, s2, s0, s1) - ind3(s0, s2, s0, s1)]
        for a, b in zip(w2 + w3, ref2 + ref3):
            assert abs(a - b) < 1e-12 * max(1.0, abs(b)), (h, w2, ref2, w3, ref3)
