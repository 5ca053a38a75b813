"""PF-ODE log-likelihood, bits/dim, encoding and streaming, checked against the exact oracle.

Tolerances come from the mathematics: the oracle's log_prob is exact, the solver's global error is
about proportional to its tolerance, a single Gaussian makes the ODE map linear with a closed-form
log-determinant, Hutchinson estimates are judged by their own standard errors, and a uniform
density over the 256 bins has exactly 8 bits per dimension.
"""

import math

import pytest
import torch

from diffusionlens.likelihood import (
    Binning,
    bin_centers,
    bin_width,
    bits_per_dim,
    decode,
    dequantize,
    encode,
    evaluate,
    gaussian_prior,
    log_likelihood,
    prior_gap,
    round_trip,
    slerp,
    trace_jacobian,
)
from diffusionlens.oracle import GaussianMixture, random_mixture, ring
from diffusionlens.processes import VP

SMIN, SMAX = 0.002, 80.0


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _gaussian(d=3, seed=1):
    g = _gen(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    evals = torch.tensor([0.04, 0.5, 2.0][:d], dtype=torch.float64)
    cov = q @ torch.diag(evals) @ q.T
    mu = torch.tensor([0.3, -0.2, 0.5][:d], dtype=torch.float64)
    return GaussianMixture(mu[None], (0.5 * (cov + cov.T))[None]), mu, q, evals


# ----------------------------------------------------------------------------------- log-likelihood


@pytest.mark.parametrize("case", ["ring2d", "mix16"])
def test_matches_oracle_exact_divergence(case):
    o = ring() if case == "ring2d" else random_mixture(16, 10, seed=16)
    x = o.sample(6, _gen(1))
    ll, info = log_likelihood(o.denoise, x, sigma_min=SMIN, sigma_max=SMAX, return_info=True)
    exact = o.log_prob(x, SMIN)
    d = o.dim
    # acceptance: within 0.01 nats per dimension with the default N(0, sigma_max^2) prior
    assert ((ll - exact).abs() / d).max() < 0.01
    # the ODE part alone (prior error removed with the exact p_{sigma_max}) is at solver precision
    gap = prior_gap(o.log_prob, info.latent, SMAX)
    assert (ll + gap - exact).abs().max() < 1e-3
    assert bool((info.stderr == 0).all()) and info.copies == d and bool((info.nfe > 0).all())


def test_any_rank_and_batch_independence():
    flat = random_mixture(16, 4, seed=3)
    img = GaussianMixture(flat.means, flat.covs, flat.weights, data_shape=(1, 4, 4))
    x = img.sample(4, _gen(2))
    assert x.shape == (4, 1, 4, 4)
    ll_img = log_likelihood(img.denoise, x, sigma_min=0.01, sigma_max=SMAX)
    ll_flat = log_likelihood(flat.denoise, x.reshape(4, 16), sigma_min=0.01, sigma_max=SMAX)
    torch.testing.assert_close(ll_img, ll_flat, rtol=0, atol=1e-10)
    # per-sample step control: a sample's result does not depend on the rest of the batch
    torch.testing.assert_close(log_likelihood(img.denoise, x[:2], sigma_min=0.01, sigma_max=SMAX), ll_img[:2],
                               rtol=0, atol=1e-10)
    exact_prior = log_likelihood(img.denoise, x, sigma_min=0.01, sigma_max=SMAX, prior=lambda z: img.log_prob(z, SMAX))
    torch.testing.assert_close(exact_prior, img.log_prob(x, 0.01), rtol=0, atol=1e-3)


def test_single_gaussian_closed_form():
    """One Gaussian: x(sigma) = mu + U diag(sqrt((l + sigma^2)/(l + sigma_min^2))) U^T (x - mu), log det known."""
    o, mu, q, lam = _gaussian()
    x = o.sample(5, _gen(3))
    smin, smax = 0.01, 50.0
    prior = gaussian_prior(smax)
    ll, info = log_likelihood(o.denoise, x, sigma_min=smin, sigma_max=smax, rtol=1e-9, atol=1e-9,
                              return_info=True, prior=prior)
    gain = torch.sqrt((lam + smax**2) / (lam + smin**2))
    z_exact = mu + ((x - mu) @ q) * gain @ q.T
    torch.testing.assert_close(info.latent, z_exact, rtol=1e-7, atol=1e-7)
    logdet = torch.log(gain).sum()
    torch.testing.assert_close(info.delta_logp, logdet.expand(5), rtol=0, atol=1e-7)
    torch.testing.assert_close(ll, prior(z_exact) + logdet, rtol=0, atol=1e-7)
    # with the exact p_{sigma_max} as the prior the result is the exact density at sigma_min
    exact_prior = lambda z: o.log_prob(z, smax)  # noqa: E731
    ll2 = log_likelihood(o.denoise, x, sigma_min=smin, sigma_max=smax, rtol=1e-9, atol=1e-9, prior=exact_prior)
    torch.testing.assert_close(ll2, o.log_prob(x, smin), rtol=0, atol=1e-7)
    # encode gives the same linear map; decode inverts it
    z = encode(o.denoise, x, sigma_min=smin, sigma_max=smax, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z, z_exact, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(decode(o.denoise, z_exact, sigma_min=smin, sigma_max=smax, rtol=1e-10, atol=1e-10),
                               x, rtol=1e-7, atol=1e-7)
    # exact trace of the Jacobian of D: tr(C (C + sigma^2)^-1)
    tr, _ = trace_jacobian(o.denoise, x, 0.7)
    torch.testing.assert_close(tr, (lam / (lam + 0.49)).sum().expand(5), rtol=1e-12, atol=1e-12)


def test_process_scale_is_exact():
    """x_t = s x_hat: log p_{x_t}(x) = log p_{x_hat}(x / s) - d log s."""
    o = ring()
    proc = VP()
    smin = 0.5
    s = float(proc.scale_of_sigma(torch.tensor(smin, dtype=torch.float64)))
    assert abs(s - 1 / math.sqrt(1.25)) < 1e-12
    x_hat = o.sample(6, _gen(4)) + smin * torch.randn(6, 2, generator=_gen(5), dtype=torch.float64)
    ll = log_likelihood(o.denoise, s * x_hat, sigma_min=smin, sigma_max=SMAX, process=proc,
                        prior=lambda z: o.log_prob(z, SMAX))
    torch.testing.assert_close(ll, o.log_prob(x_hat, smin) - 2 * math.log(s), rtol=0, atol=1e-5)


@pytest.mark.parametrize("probe", ["rotating", "rademacher", "gaussian"])
def test_hutchinson_unbiased_within_its_standard_error(probe):
    o = random_mixture(16, 6, seed=7)
    x = o.sample(3, _gen(6))
    exact = log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=SMAX)
    ll, info = log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=SMAX, divergence="hutchinson",
                              probes=48, probe=probe, generator=_gen(7), return_info=True)
    z = (ll - exact) / info.stderr
    assert bool((info.stderr > 0).all()) and info.per_probe.shape == (3, 48)
    assert z.abs().max() < 4.5, z  # three 4.5-sigma checks: false alarm ~2e-5
    # unbiased also across probes: the mean over samples of z is N(0, 1/3)-distributed
    assert abs(z.mean()) < 4.5 / math.sqrt(3)


def test_rotating_probe_is_on_the_sphere_smooth_and_isotropic():
    from diffusionlens.likelihood import draw_rotating, rotating_probe

    d, turns = 6, 4
    frames = draw_rotating(2000, 1, d, turns, _gen(20), torch.float64, "cpu")
    u = torch.full((2000,), 0.37, dtype=torch.float64)
    e = rotating_probe(frames, u, 0.0, 1.0)[:, 0]  # between two directions of the frame
    torch.testing.assert_close(e.norm(dim=1), torch.full((2000,), math.sqrt(d), dtype=torch.float64))
    # E[e e^T] = I: the empirical second moment is within its sampling error (entries have sd ~ 1/sqrt(n))
    assert (e.T @ e / 2000 - torch.eye(d, dtype=torch.float64)).abs().max() < 5 / math.sqrt(2000)
    # continuous and C1 in u across a knot (k = 2 at u = 0.5): first differences match on both sides
    h = 1e-6
    at = [rotating_probe(frames[:3], torch.full((3,), 0.5 + k * h, dtype=torch.float64), 0.0, 1.0) for k in (-2, -1,
                                                                                                          0, 1, 2)]
    left, right = (at[2] - at[0]) / (2 * h), (at[4] - at[2]) / (2 * h)
    torch.testing.assert_close(left, right, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="turns"):
        draw_rotating(1, 1, 3, 3, None, torch.float64, "cpu")


def test_orthogonal_probes_with_d_probes_are_exact():
    o = random_mixture(8, 4, seed=8)
    x = o.sample(3, _gen(8))
    exact = log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=SMAX)
    ll = log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=SMAX, divergence="hutchinson", probes=8,
                        probe="orthogonal", generator=_gen(9))
    torch.testing.assert_close(ll, exact, rtol=0, atol=2e-4)


def test_chunked_and_stacked_evaluation_give_the_same_result():
    o = random_mixture(8, 4, seed=8)
    x = o.sample(3, _gen(10))
    a = log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=SMAX)
    b = log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=SMAX, chunk=3)
    c = log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=SMAX, stacked=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    torch.testing.assert_close(a, c, rtol=0, atol=1e-10)
    h1 = log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=SMAX, divergence="hutchinson", probes=4,
                        generator=_gen(1), stacked=False)
    h2 = log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=SMAX, divergence="hutchinson", probes=4,
                        generator=_gen(1), stacked=True)
    torch.testing.assert_close(h1, h2, rtol=0, atol=1e-10)


def test_conditioning_is_indexed_per_sample():
    o = ring()
    calls = []

    def den(x, sigma, shift):
        calls.append(shift.shape[0] == x.shape[0])
        return o.denoise(x - shift, sigma) + shift

    x = o.sample(4, _gen(11))
    shift = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, -2.0], [3.0, 3.0]], dtype=torch.float64)
    ll = log_likelihood(den, x + shift, sigma_min=0.01, sigma_max=SMAX, cond={"shift": shift},
                        prior=lambda z: o.log_prob(z - shift, SMAX))
    # a shifted mixture has the shifted density, and each sample saw its own shift
    torch.testing.assert_close(ll, o.log_prob(x, 0.01), rtol=0, atol=1e-4)
    assert all(calls)


def test_bad_input():
    o = ring()
    x = o.sample(2, _gen(0))
    with pytest.raises(ValueError, match="sigma_min"):
        log_likelihood(o.denoise, x, sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        log_likelihood(o.denoise, x, sigma_min=0.0, sigma_max=1.0)
    with pytest.raises(ValueError, match=r"unknown divergence 'trace'.*'exact', 'hutchinson'"):
        log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=1.0, divergence="trace")
    with pytest.raises(ValueError, match="unknown probe 'sphere'"):
        log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=1.0, divergence="hutchinson", probe="sphere")
    with pytest.raises(ValueError, match="probes"):
        log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=1.0, divergence="hutchinson", probes=0)
    with pytest.raises(ValueError, match="turns"):
        log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=1.0, divergence="hutchinson", turns=0)
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(o.denoise, x[0], sigma_min=0.01, sigma_max=1.0)
    with pytest.raises(TypeError):
        log_likelihood(o.denoise, torch.zeros(2, 2, dtype=torch.long), sigma_min=0.01, sigma_max=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        log_likelihood(o.denoise, torch.tensor([[0.0, math.nan]]), sigma_min=0.01, sigma_max=1.0)
    with pytest.raises(TypeError, match="Process"):
        log_likelihood(o.denoise, x, sigma_min=0.01, sigma_max=1.0, process="vp")
    with pytest.raises(FloatingPointError, match="non-finite"):
        log_likelihood(lambda x, s: x * math.nan, x, sigma_min=0.01, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        encode(o.denoise, x, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="increasing"):
        encode(o.denoise, x, sigmas=torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="not deterministic"):
        encode(o.denoise, x, sigmas=torch.tensor([0.1, 1.0]), sampler="euler_maruyama")


# ------------------------------------------------------------------------------------- bits per dim


@pytest.mark.parametrize("binning", list(Binning))
def test_uniform_density_has_exactly_8_bits(binning):
    delta = bin_width(256, binning)
    d = 12
    ll = torch.full((3,), -d * math.log(256 * delta), dtype=torch.float64)  # uniform over the union of bins
    torch.testing.assert_close(bits_per_dim(ll, d, binning=binning), torch.full((3,), 8.0, dtype=torch.float64))
    assert abs(bin_width(256, "centered") - 2 / 255) < 1e-15 and abs(bin_width(256, "edges") - 2 / 256) < 1e-15


def test_dequantized_bound_matches_exact_discrete_probability():
    """A wide factorized Gaussian: E_u[-log p] - d log Delta equals -log P(k) up to a tiny Jensen gap."""
    mean, std, d = 0.1, 0.3, 4
    k = torch.randint(60, 200, (1, d), generator=_gen(12))
    c = bin_centers(k)
    delta = bin_width()
    normal = torch.distributions.Normal(mean, std)
    exact = -torch.log(normal.cdf(c + delta / 2) - normal.cdf(c - delta / 2)).sum() / (d * math.log(2))
    x = dequantize(k.expand(4000, d), _gen(13))
    assert bool(((x - c).abs() <= delta / 2).all())
    bpd = bits_per_dim(normal.log_prob(x).sum(1), d)
    se = bpd.std() / math.sqrt(bpd.numel())
    # Jensen gap here is Var_u[log p]/2 per dim ~ (Delta^2/12) ((c - mean)/std^2)^2 / 2 / ln 2 < 1e-4 bits
    assert -4 * se - 1e-4 < bpd.mean() - exact < 4 * se + 1e-4


def test_bin_centers_and_bad_levels():
    k = torch.tensor([0, 127, 255])
    torch.testing.assert_close(bin_centers(k), torch.tensor([-1.0, 127 / 127.5 - 1, 1.0], dtype=torch.float64))
    torch.testing.assert_close(bin_centers(k, binning="edges"),
                               torch.tensor([-1 + 1 / 256, 255 / 256 - 1, 1 - 1 / 256], dtype=torch.float64))
    with pytest.raises(ValueError, match="256"):
        bin_centers(torch.tensor([256]))
    with pytest.raises(TypeError):
        bin_centers(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="unknown binning"):
        bin_width(256, "middle")


# ---------------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("shape", [(2,), (1, 4, 4)])
def test_round_trip_at_tight_tolerance(shape):
    flat = ring() if shape == (2,) else random_mixture(16, 6, seed=4)
    o = flat if shape == (2,) else GaussianMixture(flat.means, flat.covs, flat.weights, data_shape=shape)
    x = o.sample(6, _gen(14))
    x_rec, err = round_trip(o.denoise, x, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-8, atol=1e-8)
    assert x_rec.shape == x.shape and err.max() < 1e-4
    # latents are Gaussian-sized: ||z|| ~ sigma_max sqrt(d)
    z, info = encode(o.denoise, x, sigma_min=SMIN, sigma_max=SMAX, return_info=True)
    d = x[0].numel()
    assert bool((z.flatten(1).norm(dim=1) / (SMAX * math.sqrt(d))).sub(1).abs().lt(1.5).all())
    assert bool((info.nfe > 0).all()) and info.sigmas is None


def test_round_trip_with_a_fixed_grid_sampler():
    """Heun on an increasing log-spaced grid: second order, so doubling the steps cuts the error ~4x."""
    o = ring()
    x = o.sample(6, _gen(15))
    z_ad = encode(o.denoise, x, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-10, atol=1e-10)
    errs = []
    for steps in (100, 200):
        grid = torch.exp(torch.linspace(math.log(SMIN), math.log(SMAX), steps + 1, dtype=torch.float64))
        z, info = encode(o.denoise, x, sigmas=grid, return_info=True)
        assert info.nfe[0] == 2 * steps  # Heun: two evaluations per step (no step into sigma = 0)
        errs.append(((z - z_ad).norm(dim=1) / z_ad.norm(dim=1)).max().item())
    assert 3.0 < errs[0] / errs[1] < 5.5, errs
    _, err = round_trip(o.denoise, x, sigmas=grid)
    assert err.max() < 10 * errs[1]


def test_slerp():
    g = _gen(16)
    a, b = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    # equal norms: the path stays on the sphere and the angle moves linearly
    b = b * (a.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1))[:, None, None]
    m = slerp(a, b, 0.3)
    torch.testing.assert_close(m.flatten(1).norm(dim=1), a.flatten(1).norm(dim=1), rtol=1e-5, atol=0)

    def ang(u, v):
        u, v = u.flatten(1), v.flatten(1)
        return torch.arccos((u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1)))

    torch.testing.assert_close(ang(a, m), 0.3 * ang(a, b), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(slerp(a, a, 0.5), a)  # parallel: no division by zero
    with pytest.raises(ValueError, match="shape"):
        slerp(a, b[:, :2], 0.5)


# ---------------------------------------------------------------------------------------- streaming


def test_stream_mean_and_standard_error():
    v = torch.randn(103, generator=_gen(17), dtype=torch.float64) + 1e6  # large offset: no cancellation
    s = evaluate(lambda b: b[:, 0], v[:, None], batch_size=10, progress=False, keep_values=True)
    assert s.n == 103 and abs(s.mean - v.mean().item()) < 1e-8
    assert abs(s.stderr - (v.std() / math.sqrt(103)).item()) < 1e-9
    torch.testing.assert_close(s.values, v)
    # an iterable of (x, label) batches: the first element is passed
    s2 = evaluate(lambda b: b[:, 0], [(v[:50, None], None), (v[50:, None], None)], progress=False)
    assert abs(s2.mean - s.mean) < 1e-8
    with pytest.raises(ValueError, match="empty"):
        evaluate(lambda b: b[:, 0], torch.zeros(0, 1), progress=False)
    with pytest.raises(ValueError, match=r"\(batch,\)"):
        evaluate(lambda b: b, torch.zeros(4, 2), progress=False)


def test_skipping_the_trace_at_the_free_stage_changes_nothing_but_rounding(monkeypatch):
    """log_likelihood evaluates only D at Dormand-Prince's second stage; forcing the trace there too gives the
    same log-likelihoods up to float64 rounding, for a neural denoiser on the stacked (Hutchinson) path and
    on the vmapped exact path."""
    import diffusionlens.likelihood.pf_ode as pf

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 32), torch.nn.Tanh(), torch.nn.Linear(32, 6)).double()

    def den(x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        return x / (1 + s[:, None] ** 2) + 0.1 * net(torch.cat([x, torch.log(s)[:, None]], 1))

    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kw = dict(sigma_min=0.01, sigma_max=20.0, rtol=1e-6, atol=1e-6)
    runs = {}
    solve = pf.solve

    def every_stage(f, *a, quadrature=False, **k):  # the trace wanted at every stage
        return solve(lambda t, y, idx: f(t, y, idx, True), *a, **k)

    for force in (False, True):
        if force:
            monkeypatch.setattr(pf, "solve", every_stage)
        runs[force] = (log_likelihood(den, x, divergence="exact", **kw),
                       log_likelihood(den, x, divergence="hutchinson", probes=3,
                                      generator=torch.Generator().manual_seed(2), **kw))
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=0, atol=1e-8)
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=0, atol=1e-8)


def test_default_divergence_is_one_threshold():
    from diffusionlens.likelihood import EXACT_MAX_DIM, Divergence, default_divergence

    assert default_divergence(1) is Divergence.EXACT
    assert default_divergence(EXACT_MAX_DIM) is Divergence.EXACT
    assert default_divergence(EXACT_MAX_DIM + 1) is Divergence.HUTCHINSON
    with pytest.raises(ValueError, match="d must be"):
        default_divergence(0)
