"""The exact discrete oracle against brute-force enumeration (Bayes' rule over every sequence)."""

import math

import pytest
import torch

from diffusionlens.discrete import CategoricalMixture, Corruption, all_sequences, random_mixture


@pytest.fixture(scope="module")
def mix():
    return random_mixture(3, (2, 2), 3, torch.Generator().manual_seed(0))


def test_log_prob_normalises_and_matches_the_definition(mix):
    x = all_sequences(3, (2, 2))
    lp = mix.log_prob(x)
    assert abs(float(lp.exp().sum()) - 1) < 1e-12
    # one sequence by hand: sum_k w_k prod_l P_k[l, x_l]
    s = x[17].reshape(-1)
    P = mix.probs.reshape(3, 4, 3)
    want = sum(float(mix.weights[k]) * math.prod(float(P[k, l, s[l]]) for l in range(4)) for k in range(3))
    assert abs(float(lp[17].exp()) - want) < 1e-14


@pytest.mark.parametrize("kind", ["mask", "uniform"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_is_bayes_rule_over_all_sequences(mix, kind, schedule):
    pr = Corruption(kind, 3, schedule)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0.2, 0.5, 0.8, 1.0], dtype=torch.float64)
    x_t = pr.corrupt(mix.sample(4, g), t, g)
    allx = all_sequences(3, (2, 2))
    prior = mix.log_prob(allx).exp()  # (N,)
    for b in range(4):
        lik = pr.marginal(allx, t[b])  # (N, 2, 2, S): q(x_t,l = j | x0_l)
        like = torch.gather(lik, -1, x_t[b].expand(allx.shape)[..., None]).squeeze(-1).prod(-1).prod(-1)
        post = prior * like / (prior * like).sum()
        want = (post @ torch.nn.functional.one_hot(allx, 3).double().reshape(len(post), -1)).reshape(2, 2, 3)
        got = mix.posterior(x_t[b : b + 1], t[b], pr)[0]
        assert float((got - want).abs().max()) < 1e-12


def test_joint_posterior_draws_match_bayes_rule(mix):
    pr = Corruption("uniform", 3)
    x_t = torch.tensor([[[0, 2], [1, 1]]])
    n = 20000
    g = torch.Generator().manual_seed(2)
    x0 = mix.sample_posterior(x_t.expand(n, 2, 2), 0.5, pr, g)
    allx = all_sequences(3, (2, 2))
    lik = pr.marginal(allx, 0.5)
    like = torch.gather(lik, -1, x_t.expand(allx.shape)[..., None]).squeeze(-1).prod(-1).prod(-1)
    post = mix.log_prob(allx).exp() * like
    post = post / post.sum()
    idx = (x0.reshape(n, 4) * torch.tensor([27, 9, 3, 1])).sum(1)
    freq = torch.bincount(idx, minlength=81).double() / n
    assert float((freq - post).abs().max()) < 5 * math.sqrt(0.25 / n)


def test_samples_follow_the_mixture(mix):
    n = 20000
    x = mix.sample(n, torch.Generator().manual_seed(3))
    p = mix.log_prob(all_sequences(3, (2, 2))).exp()
    freq = torch.bincount((x.reshape(n, 4) * torch.tensor([27, 9, 3, 1])).sum(1), minlength=81).double() / n
    chi2 = float(((freq - p) ** 2 / p).sum() * n)  # ~ chi^2 with 80 degrees of freedom: mean 80, sd 12.6
    assert chi2 < 80 + 5 * 12.6


def test_the_denoiser_is_a_model_of_log_posteriors(mix):
    pr = Corruption("mask", 3)
    x_t = torch.tensor([[[3, 1], [3, 0]]])
    out = mix.denoiser(pr)(x_t, torch.tensor([0.5]))
    assert out.shape == (1, 2, 2, 3)
    assert float((out.exp().sum(-1) - 1).abs().max()) < 1e-12
    assert float(out[0, 0, 1, 1].exp()) == 1.0  # an unmasked token is known


def test_bad_input_is_one_line():
    pr = Corruption("mask", 3)
    mix = random_mixture(2, (3,), 3)
    with pytest.raises(ValueError, match="token 4 is outside the vocabulary 0..3"):
        mix.posterior(torch.tensor([[0, 4, 1]]), 0.5, pr)
    with pytest.raises(ValueError, match="outside the vocabulary 0..2"):
        mix.log_prob(torch.tensor([[0, 3, 1]]))  # the mask token is not data
    with pytest.raises(ValueError, match="non-empty"):
        mix.log_prob(torch.zeros(0, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer tensor"):
        mix.log_prob(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="vocabulary 4 but the oracle 3"):
        mix.posterior(torch.zeros(1, 3, dtype=torch.int64), 0.5, Corruption("mask", 4))
    with pytest.raises(ValueError, match="sum to 1"):
        CategoricalMixture(torch.ones(1, 3, 2))
    with pytest.raises(ValueError, match="unknown corruption kind 'blur'"):
        Corruption("blur", 3)
    with pytest.raises(ValueError, match="vocab must be an integer >= 2"):
        Corruption("mask", 1)
