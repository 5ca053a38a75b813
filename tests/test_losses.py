"""Losses on the oracle: the exact denoiser attains the analytic irreducible loss, perturbations
cost exactly their weighted squared size, densities are normalised and match their draws, and the
implied weightings are the ones the theory names."""

import math

import pytest
import torch

from diffusionlens.losses import (
    Density,
    EDMWeight,
    LogitNormal,
    LogNormal,
    Loss,
    MinSNR,
    Sigmoid,
    Uniform,
    Weighting,
    ddpm_loss,
    edm_loss,
    flow_matching_loss,
    min_snr_loss,
    parse_density,
    parse_weighting,
    vdm_loss,
)
from diffusionlens.model import Denoiser
from diffusionlens.nets import MLP
from diffusionlens.oracle import GaussianMixture, random_mixture, ring
from diffusionlens.parameterization import Param, implied_weighting, x0_weight
from diffusionlens.processes import EDM, VE, VP, Flow

RECIPES = {
    "edm": edm_loss(),
    "ddpm-eps": ddpm_loss(),
    "ddpm-v-cosine": ddpm_loss("cosine", "v"),
    "vdm-elbo": vdm_loss(),
    "min-snr-v": min_snr_loss(),
    "flow-uniform": flow_matching_loss(),
    "flow-logit": flow_matching_loss("logit-normal"),
    "ve-x0-sigmoid-lognormal": Loss(VE(), "x0", "lognormal", "sigmoid"),
    "edm-process-eps-elbo-logit": Loss(EDM(), "eps", "logit-normal", "elbo"),
}
_MIX = random_mixture(16, 4, seed=3)
CASES = {
    "ring2d": (ring(), (2,)),
    "mix16-as-image": (GaussianMixture(_MIX.means, _MIX.covs, _MIX.weights, data_shape=(1, 4, 4)), (1, 4, 4)),
}


def _draw(loss, gm, shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = gm.sample(n, g).reshape(n, *shape)
    t = loss.sample_t(n, g)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    return x0, t, noise


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", RECIPES)
def test_exact_denoiser_attains_the_irreducible_loss(name, case):
    """E[loss(D*)] = E[u(t) tr Cov[x0 | x_hat] / d]: compared on the same draws, the difference has
    mean zero given x_hat, so it must be within a few of its own standard errors of 0."""
    loss, (gm, shape) = RECIPES[name], CASES[case]
    n = 4000
    x0, t, noise = _draw(loss, gm, shape, n, seed=1)
    per = loss(gm, x0, t=t, noise=noise)
    c = loss.process.coefs(t)
    x_hat = x0 + c.sigma.view(-1, *[1] * len(shape)) * noise
    analytic = loss.x0_space_weight(c) * gm.posterior_cov_trace(x_hat, c.sigma) / gm.dim
    diff = per - analytic
    se = diff.std() / math.sqrt(n)
    assert abs(diff.mean()) < 4.5 * se + 1e-9 * analytic.mean().abs(), (diff.mean(), se)


@pytest.mark.parametrize("name", ["edm", "ddpm-eps", "vdm-elbo", "flow-uniform", "min-snr-v"])
def test_perturbing_the_exact_denoiser_costs_its_weighted_size(name):
    """loss(D* + h) - loss(D*) = E[u ||h||^2 / d] + a zero-mean cross term: the minimiser is E[x0 | x_t]."""
    loss, gm = RECIPES[name], ring()
    x0, t, noise = _draw(loss, gm, (2,), 4000, seed=2)
    base = loss(gm, x0, t=t, noise=noise)
    for eps in (0.05, -0.05):
        def perturbed(x, s, eps=eps):
            return gm.denoise(x, s) + eps * torch.tanh(x)

        c = loss.process.coefs(t)
        x_hat = x0 + c.sigma[:, None] * noise
        expected = loss.x0_space_weight(c) * (eps * torch.tanh(x_hat)).pow(2).mean(1)
        d = loss(perturbed, x0, t=t, noise=noise) - base
        assert d.mean() > 0
        resid = d - expected
        assert abs(resid.mean()) < 4.5 * resid.std() / math.sqrt(len(d))


@pytest.mark.parametrize("density", list(Density))
@pytest.mark.parametrize("process", [VP(), VP("cosine"), EDM(), Flow()], ids=["vp", "vp-cos", "edm", "flow"])
def test_density_is_normalised_and_matches_its_draws(density, process):
    loss = Loss(process, "eps", density, "target", t_min=1e-3, t_max=1 - 1e-3)
    # normalisation: integral of p(lambda) |d lambda / dt| dt over [t_min, t_max] = 1 (fine trapezoid in logit t)
    z = torch.linspace(math.log(1e-3 / (1 - 1e-3)), math.log((1 - 1e-3) / 1e-3), 200001, dtype=torch.float64)
    t = torch.sigmoid(z)
    p_t = loss.logsnr_density(t) * process.dlogsnr(t).abs()
    cdf = torch.cumulative_trapezoid(p_t * t * (1 - t), z)
    assert abs(float(cdf[-1]) - 1) < 1e-4
    # the draws follow it: Kolmogorov-Smirnov distance below the 0.1% critical value 1.95 / sqrt(n)
    n = 20000
    draws = loss.sample_t(n, torch.Generator().manual_seed(0)).sort().values
    model_cdf = torch.cat([cdf.new_zeros(1), cdf])
    at = torch.searchsorted(t, draws).clamp(max=len(t) - 1)
    ks = (model_cdf[at] - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max()
    assert ks < 1.95 / math.sqrt(n)
    assert float(draws.min()) >= 1e-3 and float(draws.max()) <= 1 - 1e-3


@pytest.mark.parametrize("param", list(Param))
@pytest.mark.parametrize("density", list(Density))
def test_implied_weightings(param, density):
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    proc = VP("cosine")
    c = proc.coefs(t)
    plain = Loss(proc, param, density, "target")
    p = plain.logsnr_density(t)
    # plain MSE on the target: x0_weight(param) times the density (parameterization's implied weighting)
    torch.testing.assert_close(plain.implied_weighting(t), implied_weighting(param, c, p))
    torch.testing.assert_close(plain.implied_weighting(t), p * x0_weight(param, c) * c.sigma**2)
    # the ELBO weighting is constant (1/2) in lambda whatever the density: the importance weights are right
    torch.testing.assert_close(Loss(proc, param, density, "elbo").implied_weighting(t), torch.full_like(t, 0.5))
    # EDM weighting on any parameterization puts 1/c_out^2 on the x0 error, like EDM's own F-loss
    edm = Loss(proc, param, density, "edm")
    torch.testing.assert_close(edm.implied_weighting(t), Loss(proc, "edm", density, "target").implied_weighting(t))
    # min-SNR caps the x0 weight at gamma: equal to eps-MSE where SNR < gamma, to gamma * x0-MSE elsewhere
    ms = Loss(proc, param, density, MinSNR(gamma=5.0)).implied_weighting(t)
    eps_w = Loss(proc, "eps", density, "target").implied_weighting(t)
    x0_w = Loss(proc, "x0", density, "target").implied_weighting(t)
    torch.testing.assert_close(ms, torch.minimum(eps_w, 5.0 * x0_w))


def test_flow_matching_target_and_time_direction():
    loss = flow_matching_loss()
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05
    # a "network" that outputs n - x0 (it sees x_t = (1-t) x0 + t n) has zero loss
    class Cheat(torch.nn.Module):
        def forward(self, x_in, cond):
            return n - x0

    den = Denoiser(Cheat(), Flow(), "velocity")
    assert float(loss(den, x0, t=t, noise=n).abs().max()) < 1e-12
    # rectified flow's velocity loss equals (1/t^2) ||D - x0||^2 on the x0 error
    torch.testing.assert_close(loss.target_weight(Flow().coefs(t)) * x0_weight("velocity", Flow().coefs(t)),
                               1 / t**2)


def test_denoiser_path_equals_callable_path():
    """The raw-network path (Denoiser) and the converted path (any callable D) give the same loss."""
    torch.manual_seed(0)
    for loss in (edm_loss(), ddpm_loss("linear", "v"), flow_matching_loss()):
        net = MLP(2, width=32, depth=2).double()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        den = Denoiser(net, loss.process, loss.param)
        x0, t, noise = _draw(loss, ring(), (2,), 256, seed=4)
        a = loss(den, x0, t=t, noise=noise)
        b = loss(lambda x, s, den=den: den(x, s), x0, t=t, noise=noise)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown noise density 'beta'.*uniform"):
        Loss(density="beta")
    with pytest.raises(ValueError, match="unknown loss weighting 'p2'.*min-snr"):
        Loss(weighting="p2")
    with pytest.raises(ValueError, match="unknown parameterization"):
        Loss(param="noise")
    with pytest.raises(ValueError, match="sigma > 0"):
        Loss(VP(), "eps", "uniform", "target", t_min=0.0)
    with pytest.raises(ValueError, match="finite sigma"):
        Loss(Flow(), "velocity", "uniform", "target", t_max=1.0)
    with pytest.raises(ValueError, match="gamma must be"):
        Loss(weighting=MinSNR(gamma=0.0))
    with pytest.raises(ValueError, match="p_std must be"):
        LogNormal(p_std=-1.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        parse_density({"kind": "lognormal", "mean": 0.0})
    with pytest.raises(ValueError, match="sigma_data must be"):
        Loss(sigma_data=1e300)
    with pytest.raises(ValueError, match="t_min < t_max"):
        Loss(t_min=0.5, t_max=0.2)
    loss = edm_loss()
    with pytest.raises(ValueError, match="non-finite"):
        loss(ring(), torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="batch >= 1"):
        loss(ring(), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="built for"):
        loss(Denoiser(MLP(2), VP(), "eps"), torch.zeros(4, 2))
    with pytest.raises(FloatingPointError, match="non-finite loss .* at sigma="):
        loss(lambda x, s: x * float("nan"), torch.zeros(4, 2, dtype=torch.float64),
             generator=torch.Generator().manual_seed(0))
    assert Weighting.parse("elbo") is Weighting.ELBO


def test_typed_densities_and_weightings_round_trip():
    """Each density and weighting is a frozen value carrying its parameters; its JSON dict and its kind
    name parse back to it, and a loss built from kind names equals one built from default values."""
    values = [Uniform(), LogNormal(-1.0, 1.4), LogitNormal(0.5, 0.8), MinSNR(4.0), Sigmoid(-1.0), EDMWeight()]
    for v in values:
        parse = parse_density if isinstance(v, (Uniform, LogNormal, LogitNormal)) else parse_weighting
        assert parse(v.to_dict()) == v and parse(v) is v
        assert parse(v.kind.value) == type(v)()
        assert str(v).startswith(v.kind.value)
    assert str(LogNormal()) == "lognormal(p_mean=-1.2, p_std=1.2)" and str(EDMWeight()) == "edm"
    assert Loss(EDM(), "edm", "lognormal", "edm") == Loss(EDM(), "edm", LogNormal(), EDMWeight())
    # the parameters reach the draws: a logit-normal centred at m puts its median t at sigmoid(m)
    loss = Loss(Flow(), "velocity", LogitNormal(mean=1.0, std=0.5), "target")
    t = loss.sample_t(20000, torch.Generator().manual_seed(0))
    assert abs(float(t.median()) - 1 / (1 + math.exp(-1.0))) < 0.01
