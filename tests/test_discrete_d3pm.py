"""D3PM's ELBO on the exact oracle: closed-form terms on a single categorical, a strict bound otherwise."""

import math

import pytest
import torch

from diffusionlens.discrete import D3PM, CategoricalMixture, Corruption, all_sequences, masked_elbo, random_mixture

V = 4


def _exact_terms(d3pm, model, x0):
    """E_q(x_k | x0) of every step's term by enumerating the states of x_k (one position)."""
    S = d3pm.process.states
    out = []
    for k in range(1, d3pm.T + 1):
        q = d3pm.process.marginal(x0, k / d3pm.T)[0, 0]  # (S,)
        states = torch.arange(S)[:, None]
        terms = d3pm.term(model, x0.expand(S, 1), states, k)
        out.append(float((q * torch.where(q > 0, terms, torch.zeros_like(terms))).sum()))
    return out


@pytest.mark.parametrize("kind", ["mask", "uniform"])
def test_terms_on_a_single_categorical_sum_to_its_log_probability(kind):
    # one position: the x0-posterior is the exact joint, the reverse chain is exact and the bound tight
    cat = CategoricalMixture(torch.tensor([[[0.1, 0.2, 0.3, 0.4]]], dtype=torch.float64))
    d3pm = D3PM(Corruption(kind, V, "cosine"), T=6)
    model = cat.denoiser(d3pm.process)
    for v in range(V):
        x0 = torch.tensor([[v]])
        exact = _exact_terms(d3pm, model, x0)
        assert abs(sum(exact) + float(d3pm.prior_term(x0)[0]) + math.log(0.1 * (v + 1))) < 1e-12
        assert all(e >= -1e-15 for e in exact)
        # the Monte-Carlo terms average to the enumerated ones
        n = 2000
        mc = d3pm.terms(model, x0.expand(n, 1), generator=torch.Generator().manual_seed(v)).steps
        err = (mc.mean(0) - torch.tensor(exact, dtype=torch.float64)).abs()
        assert bool((err <= 5 * mc.std(0) / math.sqrt(n) + 1e-12).all()), (mc.mean(0), exact)


def test_step_terms_are_closed_form_kls_of_two_categoricals():
    pr = Corruption("uniform", V)
    d3pm = D3PM(pr, T=4)
    p0 = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)

    def model(x_t, t):  # a fixed x0-prediction, whatever the input
        return torch.log(p0).expand(*x_t.shape, V)

    x0, x2 = torch.tensor([[2]]), torch.tensor([[1]])
    # k = 1: q(x_0 | x_1, x0) is one-hot, so the term is -log p(x0 | x_1) = -log p0[x0]
    assert abs(float(d3pm.term(model, x0, x2, 1)[0]) + math.log(0.3)) < 1e-12
    # k = 2, by hand: Q(a) = a I + (1 - a) / V, q(x1 | x2, x0) ~ Q(a2 / a1)[x1, x2] Q(a1)[x0, x1]
    a1, a2 = float(pr.alpha(0.25)), float(pr.alpha(0.5))

    def Q(a):
        return a * torch.eye(V, dtype=torch.float64) + (1 - a) / V

    post = Q(a2 / a1)[:, 1] * Q(a1)  # row x0: unnormalised q(x1 | x2 = 1, x0) over x1
    post = post / post.sum(1, keepdim=True)
    p = (p0[:, None] * post).sum(0)  # sum_x0 p0(x0) q(x1 | x2, x0): exact-form x0-parameterisation
    q = post[2]
    want = float((q * torch.log(q / p)).sum())
    assert abs(float(d3pm.term(model, x0, x2, 2)[0]) - want) < 1e-12


def _expected_gap(d3pm_or_none, mix, pr, reps=200, seed=0):
    """sum_x p(x) (E[bound(x)] + log p(x)) over every sequence x, and its Monte-Carlo standard error."""
    x = all_sequences(mix.vocab, mix.shape)
    p = mix.log_prob(x).exp()
    g = torch.Generator().manual_seed(seed)
    xs = x.repeat(reps, 1)
    model = mix.denoiser(pr)
    if d3pm_or_none is None:
        nll = masked_elbo(model, xs, pr, n_t=4, generator=g)
    else:
        nll = d3pm_or_none.terms(model, xs, generator=g).total
    nll = nll.reshape(reps, -1)
    gap = (p * (nll.mean(0) + mix.log_prob(x))).sum()
    se = (p**2 * nll.var(0) / reps).sum().sqrt()
    return float(gap), float(se)


@pytest.mark.parametrize("kind", ["mask", "uniform"])
def test_on_a_correlated_mixture_the_bound_is_strict(kind):
    mix = random_mixture(3, (3,), 3, torch.Generator().manual_seed(0))
    pr = Corruption(kind, 3)
    gap, se = _expected_gap(D3PM(pr, T=3), mix, pr, reps=400)
    assert gap > 5 * se


def test_one_step_estimate_and_hybrid_loss_are_unbiased_for_the_bound():
    mix = random_mixture(2, (3,), 3, torch.Generator().manual_seed(2))
    d3pm = D3PM(Corruption("mask", 3), T=5)
    model = mix.denoiser(d3pm.process)
    x0 = mix.sample(1, torch.Generator().manual_seed(3)).expand(4000, 3)
    g = torch.Generator().manual_seed(4)
    full = d3pm.terms(model, x0, generator=g).total
    one = d3pm.nll(model, x0, generator=g)
    se = math.sqrt(float(full.var()) / len(full) + float(one.var()) / len(one))
    assert abs(float(full.mean() - one.mean())) < 5 * se
    hyb = d3pm.hybrid_loss(model, x0, lam=0.0, generator=g)
    assert abs(float(hyb.mean() - full.mean())) < 5 * math.sqrt(float(full.var() + hyb.var()) / len(full))
    assert d3pm.terms(model, x0[:2]).bpd(3).shape == (2,)


def test_many_masked_steps_approach_the_continuous_elbo():
    mix = random_mixture(3, (3,), 3, torch.Generator().manual_seed(5))
    pr = Corruption("mask", 3)
    # T = 1 is one step from all-masked: every token drawn independently (no Monte-Carlo error)
    coarse, fine, cont = (_expected_gap(D3PM(pr, 1), mix, pr, reps=2), _expected_gap(D3PM(pr, 16), mix, pr),
                          _expected_gap(None, mix, pr))
    assert coarse[0] - fine[0] > 5 * math.hypot(coarse[1], fine[1])
    assert abs(cont[0]) < 5 * cont[1]  # the continuous-time bound is tight


def test_bad_input_is_one_line():
    d3pm = D3PM(Corruption("mask", 3), T=4)
    with pytest.raises(ValueError, match="T must be a positive integer"):
        D3PM(Corruption("mask", 3), T=0)
    with pytest.raises(ValueError, match="steps must lie in 1..4"):
        d3pm.corrupt(torch.zeros(2, 3, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match="token 3 is outside"):
        d3pm.prior_term(torch.full((2, 3), 3))
    with pytest.raises(ValueError, match="lam must be"):
        d3pm.hybrid_loss(lambda x, t: torch.zeros(*x.shape, 3), torch.zeros(2, 3, dtype=torch.int64), lam=-1)
