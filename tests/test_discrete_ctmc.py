"""Continuous-time discrete diffusion on the exact oracle: the masked ELBO and the reverse samplers."""

import math

import pytest
import torch

from diffusionlens.discrete import (
    CHOICE_TEMPERATURE,
    Corruption,
    all_sequences,
    ancestral,
    mask_counts,
    masked_elbo,
    maskgit,
    random_mixture,
    reverse_probs,
    reverse_rates,
    tau_leaping,
)

L, V = 3, 3


@pytest.fixture(scope="module")
def mix():
    return random_mixture(3, (L,), V, torch.Generator().manual_seed(0))


def _freq(x):
    idx = (x * V ** torch.arange(L - 1, -1, -1)).sum(1)
    return torch.bincount(idx, minlength=V**L).double() / len(x)


def _tv_tolerance(p, n):
    # E[TV] <= 0.5 sum_i sqrt(p_i (1 - p_i) / n); 3x that is far in the tail
    return 1.5 * float((p * (1 - p) / n).sqrt().sum())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_masked_elbo_with_the_exact_posterior_is_the_log_likelihood(mix, schedule):
    pr = Corruption("mask", V, schedule)
    g = torch.Generator().manual_seed(1)
    x0 = mix.sample(4, g)
    n = 2000
    est = masked_elbo(mix.denoiser(pr), x0.repeat_interleave(n, 0), pr, n_t=2, generator=g).reshape(4, n)
    mean, se = est.mean(1), est.std(1) / math.sqrt(n)
    assert bool(((mean + mix.log_prob(x0)).abs() < 4 * se).all()), (mean, -mix.log_prob(x0), se)


def test_masked_elbo_of_a_worse_model_is_a_strict_bound(mix):
    pr = Corruption("mask", V)
    g = torch.Generator().manual_seed(2)
    x0 = mix.sample(4000, g)
    exact = -float(mix.log_prob(x0).mean())

    def flat(x_t, t):  # the data's per-position marginals, ignoring the visible tokens
        return torch.log(mix.posterior(torch.full_like(x_t, V), t, pr))

    est = masked_elbo(flat, x0, pr, n_t=2, generator=g)
    assert float(est.mean()) - exact > 5 * float(est.std()) / math.sqrt(len(est))


def test_ancestral_masked_samples_match_the_oracle(mix):
    pr = Corruption("mask", V)
    n = 4000
    x = ancestral(mix.denoiser(pr), pr, (n, L), 32, generator=torch.Generator().manual_seed(3))
    p = mix.log_prob(all_sequences(V, (L,))).exp()
    assert 0.5 * float((_freq(x) - p).abs().sum()) < _tv_tolerance(p, n)


def test_maskgit_in_random_order_one_token_per_step_is_exact(mix):
    pr = Corruption("mask", V)
    n = 6000
    # a uniformly random order, temperature 1, and a cosine schedule with steps >= pi L / 2: one token
    # per step, the any-order factorisation of the exact posterior
    assert [a - b for a, b in zip([L] + mask_counts(L, 5), mask_counts(L, 5))] == [1] * L + [0, 0]
    x = maskgit(mix.denoiser(pr), pr, (n, L), 5, choice_temperature=math.inf,
                generator=torch.Generator().manual_seed(4))
    p = mix.log_prob(all_sequences(V, (L,))).exp()
    assert 0.5 * float((_freq(x) - p).abs().sum()) < _tv_tolerance(p, n)
    # confidence order without noise and greedy decoding are deterministic per start: mode seeking
    greedy = maskgit(mix.denoiser(pr), pr, (4, L), L, temperature=0.0, choice_temperature=0.0)
    assert bool((greedy == greedy[0]).all())


def test_maskgit_fixes_tokens_on_its_schedule_and_never_changes_them():
    mix = random_mixture(2, (12,), 4, torch.Generator().manual_seed(9))
    pr = Corruption("mask", 4)
    seen = []

    def model(x_t, t):
        seen.append((x_t.clone(), t.clone()))
        return mix.denoiser(pr)(x_t, t)

    for schedule in ("cosine", "linear", "square"):
        for steps in (1, 4, 7, 30):
            seen.clear()
            x = maskgit(model, pr, (5, 12), steps, schedule=schedule, generator=torch.Generator().manual_seed(steps))
            counts = mask_counts(12, steps, schedule)
            states = [s for s, _ in seen] + [x]
            assert [int((s == 4).sum(1).max()) for s in states] == [12] + counts[: len(states) - 2] + [0]
            assert [int((s == 4).sum(1).min()) for s in states] == [12] + counts[: len(states) - 2] + [0]
            for a, b in zip(states[:-1], states[1:]):  # a fixed token stays
                assert bool((b[a != 4] == a[a != 4]).all())
            for s, t in seen:  # the model is asked at the time whose mask fraction is the current one
                assert torch.allclose(1 - pr.alpha(t), (s == 4).double().mean(1))
            assert all(a > b or a == 0 for a, b in zip([12] + counts, counts))  # at least one token per step


def test_pure_confidence_order_is_biased_and_the_default_noise_reduces_it(mix):
    """Why MaskGIT's reference decoder adds annealed Gumbel noise: with the exact posterior and one token
    per step, pure confidence order (mode seeking) is far from p(x0), the default noise much closer."""
    pr = Corruption("mask", V)
    n = 6000
    p = mix.log_prob(all_sequences(V, (L,))).exp()

    def tv(steps, choice):
        x = maskgit(mix.denoiser(pr), pr, (n, L), steps, choice_temperature=choice,
                    generator=torch.Generator().manual_seed(10 + steps))
        return 0.5 * float((_freq(x) - p).abs().sum())

    tol = _tv_tolerance(p, n)
    pure, default = tv(L, 0.0), tv(L, CHOICE_TEMPERATURE)
    assert pure > default + 2 * tol


@pytest.mark.parametrize("kind", ["mask", "uniform"])
def test_tau_leaping_marginals_converge_to_the_exact_ones(mix, kind):
    pr = Corruption(kind, V)
    n = 2000
    exact = mix.probs.mul(mix.weights[:, None, None]).sum(0)  # (L, V) per-position marginals
    errs = []
    for steps in (2, 32):
        x = tau_leaping(mix.denoiser(pr), pr, (n, L), steps, generator=torch.Generator().manual_seed(steps))
        freq = torch.nn.functional.one_hot(x, V).double().mean(0)
        errs.append(float((freq - exact).abs().max()))
    noise = 4 * math.sqrt(0.25 / n)
    assert errs[1] < noise and errs[0] > errs[1]


def test_uniform_ancestral_converges(mix):
    pr = Corruption("uniform", V)
    n = 4000
    x = ancestral(mix.denoiser(pr), pr, (n, L), 32, generator=torch.Generator().manual_seed(5))
    p = mix.log_prob(all_sequences(V, (L,))).exp()
    assert 0.5 * float((_freq(x) - p).abs().sum()) < _tv_tolerance(p, n) + 0.02  # + O(1/steps) bias


@pytest.mark.parametrize("kind", ["mask", "uniform"])
def test_reverse_rates_are_the_derivative_of_reverse_steps(mix, kind):
    pr = Corruption(kind, V, "cosine")
    x_t = pr.corrupt(mix.sample(5, torch.Generator().manual_seed(6)), 0.6, torch.Generator().manual_seed(7))
    p0 = mix.posterior(x_t, 0.6, pr)
    h = 1e-6
    step = reverse_probs(pr, p0, x_t, 0.6 - h, 0.6)
    step = step.scatter(-1, x_t[..., None], 0.0) / h
    rates = reverse_rates(pr, p0, x_t, 0.6)
    assert float((step - rates).abs().max()) < 1e-4 * float(rates.abs().max())  # O(h) + rounding / h


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_dalpha_is_the_derivative_of_alpha(schedule):
    pr = Corruption("mask", V, schedule)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(pr.alpha(t).sum(), t)
    assert float((pr.dalpha(t.detach()) - grad).abs().max()) < 1e-14
    assert float((pr.t_of_alpha(pr.alpha(t.detach())) - t.detach()).abs().max()) < 1e-12


def test_bad_input_is_one_line(mix):
    pr = Corruption("mask", V)
    with pytest.raises(ValueError, match="needs the masking process"):
        masked_elbo(mix.denoiser(pr), mix.sample(2), Corruption("uniform", V))
    with pytest.raises(ValueError, match="logits of shape .2, 3, 4. .vocabulary 4., got .2, 3, 3."):
        masked_elbo(lambda x, t: torch.zeros(*x.shape, 3), mix.sample(2), Corruption("mask", 4))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        ancestral(mix.denoiser(pr), pr, (2, L), 0)
    with pytest.raises(ValueError, match="unknown mask schedule 'exp'"):
        maskgit(mix.denoiser(pr), pr, (2, L), 4, schedule="exp")
    with pytest.raises(ValueError, match="non-empty"):
        ancestral(mix.denoiser(pr), pr, (2, 0), 4)


@pytest.mark.slow
def test_a_trained_small_model_approaches_the_exact_posterior(mix):
    """The masked objective's minimiser is the exact posterior: a small TokenTransformer trained on the
    oracle's samples gets its bound close to the exact entropy and its predictions close to the posterior."""
    from diffusionlens.discrete.net import TokenTransformer
    from diffusionlens.objectives import Batch, Streams
    from diffusionlens.objectives.discrete import MaskedDiffusion

    torch.manual_seed(0)
    pr = Corruption("mask", V)
    net = TokenTransformer(V, L, dim=32, depth=2, heads=2)
    obj, rng = MaskedDiffusion(pr), Streams(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(8)
    for _ in range(600):
        loss = obj(net, Batch(mix.sample(256, g)), rng).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0 = mix.sample(4000, g)
    with torch.no_grad():
        bound = masked_elbo(net, x0, pr, n_t=2, generator=g)
        x_t = pr.corrupt(x0, 0.6, g)
        exact = mix.posterior(x_t, 0.6, pr)
        model = torch.log_softmax(net(x_t, torch.full((4000,), 0.6)).double(), -1)
        context_free = torch.log(mix.posterior(torch.full_like(x_t, V), 0.6, pr))  # ignores the visible tokens
    masked = x_t == V  # the objective trains the masked positions only

    def kl(logq):
        return float((exact * (torch.log(exact.clamp_min(1e-300)) - logq)).sum(-1)[masked].mean())

    entropy = -float(mix.log_prob(x0).mean())
    assert float(bound.mean()) - entropy < 0.05 * entropy + 4 * float(bound.std()) / math.sqrt(4000)
    assert kl(model) < 0.25 * kl(context_free)
