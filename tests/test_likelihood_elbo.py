"""The discrete DDPM bound and the continuous VDM bound, against closed forms and the exact oracle.

* A single Gaussian makes E_{x_k}||x0 - D(x_k)||^2 closed form, so every Monte Carlo KL term is
  checked against its exact expectation within its own standard error, for both variance choices
  (the "large" variance taken from the DDPM beta table directly, not from the code's formula).
* With the exact oracle, E_data[VLB] >= E_data[-log p] (Gibbs + the ELBO), the gap falls with T,
  and the discrete bound approaches the continuous one from above.
* The continuous bound depends on the schedule only through its end points (the same oracle under
  several schedules agrees within Monte Carlo error; the weight is dsigma/du / sigma^3 exactly).
"""

import math

import pytest
import torch

from diffusionlens.likelihood import Decoder, bin_centers, ddpm_vlb, decoder_nll, vdm_vlb
from diffusionlens.likelihood.elbo import _schedule
from diffusionlens.oracle import GaussianMixture, ring
from diffusionlens.processes import EDM, VE, VP, DDPMTable

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _loggrid(T, lo=0.002, hi=80.0):
    return torch.exp(torch.linspace(math.log(lo), math.log(hi), T, dtype=torch.float64))


def _expected_err(x0, mu, q, lam, sigma):
    """E_n ||x0 - D(x0 + sigma n)||^2 for one Gaussian N(mu, q diag(lam) q^T): A = C (C + sigma^2)^-1."""
    a = lam / (lam + sigma**2)  # eigenvalues of A
    r = (x0 - mu) @ q
    return (((1 - a) * r) ** 2).sum(1) + sigma**2 * (a**2).sum()


@pytest.mark.parametrize("posterior_var", ["small", "large"])
def test_every_term_matches_the_single_gaussian_closed_form(posterior_var):
    g = _gen(1)
    d = 3
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)
    mu = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
    cov = q @ torch.diag(lam) @ q.T
    o = GaussianMixture(mu[None], (0.5 * (cov + cov.T))[None])
    proc = DDPMTable(T=20, schedule="cosine")
    x0 = o.sample(3, g)
    vlb = ddpm_vlb(o.denoise, x0, process=proc, posterior_var=posterior_var, samples=300, generator=g)
    sig, abar, betas = proc.sigmas, proc.alphas_cumprod, proc.betas
    T = proc.T
    # exact expectations, written from the DDPM formulas in the table's own coordinates
    exact = torch.zeros(3, T + 1, dtype=torch.float64)
    for k in range(2, T + 1):  # 1-based step k; the KL term L_{k-1} sits in column k - 1
        sk, sp = sig[k - 1], sig[k - 2]
        var_q = sp**2 * (1 - sp**2 / sk**2)  # beta-tilde in x_hat_{k-1} units
        var_p = var_q if posterior_var == "small" else betas[k - 1] / abar[k - 2]  # beta_k in x_hat units
        mean_sq = (1 - sp**2 / sk**2) ** 2 * _expected_err(x0, mu, q, lam, sk)
        exact[:, k - 1] = 0.5 * (d * (var_q / var_p - 1 - torch.log(var_q / var_p)) + mean_sq / var_p)
    # decoder: Gaussian around D(x_hat_1) with DDPM's variance; E over x_hat_1 of its NLL
    dvar = betas[0] if posterior_var == "large" else abar[0] * sig[0] ** 2 * (1 - sig[0] ** 2 / sig[1] ** 2)
    exact[:, 0] = 0.5 * (_expected_err(x0, mu, q, lam, sig[0]) / dvar + d * math.log(2 * math.pi * dvar))
    pv = sig[-1] ** 2 + 1
    exact[:, T] = 0.5 * (d * (sig[-1] ** 2 / pv - 1 - torch.log(sig[-1] ** 2 / pv)) + (x0**2).sum(1) / pv)
    z = (vlb.terms - exact) / vlb.stderr_terms.clamp_min(1e-300)
    assert z[:, :T].abs().max() < 5.0, z  # 57 checks at 5 sigma
    torch.testing.assert_close(vlb.terms[:, T], exact[:, T], rtol=1e-12, atol=1e-12)
    assert ((vlb.total - exact.sum(1)) / vlb.stderr).abs().max() < 4.5
    assert vlb.terms.shape == (3, T + 1) and vlb.sigmas.shape == (T,)
    torch.testing.assert_close(vlb.bpd, vlb.total / (d * math.log(2)))


def test_discrete_bound_above_true_nll_and_gap_shrinks_with_T():
    o = ring()
    x0 = o.sample(128, _gen(2))
    nll = -o.log_prob(x0, 0.0)
    gaps, ses = [], []
    for T in (10, 100, 1000):
        vlb = ddpm_vlb(o.denoise, x0, sigmas=_loggrid(T), decoder_var=0.002**2, samples=2, generator=_gen(T))
        diff = vlb.total - nll  # paired per data point
        gaps.append(diff.mean().item())
        ses.append((diff.std() / math.sqrt(diff.numel())).item())
    # E_data[VLB] >= E_data[-log p]; the gap falls with T (and is far from zero at T = 10)
    for g, s in zip(gaps, ses):
        assert g > -4 * s
    assert gaps[0] > gaps[1] + 4 * math.hypot(ses[0], ses[1])
    assert gaps[1] > gaps[2] + 4 * math.hypot(ses[1], ses[2])
    # continuous time: the T -> infinity limit, still a bound, below the T = 1000 bound
    cont = vdm_vlb(o.denoise, x0, sigma_min=0.002, sigma_max=80.0, samples=128, rounds=2, generator=_gen(3))
    dc = cont.total - nll
    se_c = (dc.std() / math.sqrt(dc.numel())).item()
    assert dc.mean() > -4 * se_c
    assert gaps[2] - dc.mean().item() > -4 * math.hypot(ses[2], se_c)


def test_continuous_bound_is_schedule_invariant():
    o = ring()
    x0 = o.sample(24, _gen(4))
    smin, smax = 0.01, 50.0
    schedules = [None, VE(smin, smax), EDM(smin, smax, rho=7.0), VP("linear")]
    res = [vdm_vlb(o.denoise, x0, sigma_min=smin, sigma_max=smax, process=p, samples=256, rounds=2,
                   generator=_gen(5 + i))
           for i, p in enumerate(schedules)]
    means = [r.diffusion.mean().item() for r in res]
    ses = [(r.stderr**2).mean().sqrt().item() / math.sqrt(x0.shape[0]) for r in res]
    for i in range(1, len(res)):
        assert abs(means[i] - means[0]) < 4.5 * math.hypot(ses[i], ses[0]), (means, ses)
    # the prior and decoder terms do not involve the schedule at all
    torch.testing.assert_close(res[1].prior, res[0].prior)
    # the mechanism, exactly: weight = (d sigma / d u) / sigma^3 for every schedule
    u = torch.linspace(0.01, 0.99, 9, dtype=torch.float64)
    h = 1e-6
    for p in schedules:
        sigma, w = _schedule(p, smin, smax, u)
        ds = (_schedule(p, smin, smax, u + h)[0] - _schedule(p, smin, smax, u - h)[0]) / (2 * h)
        torch.testing.assert_close(w * sigma**3, ds, rtol=1e-6, atol=0)
        lo, hi = _schedule(p, smin, smax, torch.tensor([0.0, 1.0], dtype=torch.float64))[0]
        assert abs(lo - smin) < 1e-9 * smin and abs(hi - smax) < 1e-9 * smax


def test_discretized_decoder_is_a_distribution_over_the_256_levels():
    k = torch.arange(256)
    x = bin_centers(k)[:, None]  # every level of one pixel
    for mean, var in [(0.3, 0.01), (-0.999, 1e-4), (1.5, 0.5), (0.0, 1e-7)]:
        nll = decoder_nll(x, torch.full_like(x, mean), var, Decoder.DISCRETIZED)
        torch.testing.assert_close(torch.exp(-nll).sum(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-10,
                                   atol=1e-10)
    # far in a tail the log-probability stays finite and accurate (Mills ratio)
    nll = decoder_nll(x[128:129], torch.full((1, 1), -1.0, dtype=torch.float64), 1e-4, Decoder.DISCRETIZED)
    assert torch.isfinite(nll).all() and nll.item() > 100
    with pytest.raises(ValueError, match="grid"):
        decoder_nll(torch.full((1, 1), 0.001, dtype=torch.float64), torch.zeros(1, 1), 0.1, "discretized")


def test_8bit_images_bound_in_bits_per_dim():
    d, shape = 16, (1, 4, 4)
    g = _gen(6)
    means = torch.randn(3, d, generator=g, dtype=torch.float64) * 0.4
    o = GaussianMixture(means, torch.full((3,), 0.05, dtype=torch.float64), data_shape=shape)
    k = torch.clamp(torch.round((o.sample(8, g).clamp(-1, 1) + 1) * 127.5), 0, 255).long()
    x0 = bin_centers(k)
    vlb = ddpm_vlb(o.denoise, x0, sigmas=_loggrid(50), decoder="discretized", decoder_var=0.002**2, samples=2,
                   generator=g)
    assert vlb.terms.shape == (8, 51) and bool(torch.isfinite(vlb.bpd).all())
    # a bound on -log2 of a discrete probability: positive
    assert bool((vlb.bpd > 0).all())
    cont = vdm_vlb(o.denoise, x0, sigma_min=0.002, sigma_max=80.0, decoder="discretized", decoder_var=0.002**2,
                   samples=16, rounds=2, generator=g)
    assert bool((cont.bpd > 0).all())
    # same end points and decoder: the continuous bound is the tighter one (MC error included)
    diff = vlb.total - cont.total
    assert diff.mean() > -4 * math.sqrt(((vlb.stderr**2 + cont.stderr**2).mean() / 8).item())
    # the table view: a DDPM cosine table runs through the same code with its own scales
    tab = ddpm_vlb(o.denoise, x0, process=DDPMTable(T=50, schedule="cosine"), decoder="discretized", generator=g)
    assert bool((tab.bpd > 0).all()) and tab.terms.shape == (8, 51)


def test_bad_input():
    o = ring()
    x0 = o.sample(2, _gen(0))
    with pytest.raises(ValueError, match="unknown posterior variance 'mid'"):
        ddpm_vlb(o.denoise, x0, sigmas=_loggrid(5), posterior_var="mid")
    with pytest.raises(ValueError, match="unknown decoder 'laplace'"):
        ddpm_vlb(o.denoise, x0, sigmas=_loggrid(5), decoder="laplace")
    with pytest.raises(ValueError, match="increasing"):
        ddpm_vlb(o.denoise, x0, sigmas=_loggrid(5).flip(0))
    with pytest.raises(ValueError, match="DDPMTable"):
        ddpm_vlb(o.denoise, x0, process=VP())
    with pytest.raises(ValueError, match="samples"):
        ddpm_vlb(o.denoise, x0, sigmas=_loggrid(5), samples=0)
    with pytest.raises(ValueError, match="even"):
        vdm_vlb(o.denoise, x0, sigma_min=0.01, sigma_max=1.0, samples=3)
    with pytest.raises(ValueError, match="sigma_min"):
        vdm_vlb(o.denoise, x0, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="shape"):
        vdm_vlb(o.denoise, x0[0], sigma_min=0.01, sigma_max=1.0)
    with pytest.raises(FloatingPointError, match="sigma"):
        ddpm_vlb(lambda x, s: x * math.nan, x0, sigmas=_loggrid(5))
