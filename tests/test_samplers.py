"""Samplers on the exact oracle: step orders, convergence, distributions, round trips, noise, errors.

Orders: a step of a method of order p has local error O(h^{p+1}); fed the exact trajectory (and an
exact history), halving h divides it by 2^{p+1}. Globally the error is O(h^p), except that a
multistep method started at order 1 carries the O(h^2) error of its first step, so DPM-Solver++(3M)
and UniPC (as in every implementation) are globally second order asymptotically — asserted as such.
Distribution checks compare moments with exact samples, with tolerances of 4 standard errors.
"""

import math

import pytest
import torch

from diffusionlens.model import from_timestep_model
from diffusionlens.ode import solve
from diffusionlens.oracle import GaussianMixture, random_mixture, ring
from diffusionlens.processes import DDPMTable, karras_grid, logsnr_grid
from diffusionlens.samplers import (
    DETERMINISTIC,
    SAMPLERS,
    Basis,
    HeunForm,
    NoiseStream,
    ddim,
    ddpm,
    dpmpp_update,
    euler,
    euler_update,
    heun_update,
    lms_coefficients,
    lms_update,
    randn,
    sample,
    unic_update,
    unip_update,
)
from diffusionlens.samplers._common import _mix, _mix_int, _s64, check_grid
from diffusionlens.samplers.adaptive import exp_rk32_step
from diffusionlens.samplers.resolve import LATE_SIGMA_MIN

SMOOTH = random_mixture(3, 4, seed=1, std_range=(0.3, 0.8))  # trajectories without mode switches
_SLOW = pytest.mark.slow


def _exact(gm, x, s0, s1):
    """The exact PF-ODE flow from noise level s0 to s1 (> 0), integrated in log sigma to 1e-12."""
    y, _ = solve(lambda t, y, idx: y - gm(y, torch.exp(t)), x, math.log(s0), math.log(s1), rtol=1e-12, atol=1e-12)
    return y


def _rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


# ----------------------------------------------------------------------------- local orders of the steps


_X_START = torch.randn(16, SMOOTH.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3.0
_TRAJ: dict = {}


def _on_trajectory(sigma: float) -> torch.Tensor:
    """The exact state at noise level sigma on the trajectories from _X_START at sigma = 3 (cached)."""
    key = round(sigma, 12)
    if key not in _TRAJ:
        _TRAJ[key] = _exact(SMOOTH, _X_START, 3.0, sigma)
    return _TRAJ[key]


def _local_errors(update, n_hist, hs=(0.2, 0.1, 0.05), sigma=0.6):
    """Local errors of ``update(x, Ds, sigmas, sigma_next)`` started on the exact trajectory with an
    exact history at sigma e^{j h}, j = 0..n_hist-1; returns the observed rates log2(e(h) / e(h/2))."""
    gm = SMOOTH
    errs = []
    for h in hs:
        sig = [sigma * math.exp(j * h) for j in range(n_hist)]  # most recent first
        xs = [_on_trajectory(s) for s in sig]
        Ds = [gm(x, s) for x, s in zip(xs, sig)]
        s_next = sigma * math.exp(-h)
        args = (xs[0], Ds, sig, s_next)
        x_num = update(*args, xs) if getattr(update, "needs_states", False) else update(*args)
        errs.append(_rms(x_num, _on_trajectory(s_next)))
    return [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


def _dpmpp(order):
    def upd(x, Ds, sig, s_next):
        hist = tuple(zip(Ds[1:], sig[1:]))
        return dpmpp_update(x, Ds[0], sig[0], s_next, hist, order=order)

    return upd


def _heun(form):
    def upd(x, Ds, sig, s_next):
        xe = euler_update(x, Ds[0], sig[0], s_next)
        return heun_update(x, Ds[0], xe, SMOOTH(xe, s_next), sig[0], s_next, form)

    return upd


def _lms(order):
    def upd(x, Ds, sig, s_next, xs):
        hist = tuple((x_ - D) / sg for x_, D, sg in zip(xs, Ds, sig))
        return lms_update(x, hist, sig, s_next)

    upd.needs_states = True
    return upd


def _deis(order):
    def upd(x, Ds, sig, s_next, xs):
        hist = tuple((x_ - D) / sg for x_, D, sg in zip(xs, Ds, sig))
        return lms_update(x, hist, sig, s_next, Basis.LOG_SIGMA)

    upd.needs_states = True
    return upd


def _unip(order):
    def upd(x, Ds, sig, s_next):
        return unip_update(x, Ds[0], sig[0], s_next, tuple(zip(Ds[1:], sig[1:])), order)

    return upd


def _unipc(order):
    """Predictor then corrector with the exact D at the predicted point (UniC-order raises the order by one)."""

    def upd(x, Ds, sig, s_next):
        hist = tuple(zip(Ds[1:], sig[1:]))
        xp = unip_update(x, Ds[0], sig[0], s_next, hist, order)
        return unic_update(x, Ds[0], sig[0], s_next, SMOOTH(xp, s_next), hist, order)

    return upd


def _exp_rk32(high: bool):
    """The exponential RK 3(2) pair of the adaptive sampler: third order (x_high), embedded second (x_low)."""

    def upd(x, Ds, sig, s_next):
        B = x.shape[0]
        lam = torch.full((B,), -math.log(sig[0]), dtype=torch.float64)
        h = torch.full((B,), math.log(sig[0] / s_next), dtype=torch.float64)
        return exp_rk32_step(SMOOTH, x, Ds[0], lam, h)[0 if high else 1]

    return upd


@pytest.mark.parametrize(
    "name,update,n_hist,p",
    [
        ("euler", lambda x, Ds, sig, s: euler_update(x, Ds[0], sig[0], s), 1, 1),
        ("heun", _heun(HeunForm.EXPONENTIAL), 1, 2),
        ("heun_edm", _heun(HeunForm.EDM), 1, 2),
        ("dpmpp_1", _dpmpp(1), 1, 1),
        ("dpmpp_2m", _dpmpp(2), 2, 2),
        ("dpmpp_3m", _dpmpp(3), 3, 3),
        ("unip_2", _unip(2), 2, 2),
        ("unip_3", _unip(3), 3, 3),
        ("unipc_2", _unipc(2), 2, 3),
        ("unipc_3", _unipc(3), 3, 4),
        ("lms_2", _lms(2), 2, 2),
        ("lms_4", _lms(4), 4, 4),
        ("deis_2", _deis(2), 2, 2),
        ("deis_3", _deis(3), 3, 3),
        ("exp_rk3", _exp_rk32(True), 1, 3),
        ("exp_rk3_embedded", _exp_rk32(False), 1, 2),
    ],
)
def test_local_order_of_steps(name, update, n_hist, p):
    # LMS-4's history spans 3 steps in sigma: it reaches its asymptotic rate at smaller h
    rates = _local_errors(update, n_hist, hs=(0.05, 0.025, 0.0125) if name == "lms_4" else (0.2, 0.1, 0.05))
    assert rates[-1] > p + 1 - 0.5, f"{name}: local error rates {rates}, expected about {p + 1}"


def test_lms_coefficients_integrate_polynomials_exactly():
    """Order-k LMS weights integrate every polynomial of degree < k exactly over the step."""
    nodes = [1.0, 1.7, 2.9, 4.4]
    a, b = 1.0, 0.6
    c = lms_coefficients(nodes, a, b)
    for deg in range(4):
        exact = (b ** (deg + 1) - a ** (deg + 1)) / (deg + 1)
        assert abs(sum(ci * t**deg for ci, t in zip(c, nodes)) - exact) < 1e-13


# ----------------------------------------------------------------------------- global convergence


def _global_ref(s_max, s_min):
    key = ("global", s_max, s_min)
    if key not in _TRAJ:
        noise = torch.randn(16, SMOOTH.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        _TRAJ[key] = _exact(SMOOTH, noise * s_max, s_max, s_min)
    return _TRAJ[key]


@pytest.mark.parametrize(
    "name,p",
    [("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("dpmpp_3m", 2), ("unipc", 2), ("lms", 2), ("deis", 2), ("ddim", 1)],
)
def test_global_convergence_order(name, p):
    """Doubling the steps divides the error at sigma_min by ~2^p (3M/UniPC/LMS: 2, from the order-1 start)."""
    gm = SMOOTH
    noise = torch.randn(16, gm.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s_max, s_min = 80.0, 0.05
    ref = _global_ref(s_max, s_min)
    errs = []
    for n in (16, 32, 64):
        x = SAMPLERS[name](gm, noise * s_max, logsnr_grid(n, s_min, s_max)[:-1])
        errs.append(_rms(x, ref))
    rate = math.log2(errs[-2] / errs[-1])
    assert rate > p - 0.5, f"{name}: errors {errs}, rate {rate:.2f}, expected about {p}"
    assert errs[-1] < errs[0]


def test_adaptive_meets_tolerance_and_counts_nfe():
    gm = SMOOTH
    noise = torch.randn(32, gm.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = gm(_exact(gm, noise * 80.0, 80.0, 0.002), 0.002)
    out = {}
    for tol in (1e-3, 1e-4):
        x, info = sample(gm, noise, sampler="adaptive", rtol=tol, atol=tol, return_info=True)
        out[tol] = (_rms(x, ref), info)
    (e3, i3), (e5, i5) = out[1e-3], out[1e-4]
    assert e5 < e3 and e5 < 1e-3
    assert i5.nfe > i3.nfe
    assert i3.nfe_per_sample is not None and abs(i3.nfe_per_sample.double().mean().item() - i3.nfe) < 1e-9


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])  # dpm3 (the default): the test above
def test_adaptive_methods_converge_to_the_exact_flow(method):
    gm = SMOOTH
    noise = torch.randn(8, gm.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = gm(_exact(gm, noise * 80.0, 80.0, 0.002), 0.002)
    errs, nfes = [], []
    for tol in (1e-3, 1e-5):
        x, info = sample(gm, noise, sampler="adaptive", rtol=tol, atol=tol, method=method, return_info=True)
        errs.append(_rms(x, ref))
        nfes.append(info.nfe)
    # tolerance proportionality: the global error is a modest multiple of the local tolerance
    assert errs[1] < errs[0] and errs[1] < 1e-4, errs
    assert nfes[1] > nfes[0]


def test_adaptive_is_per_sample_and_keeps_d_after_rejections():
    gm = ring()
    noise = torch.randn(24, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    seen = []

    def d(x, sigma):
        seen.extend(zip(map(tuple, x.tolist()), sigma.tolist()))
        return gm(x, sigma)

    big, info = sample(d, noise, sampler="adaptive", rtol=1e-4, atol=1e-4, return_info=True)
    small = sample(gm, noise[:5], sampler="adaptive", rtol=1e-4, atol=1e-4)
    assert _rms(big[:5], small) < 1e-12  # a sample's steps do not depend on the rest of the batch
    n = info.nfe_per_sample
    assert int(n.sum()) == len(seen) and bool((n != n[0]).any())
    # NFE = 1 + 3 accepted + 2 rejected + 1 final: some samples had rejections (else n = 1 mod 3) ...
    assert bool(((n - 1) % 3 != 0).any())
    # ... and a rejected step is retried from the same point without evaluating D there again
    assert len(set(seen)) == len(seen)


def test_adaptive_raises_on_bad_method_and_nan():
    gm = SMOOTH
    noise = torch.randn(4, gm.dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="rk45"):
        sample(gm, noise, sampler="adaptive", method="rk45")

    def bad(x, sigma):
        out = gm(x, sigma)
        return torch.where(sigma[:, None] < 1.0, float("nan"), out)

    with pytest.raises(FloatingPointError, match="sigma=0"):
        sample(bad, noise, sampler="adaptive")


# ----------------------------------------------------------------------------- distributions


def _moment_check(gm: GaussianMixture, x: torch.Tensor, n_sd: float = 4.0):
    """Mean and second moments of x against the exact mixture, within n_sd standard errors."""
    n = x.shape[0]
    ref = gm.sample(200_000, torch.Generator().manual_seed(123))
    mu, C = gm.mean(), gm.cov()
    se_mu = torch.sqrt(torch.diagonal(C) / n)
    assert bool(((x.mean(0) - mu).abs() < n_sd * se_mu + 1e-12).all()), (x.mean(0), mu)
    # second moments E[x_i x_j]: standard error from the exact fourth moments (estimated on ref)
    m2 = torch.einsum("bi,bj->ij", x, x) / n
    prod = torch.einsum("bi,bj->bij", ref, ref)
    m2_true, sd2 = C + torch.outer(mu, mu), prod.std(0)
    assert bool(((m2 - m2_true).abs() < n_sd * sd2 / math.sqrt(n) + 1e-12).all()), (m2, m2_true)


def _mode_check(gm: GaussianMixture, x: torch.Tensor):
    """Chi-square check that the nearest-mode frequencies match the weights (well-separated modes)."""
    k = torch.cdist(x, gm.means).argmin(1)
    counts = torch.bincount(k, minlength=gm.n_components).double()
    expected = gm.weights * x.shape[0]
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    dof = gm.n_components - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (counts, expected)  # mean dof, sd sqrt(2 dof)


@pytest.mark.parametrize(
    "name,steps,opts",
    [
        ("unipc", 48, {}),
        ("ddpm", 64, {}),
        ("dpmpp_2m_sde", 48, {}),
        pytest.param("pc", 128, {}, marks=_SLOW),
        pytest.param("dpmpp_3m", 64, {}, marks=_SLOW),
        pytest.param("euler_maruyama", 128, {}, marks=_SLOW),
        pytest.param("dpmpp_3m_sde", 64, {}, marks=_SLOW),
        pytest.param("heun", 48, {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 10.0}, marks=_SLOW),
    ],
)
def test_samples_match_the_mixture(name, steps, opts):
    """Moments (4 standard errors), mode frequencies (chi-square) and the within-mode spread (10%
    allowance for discretization bias; its sampling error is 0.52 / sqrt(n) = 1.2%) of the samples."""
    gm = ring()
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    x = sample(gm, noise, sampler=name, steps=steps, grid="karras", generator=g, **opts)
    _moment_check(gm, x)
    _mode_check(gm, x)
    # within-mode spread: distance to the nearest mean is Rayleigh with scale std (mean std sqrt(pi/2))
    r = torch.cdist(x, gm.means).min(1).values
    assert abs(r.mean().item() / (0.05 * math.sqrt(math.pi / 2)) - 1) < 0.1


@pytest.mark.slow
def test_annealed_langevin_matches_the_mixture():
    gm = ring()
    g = torch.Generator().manual_seed(3)
    x = sample(gm, torch.randn(3000, 2, generator=g, dtype=torch.float64), sampler="langevin", steps=60,
               grid="karras", generator=g, n_steps_each=20)
    _moment_check(gm, x)
    _mode_check(gm, x)


def test_langevin_default_options_sample_the_modes():
    gm = ring()
    g = torch.Generator().manual_seed(3)
    x = sample(gm, torch.randn(300, 2, generator=g, dtype=torch.float64), sampler="langevin", steps=8, generator=g)
    r = torch.cdist(x, gm.means).min(1).values
    assert r.median().item() < 2 * 0.05 * math.sqrt(2 * math.log(2))  # twice the exact median distance


# ----------------------------------------------------------------------------- every sampler, every shape


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_with_defaults_at_few_steps(name):
    """Each entry runs through sample() with default options on points and images without diverging:
    deterministic samplers land near the data; stochastic ones (which need many steps to be accurate)
    at least never amplify beyond the initial noise scale sigma_max (with 6-sd tails)."""
    gm = random_mixture(16, 4, seed=5)
    img = GaussianMixture(gm.means, gm.covs, gm.weights, data_shape=(1, 4, 4))
    bound = 10 * (gm.means.abs().max().item() + 1) if name in DETERMINISTIC else 6 * 80.0
    for model, shape in ((gm, (64, 16)), (img, (64, 1, 4, 4))):
        for steps in (3, 5) if not SAMPLERS[name].spec.adaptive else (None,):
            g = torch.Generator().manual_seed(0)
            x, info = sample(model, torch.randn(shape, generator=g), sampler=name, steps=steps, generator=g,
                             return_info=True)
            assert x.shape == shape and x.dtype == torch.float32
            assert bool(torch.isfinite(x).all()) and x.abs().max().item() < bound
            assert info.nfe >= 1 and info.calls >= 1


def test_default_sampler_and_grids():
    gm = SMOOTH
    noise = torch.randn(4, gm.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, info = sample(gm, noise, return_info=True)  # deis on the Karras grid, 16 steps, stopping at 0.01
    assert info.nfe == 16 and torch.equal(info.sigmas, karras_grid(16, LATE_SIGMA_MIN))
    for name in ("unipc", "dpmpp_2m", "dpmpp_3m_sde"):  # exponential integrators: log-SNR grid
        _, info = sample(gm, noise, sampler=name, steps=7, generator=torch.Generator(), return_info=True)
        assert torch.equal(info.sigmas, logsnr_grid(7)), name
    _, info = sample(gm, noise, sampler=SAMPLERS["unipc"], steps=7, return_info=True)  # by function too
    assert torch.equal(info.sigmas, logsnr_grid(7))
    _, info = sample(gm, noise, sampler="unipc", steps=7, grid="karras", return_info=True)  # explicit wins
    assert torch.equal(info.sigmas, karras_grid(7))


def test_nfe_counts():
    gm = ring()
    noise = torch.randn(10, 2)
    for name, steps, nfe in (("euler", 7, 7), ("dpmpp_3m", 7, 7), ("heun", 7, 13), ("pc", 7, 13), ("langevin", 4, 41)):
        _, info = sample(gm, noise, sampler=name, steps=steps, return_info=True)
        assert info.nfe == nfe, name


# ----------------------------------------------------------------------------- relations between samplers


def test_ddim_eta0_is_euler_and_eta1_is_ddpm():
    gm = ring()
    sig = karras_grid(10)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sig[0]
    torch.testing.assert_close(ddim(gm, x, sig), euler(gm, x, sig), rtol=1e-12, atol=1e-12)
    seeds = NoiseStream.make(torch.Generator().manual_seed(1), x).seeds
    torch.testing.assert_close(ddim(gm, x, sig, eta=1.0, generator=seeds), ddpm(gm, x, sig, generator=seeds))


def test_ddpm_one_step_matches_the_posterior_moments():
    """From x at sigma with D = x0 known, a DDPM step has the Gaussian posterior's mean and variance."""
    x0 = torch.tensor([[0.3, -0.2]], dtype=torch.float64).expand(20000, 2)
    x = x0 + 2.0 * torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = ddpm(lambda y, s: x0, x, torch.tensor([2.0, 0.5]), generator=torch.Generator().manual_seed(1))
    r = (0.5 / 2.0) ** 2
    resid = out - (r * x + (1 - r) * x0)
    var = 0.5**2 * (1 - r)
    assert abs(resid.var().item() / var - 1) < 4 * math.sqrt(2 / resid.numel())
    assert abs(resid.mean().item()) < 4 * math.sqrt(var / resid.numel())


# ----------------------------------------------------------------------------- encoding round trip


@pytest.mark.parametrize("name,p", [("dpmpp_2m", 2), pytest.param("heun", 2, marks=_SLOW),
                                    pytest.param("unipc", 2, marks=_SLOW)])
def test_encode_decode_round_trip(name, p):
    """Integrating the PF-ODE data -> noise (increasing grid) and back recovers x; the error falls as h^p."""
    gm = SMOOTH
    s_min, s_max = 0.05, 80.0
    g = torch.Generator().manual_seed(2)
    x = gm.sample(16, g) + s_min * torch.randn(16, gm.dim, generator=g, dtype=torch.float64)
    errs = []
    for n in (20, 40, 80):
        up = logsnr_grid(n, s_min, s_max)[:-1].flip(0)
        z = SAMPLERS[name](gm, x, up)
        errs.append(_rms(SAMPLERS[name](gm, z, up.flip(0)), x))
    assert errs[-1] < 1e-3
    assert math.log2(errs[-2] / errs[-1]) > p - 0.5, errs
    # the encoding itself is the exact flow: z at 80 is close to the converged latent
    z_exact = _exact(gm, x, s_min, s_max)
    assert _rms(SAMPLERS[name](gm, x, logsnr_grid(80, s_min, s_max)[:-1].flip(0)), z_exact) < 1e-2 * s_max


@pytest.mark.parametrize("method", ["dpm3", "dopri5"])
def test_adaptive_round_trip(method):
    gm = SMOOTH
    g = torch.Generator().manual_seed(2)
    x = gm.sample(16, g) + 0.05 * torch.randn(16, gm.dim, generator=g, dtype=torch.float64)
    up = torch.tensor([0.05, 80.0], dtype=torch.float64)
    z = SAMPLERS["adaptive"](gm, x, up, rtol=1e-6, atol=1e-6, method=method)
    assert _rms(SAMPLERS["adaptive"](gm, z, up.flip(0), rtol=1e-6, atol=1e-6, method=method), x) < 1e-4


# ----------------------------------------------------------------------------- noise streams


def test_splitmix64_matches_reference():
    z = torch.tensor([_s64(v) for v in (0, 1, 12345, 2**63 + 5, 2**64 - 1)], dtype=torch.int64)
    expect = [_s64(_mix_int(v)) for v in (0, 1, 12345, 2**63 + 5, 2**64 - 1)]
    assert _mix(z).tolist() == expect


def test_noise_is_standard_normal_and_independent_across_steps():
    like = torch.empty(512, 3, 8, 8)
    ns = NoiseStream.make(torch.Generator().manual_seed(0), like)
    a, b = ns.normal(0, like).double().flatten(), ns.normal(1, like).double().flatten()
    n = a.numel()
    assert abs(a.mean().item()) < 4 / math.sqrt(n)
    assert abs(a.var().item() - 1) < 4 * math.sqrt(2 / n)
    assert abs((a**4).mean().item() - 3) < 4 * math.sqrt(96 / n)  # Var[z^4] = 105 - 9
    assert abs((a * b).mean().item()) < 4 / math.sqrt(n)
    c = ns.normal(0, like, sub=1).double().flatten()
    assert abs((a * c).mean().item()) < 4 / math.sqrt(n)
    # Kolmogorov-Smirnov against the normal CDF (critical value 1.95/sqrt(n) at 0.1%)
    s = torch.sort(a[:20000]).values
    cdf = 0.5 * (1 + torch.erf(s / math.sqrt(2)))
    emp = torch.arange(1, s.numel() + 1, dtype=torch.float64) / s.numel()
    assert (cdf - emp).abs().max().item() < 1.95 / math.sqrt(s.numel())


@pytest.mark.parametrize("name", ["ddpm", "dpmpp_2m_sde", "dpmpp_3m_sde", "euler_maruyama", "pc", "langevin"])
def test_sample_does_not_change_when_the_batch_grows(name):
    gm = random_mixture(4, 3, seed=0)

    def run(batch, seed):
        g = torch.Generator().manual_seed(seed)
        noise = randn((batch, 4), g)
        return sample(gm, noise, sampler=name, steps=6, generator=g)

    small, large = run(5, 11), run(9, 11)
    torch.testing.assert_close(large[:5], small, rtol=1e-5, atol=1e-6)  # float32 batched-matmul rounding
    torch.testing.assert_close(run(5, 11), small, rtol=0, atol=0)  # same seed, same samples
    assert (run(5, 12) - small).abs().max().item() > 1e-2  # another seed, other samples


def test_heun_churn_is_reproducible_and_per_sample():
    gm = ring()
    g = torch.Generator().manual_seed(0)
    noise = randn((6, 2), g, dtype=torch.float64)
    opts = dict(sampler="heun", steps=8, s_churn=20.0, s_tmin=0.01, s_tmax=50.0)
    a = sample(gm, noise, generator=torch.Generator().manual_seed(5), **opts)
    b = sample(gm, noise[:4], generator=torch.Generator().manual_seed(5), **opts)
    torch.testing.assert_close(a[:4], b, rtol=1e-10, atol=1e-10)
    assert (a - sample(gm, noise, sampler="heun", steps=8)).abs().max() > 1e-3


# ----------------------------------------------------------------------------- discrete models


def test_discrete_model_samples_on_its_integer_grid():
    """A diffusers-style eps model sees exactly its integer timesteps; DDIM on them is exact DDIM."""
    process, gm = DDPMTable(), ring()
    abar = process.alphas_cumprod
    seen = []

    def net(x_t, ts):
        seen.append(ts.clone())
        a = abar[ts.round().long()].to(x_t.dtype)
        x_hat = x_t / a.sqrt()[:, None]
        sig = ((1 - a) / a).sqrt()
        return (x_hat - gm(x_hat, sig)) / sig[:, None]

    model = from_timestep_model(net, process)
    noise = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, info = sample(model, noise, sampler="ddim", steps=10, grid="timesteps", return_info=True)
    got = torch.stack([s[0] for s in seen])
    torch.testing.assert_close(got, torch.arange(900, -1, -100, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(x, ddim(gm, noise * info.sigmas[0], info.sigmas), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="DDPMTable"):
        sample(gm, noise, sampler="ddim", steps=10, grid="timesteps")


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_naming_the_value():
    gm = ring()
    noise = torch.randn(4, 2)
    with pytest.raises(ValueError, match="'eulr'.*euler"):
        sample(gm, noise, sampler="eulr")
    with pytest.raises(ValueError, match="strictly monotone"):
        euler(gm, noise, torch.tensor([80.0, 10.0, 10.0, 0.0]))
    with pytest.raises(ValueError, match="strictly monotone"):
        euler(gm, noise, torch.tensor([80.0, 10.0, 20.0, 0.0]))
    with pytest.raises(ValueError, match="end at 0"):
        sample(gm, noise, grid=torch.tensor([80.0, 1.0, 0.1]))
    with pytest.raises(ValueError, match="decreasing grid"):
        SAMPLERS["euler_maruyama"](gm, noise, torch.tensor([0.1, 1.0, 10.0]))
    with pytest.raises(ValueError, match="decreasing grid"):
        ddim(gm, noise, torch.tensor([0.1, 1.0, 10.0]), eta=0.5)
    with pytest.raises(ValueError, match="positive before"):
        check_grid(torch.tensor([3.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match="unknown grid 'linear'"):
        sample(gm, noise, grid="linear")
    with pytest.raises(TypeError, match="generator"):
        sample(gm, noise, sampler="ddpm", generator=3)
    with pytest.raises(TypeError):
        sample(gm, noise, sampler="euler", bogus_option=1)
    with pytest.raises(ValueError, match="sigma_max=80"):
        from diffusionlens.model import Denoiser
        from diffusionlens.processes import VE

        sample(Denoiser(lambda x, t: x, VE(), "x0"), noise)


def test_nan_raises_with_step_and_sigma():
    gm = ring()
    sig = karras_grid(6)

    def bad(x, s):
        out = gm(x, s)
        return out * float("nan") if s[0] < 1.0 else out

    with pytest.raises(FloatingPointError, match=r"step \d+ \(sigma="):
        euler(bad, torch.randn(4, 2, dtype=torch.float64) * 80, sig)
    with pytest.raises(FloatingPointError, match="sigma="):
        sample(bad, torch.randn(4, 2), sampler="dpmpp_2m", steps=6)


def test_progress_and_callback():
    gm = ring()
    seen = []
    sample(gm, torch.randn(4, 2), sampler="lms", steps=5, progress=True, callback=lambda d: seen.append(d["i"]))
    assert seen == [0, 1, 2, 3, 4]


def test_deterministic_set_is_deterministic():
    gm = ring()
    noise = torch.randn(8, 2, dtype=torch.float64)
    for name in DETERMINISTIC:
        steps = None if SAMPLERS[name].spec.adaptive else 5
        a = sample(gm, noise, sampler=name, steps=steps, generator=torch.Generator().manual_seed(0))
        b = sample(gm, noise, sampler=name, steps=steps, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noise_is_identical_on_cpu_and_cuda():
    """Integer hashing is exact on both devices; Box-Muller runs in float64 and is rounded to float32."""
    seeds = NoiseStream.make(torch.Generator().manual_seed(0), torch.empty(64, 3)).seeds
    like = torch.empty(64, 3, 16, 16)
    cpu = NoiseStream(seeds).normal(5, like, sub=2)
    dev = torch.device("cuda")
    gpu = NoiseStream(seeds.to(dev)).normal(5, like.to(dev), sub=2).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-6)
    assert (gpu == cpu).float().mean().item() > 0.999
