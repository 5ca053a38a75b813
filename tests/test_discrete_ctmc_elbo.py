"""The continuous-time ELBO of either corruption on the exact oracle: computed without Monte-Carlo error
(every x_t enumerated, the time integral by Gauss-Legendre quadrature), it equals the exact
log-likelihood for the exact posterior -- uniform corruption as well as masking -- and is a strict
bound for any other model; the Monte-Carlo estimator is unbiased for it."""

import math

import numpy as np
import pytest
import torch

from diffusionlens.discrete import (
    D3PM,
    Corruption,
    all_sequences,
    ctmc_elbo,
    ctmc_loss,
    likelihood_weighted,
    random_mixture,
)
from diffusionlens.discrete.ctmc import masked_loss

L, V = 3, 3


@pytest.fixture(scope="module")
def mix():
    return random_mixture(3, (L,), V, torch.Generator().manual_seed(0))


def _exact_bound(model, x0, pr, nodes=32):
    """int_0^1 sum_{x_t} q_t(x_t | x0) ctmc_loss dt per sample of x0 (B, L): quadrature in t = u^2 (the
    integrand of uniform corruption has a sqrt-like start at t = 0), every x_t enumerated."""
    xs = all_sequences(pr.states, (L,))
    B, N = x0.shape[0], xs.shape[0]
    u, w = np.polynomial.legendre.leggauss(nodes)
    total = torch.zeros(B, dtype=torch.float64)
    for ui, wi in zip((u + 1) / 2, w / 2):
        t = float(ui) ** 2
        q = pr.marginal(x0, t)  # (B, L, S)
        qx = q[:, torch.arange(L), xs].prod(-1)  # (B, N): q(x_t | x0) of every x_t
        loss = ctmc_loss(model, x0.repeat_interleave(N, 0), xs.repeat(B, 1), torch.full((B * N,), t,
                         dtype=torch.float64), pr).reshape(B, N)
        total += wi * 2 * float(ui) * (qx * torch.where(qx > 0, loss, 0.0)).sum(1)
    return total


@pytest.mark.parametrize("kind", ["uniform", "mask"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_with_the_exact_posterior_the_bound_is_the_log_likelihood(mix, kind, schedule):
    pr = Corruption(kind, V, schedule)
    x0 = all_sequences(V, (L,))[::4]
    bound = _exact_bound(mix.denoiser(pr), x0, pr)
    # the quadrature's error: the integrand is smooth in u (t = u^2) up to an O(t^(1/2)) start
    assert float((bound + mix.log_prob(x0)).abs().max()) < 1e-5


@pytest.mark.parametrize("kind", ["uniform", "mask"])
def test_any_other_model_gives_a_strict_bound(mix, kind):
    pr = Corruption(kind, V)
    x0 = all_sequences(V, (L,))

    def flat(x_t, t):  # the data's per-position marginals, ignoring the visible tokens
        return torch.log(mix.posterior(torch.full_like(x_t, V) if kind == "mask" else torch.zeros_like(x_t), 1.0,
                                       pr)).expand(*x_t.shape, V)

    # it bounds the model's own -log p(x0), so the gap to the data's is only positive on average over
    # the data: E_data[bound] - H = KL(data || model) + the model's own gap
    p = mix.log_prob(x0).exp()
    gap = float((p * (_exact_bound(flat, x0, pr) + mix.log_prob(x0))).sum())
    assert gap > 0.05


def test_discrete_time_uniform_bounds_are_strict_and_shrink_towards_it(mix):
    """D3PM's uniform bound with the exact posterior is strict (several tokens may jump in a step while
    the model's step factorises over positions); more steps bring it down towards the tight CT bound."""
    pr = Corruption("uniform", V)
    x0 = mix.sample(1, torch.Generator().manual_seed(3)).expand(4000, L)
    exact = -float(mix.log_prob(x0[:1]))
    g = torch.Generator().manual_seed(4)
    gaps = []
    for T in (2, 16):
        b = D3PM(pr, T).terms(mix.denoiser(pr), x0, generator=g).total
        gaps.append((float(b.mean()) - exact, float(b.std()) / math.sqrt(len(b))))
    assert gaps[0][0] > 5 * gaps[0][1] and gaps[0][0] - gaps[1][0] > 5 * math.hypot(gaps[0][1], gaps[1][1])


@pytest.mark.parametrize("kind", ["uniform", "mask"])
def test_the_monte_carlo_estimate_is_unbiased(mix, kind):
    pr = Corruption(kind, V, "cosine")
    x0 = all_sequences(V, (L,))[5:6]
    exact = _exact_bound(mix.denoiser(pr), x0, pr)
    est = ctmc_elbo(mix.denoiser(pr), x0.expand(20000, L), pr, n_t=2, generator=torch.Generator().manual_seed(5))
    # the uniform integrand is heavy-tailed near t = 0 (rates ~ 1/t with probability ~ t): 5 standard errors
    assert abs(float(est.mean() - exact)) < 5 * float(est.std()) / math.sqrt(len(est))


def test_for_masking_it_is_the_masked_loss_draw_by_draw(mix):
    pr = Corruption("mask", V, "cosine")
    g = torch.Generator().manual_seed(6)
    x0 = mix.sample(64, g)
    t = torch.rand(64, dtype=torch.float64, generator=g)
    x_t = pr.corrupt(x0, t, g)
    model = mix.denoiser(pr)
    assert torch.allclose(ctmc_loss(model, x0, x_t, t, pr), masked_loss(model, x0, x_t, t, pr), rtol=1e-12)


def test_bad_input_is_one_line(mix):
    pr = Corruption("uniform", V)
    with pytest.raises(ValueError, match="n_t must be a positive integer"):
        ctmc_elbo(mix.denoiser(pr), mix.sample(2), pr, n_t=0)
    with pytest.raises(ValueError, match="token 3 is outside"):
        ctmc_elbo(mix.denoiser(pr), torch.full((2, L), 3), pr)


@pytest.mark.parametrize("kind", ["uniform", "mask"])
def test_likelihood_weighting_keeps_the_exact_posterior_and_makes_a_blank_network_uniform(mix, kind):
    """Weighting a position's logits by its visible token's likelihood: the exact leave-one-out
    predictions give the exact posterior marginals, and constant logits the posterior of i.i.d. uniform
    tokens, whose CTMC bound is exactly L log V (a finite start for training uniform corruption)."""
    pr = Corruption(kind, V, "cosine")
    g = torch.Generator().manual_seed(7)
    x_t = pr.corrupt(mix.sample(6, g), 0.4, g)
    blank = likelihood_weighted(lambda x, t: torch.zeros(*x.shape, V), pr)
    uniform = random_mixture(1, (L,), V)
    uniform.probs[:] = 1 / V
    assert torch.allclose(torch.softmax(blank(x_t, 0.4), -1), uniform.posterior(x_t, 0.4, pr), atol=1e-12)
    x0 = all_sequences(V, (L,))[::5]
    assert torch.allclose(_exact_bound(blank, x0, pr), torch.full((len(x0),), L * math.log(V), dtype=torch.float64),
                          atol=1e-5)
