"""Interpolants beyond Gaussian noise, checked against the exact mixture-to-mixture velocity: the
Gaussian-source linear interpolant is the Flow process's canonical denoiser to rounding, transport
with the exact velocity reproduces the target, couplings do what their definitions say, and (slow)
trained velocities approach the exact one, OT and reflow straighten the paths."""

import math

import pytest
import torch
from torch import nn

import diffusionlens as dl
import diffusionlens.interpolants as I
from diffusionlens import oracle
from diffusionlens.interpolants import couplings
from diffusionlens.objectives import OBJECTIVES, Batch, Streams
from diffusionlens.training import TrainConfig, train
from diffusionlens.training.state import load_denoiser

F64 = torch.float64


def _two_blob_source():
    return oracle.GaussianMixture(torch.tensor([[-1.5, 0.0], [1.0, 1.0]], dtype=F64),
                                  torch.tensor([[0.3, 0.1], [0.2, 0.4]], dtype=F64),
                                  torch.tensor([0.3, 0.7], dtype=F64))


def test_gaussian_linear_interpolant_is_the_flow_process():
    gm = oracle.random_mixture(3, 4, seed=3)
    exact = I.ExactVelocity(gm, I.standard_normal(3))
    g = torch.Generator().manual_seed(0)
    t = torch.rand(400, generator=g, dtype=F64) * 0.98 + 0.01
    x = exact.marginal(0.5).sample(400, g)
    # the interpolant's exact velocity is Param.VELOCITY of the exact canonical denoiser under Flow
    assert torch.allclose(exact(x, t), I.velocity_from_denoiser(gm, x, t), rtol=0, atol=1e-11)
    # and back: the denoiser implied by the exact velocity is the exact posterior mean
    sigma = torch.exp(torch.linspace(-3, 3, 400, dtype=F64))
    assert torch.allclose(I.as_denoiser(exact)(x, sigma), gm.denoise(x, sigma), rtol=0, atol=1e-10)


def test_the_package_samplers_run_a_velocity_model():
    gm = oracle.ring()
    noise = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    via_velocity = dl.sample(I.as_denoiser(I.ExactVelocity(gm, I.standard_normal(2))), noise, sampler="heun", steps=8)
    assert torch.allclose(via_velocity, dl.sample(gm, noise, sampler="heun", steps=8), rtol=0, atol=1e-9)


@pytest.mark.parametrize("interp", [I.Interpolant(), I.Interpolant("trig", noise=0.5)], ids=["linear", "trig+noise"])
def test_marginals_end_at_target_and_source(interp):
    gm, src = oracle.ring(), _two_blob_source()
    exact = I.ExactVelocity(gm, src, interp)
    for t, ref in ((0.0, gm), (1.0, src)):
        m = exact.marginal(t)
        assert torch.allclose(m.mean(), ref.mean(), atol=1e-12) and torch.allclose(m.cov(), ref.cov(), atol=1e-12)


@pytest.mark.parametrize("interp", [I.Interpolant(), I.Interpolant("trig", noise=0.5)], ids=["linear", "trig+noise"])
def test_transport_with_the_exact_velocity_reproduces_the_target(interp):
    gm, src = oracle.ring(), _two_blob_source()
    exact = I.ExactVelocity(gm, src, interp)
    n = 1000
    x1 = src.sample(n, torch.Generator().manual_seed(2))
    out = I.transport(exact, x1, steps=16, method="heun").x
    assert out.shape == x1.shape
    # Monte-Carlo standard errors of the sample mean and covariance entries, from the samples
    c = out - out.mean(0)
    se_mean = c.var(0).sqrt() / math.sqrt(n)
    prods = c[:, :, None] * c[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    assert ((out.mean(0) - gm.mean()).abs() < 5 * se_mean).all()
    assert ((out.T.cov() - gm.cov()).abs() < 5 * se_cov + 1e-3).all()
    # every sample lands on a ring mode: within 6 std of its nearest mean
    dist = torch.cdist(out, gm.means).min(1).values
    assert float(dist.max()) < 6 * 0.05


def test_fixed_step_transport_is_second_order_and_matches_the_adaptive_solver():
    gm, src = oracle.ring(4, std=0.2), _two_blob_source()
    exact = I.ExactVelocity(gm, src, I.Interpolant("trig"))
    x1 = src.sample(64, torch.Generator().manual_seed(3))
    ref = I.transport(exact, x1, method="dopri5", rtol=1e-7, atol=1e-7)
    assert ref.nfe > 0
    errs = {s: float((I.transport(exact, x1, steps=s, method="heun").x - ref.x).abs().max()) for s in (16, 32)}
    assert errs[16] / errs[32] > 2 ** 2 * 0.75  # order 2: doubling the steps divides the error by ~4


def test_straightness_is_zero_for_a_constant_velocity_and_positive_for_the_independent_coupling():
    x1 = torch.randn(50, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    assert float(I.straightness(lambda x, t: torch.ones_like(x), x1, steps=4).abs().max()) < 1e-24
    gm = oracle.ring()
    s = I.straightness(I.ExactVelocity(gm, I.standard_normal(2)), x1, steps=16)
    assert float(s.mean()) > 0.1  # the independent coupling's paths bend towards the modes


def test_ot_coupling_is_the_optimal_permutation():
    g = torch.Generator().manual_seed(5)
    x0, x1 = torch.randn(40, 2, generator=g, dtype=F64), torch.randn(40, 2, generator=g, dtype=F64) + 1
    y = couplings.ot(x0, x1)
    assert sorted(map(tuple, y.tolist())) == sorted(map(tuple, x1.tolist()))  # a permutation of x1
    cost = float((x0 - y).pow(2).sum())
    for _ in range(20):  # no random permutation beats it
        assert cost <= float((x0 - x1[torch.randperm(40, generator=g)]).pow(2).sum()) + 1e-12


def test_sinkhorn_plan_has_uniform_marginals_and_tends_to_ot():
    g = torch.Generator().manual_seed(6)
    x0, x1 = torch.randn(30, 2, generator=g, dtype=F64), torch.randn(30, 2, generator=g, dtype=F64)
    cost = torch.cdist(x0, x1).pow(2)
    scale = float(cost.mean())
    plan = I.sinkhorn_plan(cost, reg=0.1 * scale, iters=400)
    assert torch.allclose(plan.sum(0), torch.full((30,), 1 / 30, dtype=F64), atol=1e-12)
    assert torch.allclose(plan.sum(1), torch.full((30,), 1 / 30, dtype=F64), atol=1e-7)
    ot_cost = float((x0 - couplings.ot(x0, x1)).pow(2).sum(1).mean())
    costs = [float((I.sinkhorn_plan(cost, r * scale, 600) * cost).sum()) for r in (1.0, 0.1, 0.03)]
    assert costs[0] > costs[1] > costs[2] >= ot_cost - 1e-9 and costs[2] - ot_cost < 0.3 * (costs[0] - ot_cost)
    y = couplings.sinkhorn(x0, x1, g, reg=1e-3)
    assert y.shape == x1.shape


def test_bad_input_is_one_clear_error(monkeypatch):
    a, b = torch.zeros(4, 2), torch.zeros(4, 3)
    for name in I.COUPLINGS:
        with pytest.raises(ValueError, match="shape"):
            I.couple(name, a, b)
    with pytest.raises(ValueError, match="unknown coupling 'nope'"):
        I.couple("nope", a, a)
    monkeypatch.setattr(couplings, "MAX_OT_BATCH", 3)
    with pytest.raises(ValueError, match="limit is 3"):
        I.couple("ot", a, a)
    with pytest.raises(ValueError, match="unknown degradation 'smudge'"):
        I.make_source("degraded:smudge")
    with pytest.raises(ValueError, match="unknown source 'uniform'"):
        I.make_source("uniform")
    with pytest.raises(ValueError, match="paired source"):
        I.VelocityMatching(coupling="paired")
    with pytest.raises(ValueError, match="paired source"):
        I.VelocityMatching(source=I.Degraded("noise"))
    with pytest.raises(ValueError, match="unknown interpolant path 'cubic'"):
        I.Interpolant("cubic")
    with pytest.raises(ValueError, match="needs z"):
        I.Interpolant(noise=1.0).sample(a, a, torch.zeros(4))
    with pytest.raises(ValueError, match="unknown transport method 'rk9'"):
        I.transport(lambda x, t: x, a, method="rk9")
    with pytest.raises(ValueError, match="dimension"):
        I.ExactVelocity(oracle.ring(), I.standard_normal(3))


def test_the_exact_velocity_minimises_the_objective():
    gm, src = oracle.ring(), _two_blob_source()
    exact = I.ExactVelocity(gm, src)
    obj = I.VelocityMatching(I.Interpolant(), I.MixtureSource(src))
    x0 = gm.sample(4000, torch.Generator().manual_seed(7))
    best = obj(exact, Batch(x0), Streams(0))
    assert best.shape == (4000,)
    # L(v) - L(exact) = E||v - exact||^2 / d: a shifted field loses by exactly the shift's square
    shifted = obj(lambda x, t: exact(x, t) + 0.3, Batch(x0), Streams(0))
    assert abs(float(shifted.mean() - best.mean()) - 0.09) < 4 * float((shifted - best).std()) / math.sqrt(4000)


def test_degraded_source_pairs_with_its_target():
    x0 = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    obj = I.VelocityMatching(source=I.make_source("degraded:block"), coupling="paired")
    net = lambda x, t: torch.zeros_like(x)  # noqa: E731
    per = obj(net, Batch(x0), Streams(0))
    # the loss of the zero field is ||x1 - x0||^2 / d: the block's pixels only
    assert torch.allclose(per, x0[:, :, 2:6, 2:6].pow(2).flatten(1).sum(1) / 64, atol=1e-6)


def test_the_interpolant_objectives_train_on_the_loop(tmp_path):
    tiny = {"kind": "mlp", "data_shape": [2], "width": 16, "depth": 1, "emb_dim": 16}
    with pytest.raises(ValueError, match="process='flow', param='velocity'"):
        OBJECTIVES["interpolant"](TrainConfig(dataset="moons", net=tiny), None)
    cfg = TrainConfig(dataset="moons", n_train=64, batch_size=16, steps=3, net=tiny, objective="interpolant+ot",
                      process="flow", param="velocity", density="uniform", weighting="target", log_every=1,
                      ckpt_every=0, warmup_steps=0, cooldown=0.0)
    res = train(cfg, tmp_path / "run", progress=False)
    assert res.step == 3 and math.isfinite(res.loss)
    # the run is a canonical denoiser of the flow process; its velocity is the network itself
    denoiser, _ = load_denoiser(res.checkpoint, ema=False)
    x, t = torch.randn(8, 2), torch.full((8,), 0.5)
    with torch.no_grad():
        assert torch.allclose(I.velocity_from_denoiser(denoiser, x, t), denoiser.net(x, t), atol=1e-5)


# ---------------------------------------------------------------------- trained (slow)


class _TinyVelocity(nn.Module):
    def __init__(self, d=2, width=64):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(d + 1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                               nn.Linear(width, d))

    def forward(self, x, t):
        return self.f(torch.cat([x, t[:, None].to(x.dtype)], 1))


def _trained(coupling, steps=400, seed=0, gm=None):
    gm, src = gm or oracle.ring(), I.standard_normal(2)
    torch.manual_seed(seed)
    net = _TinyVelocity().double()

    def draw(n, g):
        x0 = gm.sample(n, g)
        return x0, I.couple(coupling, x0, src.sample(n, g), g)

    I.fit(net, draw, steps=steps, batch_size=256, lr=3e-3, seed=seed)
    return I.net_velocity(net)


@pytest.mark.slow
def test_a_trained_velocity_approaches_the_exact_one():
    # wider modes than the default ring: the exact field is then smooth enough for a small net to fit
    gm, src = oracle.ring(std=0.2), I.standard_normal(2)
    exact = I.ExactVelocity(gm, src)
    g = torch.Generator().manual_seed(9)
    t = torch.rand(2000, generator=g, dtype=F64)
    xt = I.Interpolant().sample(gm.sample(2000, g), src.sample(2000, g), t)
    ref = exact(xt, t)
    rel = {s: float((_trained("independent", s, gm=gm)(xt, t) - ref).pow(2).sum(1).mean() / ref.pow(2).sum(1).mean())
           for s in (50, 400)}
    assert rel[400] < 0.5 * rel[50] and rel[400] < 0.3


@pytest.mark.slow
def test_ot_coupling_straightens_the_paths():
    gm, src = oracle.ring(), I.standard_normal(2)
    x1 = src.sample(1000, torch.Generator().manual_seed(10))
    s_ind = I.straightness(I.ExactVelocity(gm, src), x1, steps=16)
    v_ot = _trained("ot")
    s_ot = I.straightness(v_ot, x1, steps=16)
    assert float(s_ot.mean()) < 0.2 * float(s_ind.mean())
    out = I.transport(v_ot, x1, steps=16).x  # and it still transports to the target
    assert float((out.mean(0) - gm.mean()).abs().max()) < 0.1 and torch.allclose(out.T.cov(), gm.cov(), atol=0.08)


@pytest.mark.slow
def test_a_reflow_round_straightens_and_one_step_sampling_improves():
    gm, src = oracle.ring(), I.standard_normal(2)
    exact = I.ExactVelocity(gm, src)
    rounds = I.reflow(exact, lambda: _TinyVelocity().double(), lambda n, g: src.sample(n, g), rounds=1,
                      n_pairs=4096, solve_steps=16, fit_steps=400, n_eval=1000, seed=11)
    x1 = src.sample(1000, torch.Generator().manual_seed(11))
    s0 = float(I.straightness(exact, x1, steps=16).mean())
    assert rounds[0].straightness < 0.3 * s0
    # one Euler step: the reflowed flow lands nearer the modes than the exact (curved) one
    one = {k: I.transport(v, x1, steps=1, method="euler").x
           for k, v in (("exact", exact), ("reflow", I.net_velocity(rounds[0].net)))}
    miss = {k: float(torch.cdist(x, gm.means).min(1).values.pow(2).mean()) for k, x in one.items()}
    assert miss["reflow"] < 0.5 * miss["exact"]
