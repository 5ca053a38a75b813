"""Iterative alpha-(de)blending on the exact oracle: the deblending iteration is the linear
interpolant's Euler sampler to rounding; with the exact field between two Gaussian mixtures the
forward and backward maps reach the other side's moments and exact log-density to Monte-Carlo error;
forward then backward is the identity up to the solver's error at its order; between Gaussians with
commuting covariances the map is the monotone affine (optimal-transport) map."""

import math

import pytest
import torch
from torch import nn

import diffusionlens.interpolants as I
from diffusionlens import oracle

F64 = torch.float64


def _target():
    return oracle.GaussianMixture(torch.tensor([[1.5, 0.0], [-1.0, 1.2], [-0.5, -1.5]], dtype=F64),
                                  torch.tensor([0.5, 0.6, 0.4], dtype=F64) ** 2,
                                  torch.tensor([0.5, 0.3, 0.2], dtype=F64))


def _source():
    return oracle.GaussianMixture(torch.tensor([[-1.5, 0.0], [1.0, 1.0]], dtype=F64),
                                  torch.tensor([[0.3, 0.1], [0.2, 0.4]], dtype=F64),
                                  torch.tensor([0.3, 0.7], dtype=F64))


def _pair(shape):
    if shape == (2,):
        return _target(), _source()
    tgt = oracle.random_mixture(4, 3, seed=5, std_range=(0.3, 0.7))
    src = oracle.random_mixture(4, 2, seed=6, std_range=(0.3, 0.7))
    return (oracle.GaussianMixture(tgt.means, tgt.covs, tgt.weights, data_shape=shape),
            oracle.GaussianMixture(src.means, src.covs, src.weights, data_shape=shape))


def test_deblending_is_the_linear_interpolants_euler_sampler():
    tgt, src = _target(), _source()
    v = I.ExactVelocity(tgt, src)
    D = I.difference_from_velocity(v)
    a = src.sample(200, torch.Generator().manual_seed(1))
    # Heitz et al.'s iteration in their notation: x <- x + (alpha_{k+1} - alpha_k) D(x, alpha_k)
    T, x = 16, a.clone()
    for k in range(T):
        alpha = torch.full((x.shape[0],), k / T, dtype=F64)
        x = x + (1 / T) * D(x, alpha)
    assert torch.allclose(I.forward_map(v, a, steps=T).x, x, rtol=0, atol=1e-12)


def test_the_difference_and_velocity_conversions_are_inverse():
    v = I.ExactVelocity(_target(), _source())
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(50, 2, generator=g, dtype=F64), torch.rand(50, generator=g, dtype=F64)
    assert torch.equal(I.velocity_from_difference(I.difference_from_velocity(v))(x, t), v(x, t))


def _moments_match(out: torch.Tensor, ref: oracle.GaussianMixture, n_sigma: float = 5.0, bias: float = 0.0):
    """Sample mean and covariance of ``out`` within n_sigma Monte-Carlo standard errors (+ bias) of ref's."""
    f = out.reshape(out.shape[0], -1)
    n, c = f.shape[0], f - f.mean(0)
    se_mean = c.var(0).sqrt() / math.sqrt(n)
    se_cov = (c[:, :, None] * c[:, None, :]).std(0) / math.sqrt(n)
    assert ((f.mean(0) - ref.mean()).abs() < n_sigma * se_mean + bias).all()
    assert ((f.T.cov() - ref.cov()).abs() < n_sigma * se_cov + bias).all()


@pytest.mark.parametrize("shape", [(2,), (1, 2, 2)], ids=["2d", "image-shaped"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_the_maps_with_the_exact_field_reach_the_other_distribution(shape, direction):
    tgt, src = _pair(shape)
    v = I.ExactVelocity(tgt, src)
    start, end = (src, tgt) if direction == "forward" else (tgt, src)
    run = I.forward_map if direction == "forward" else I.backward_map
    n = 2000
    g = torch.Generator().manual_seed(3)
    out = run(v, start.sample(n, g), steps=12, method="heun").x
    assert out.shape == (n, *shape)
    _moments_match(out, end, bias=2e-3)  # heun at 12 steps: solver bias far below the MC error
    # the exact log-density of the mapped samples matches the end law's -entropy to MC error
    lp, lp_ref = end.log_prob(out), end.log_prob(end.sample(n, g))
    se = math.sqrt(lp.var() / n + lp_ref.var() / n)
    assert abs(float(lp.mean() - lp_ref.mean())) < 5 * se


# Round trip of a one-step method of order p: each step's local error h^(p+1) C(x) meets the backward
# step's (-h)^(p+1) C(x); for even p (heun) they cancel and the round trip is of order p + 1.
@pytest.mark.parametrize("method, order, steps", [("euler", 1, 64), ("heun", 3, 32)])
def test_forward_then_backward_is_the_identity_up_to_solver_error_at_its_order(method, order, steps):
    tgt, src = _target(), _source()
    v = I.ExactVelocity(tgt, src)
    a = src.sample(64, torch.Generator().manual_seed(4))
    err = {}
    for T in (steps, 2 * steps):
        b = I.forward_map(v, a, steps=T, method=method).x
        err[T] = float((I.backward_map(v, b, steps=T, method=method).x - a).abs().max())
    assert err[2 * steps] < (0.2 if order == 1 else 1e-3)
    ratio = err[steps] / err[2 * steps]
    assert 2 ** order * 0.7 < ratio < 2 ** order * 1.4  # doubling the steps divides the error by ~2^order


def test_euler_deblending_converges_at_order_one_to_the_exact_map():
    tgt, src = _target(), _source()
    v = I.ExactVelocity(tgt, src)
    a = src.sample(64, torch.Generator().manual_seed(5))
    ref = I.forward_map(v, a, method="dopri5", rtol=1e-8, atol=1e-8).x
    err = {T: float((I.forward_map(v, a, steps=T).x - ref).abs().max()) for T in (64, 128)}
    assert 2 * 0.7 < err[64] / err[128] < 2 * 1.4


def test_between_gaussians_with_commuting_covariances_the_map_is_the_monotone_affine_map():
    m0, s0 = torch.tensor([1.0, -2.0, 0.5], dtype=F64), torch.tensor([0.5, 2.0, 1.0], dtype=F64)
    m1, s1 = torch.tensor([-1.0, 0.0, 3.0], dtype=F64), torch.tensor([1.5, 0.3, 1.0], dtype=F64)
    tgt = oracle.GaussianMixture(m0[None], (s0 ** 2)[None])
    src = oracle.GaussianMixture(m1[None], (s1 ** 2)[None])
    v = I.ExactVelocity(tgt, src)
    a = src.sample(100, torch.Generator().manual_seed(6))
    # in each coordinate a flow is monotone, so it is the quantile map: affine between Gaussians (the OT map)
    fwd = I.forward_map(v, a, method="dopri5", rtol=1e-8, atol=1e-8).x
    assert torch.allclose(fwd, m0 + s0 / s1 * (a - m1), rtol=0, atol=1e-5)
    back = I.backward_map(v, fwd, method="dopri5", rtol=1e-8, atol=1e-8).x
    assert torch.allclose(back, a, rtol=0, atol=1e-5)


class _Tiny(nn.Module):
    def __init__(self, d=2):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(d + 1, 32), nn.SiLU(), nn.Linear(32, d))

    def forward(self, x, t):
        return self.f(torch.cat([x, t[:, None].to(x.dtype)], 1))


def test_fit_blending_regresses_the_difference_on_pairs_of_the_two_laws():
    tgt, src = _target(), _source()
    table = src.sample(500, torch.Generator().manual_seed(7))
    draw = I.blend_pairs(tgt, table)
    x0, x1 = draw(300, torch.Generator().manual_seed(8))
    assert x0.shape == x1.shape == (300, 2)
    rows = {tuple(r) for r in table.tolist()}
    assert all(tuple(r) in rows for r in x1.tolist())  # source rows come from the table
    # the OT re-pairing keeps the multiset of source rows and lowers the transport cost
    x0b, x1b = I.blend_pairs(tgt, table, "ot")(300, torch.Generator().manual_seed(8))
    assert torch.equal(x0b, x0) and (x0b - x1b).pow(2).sum() < (x0 - x1).pow(2).sum()
    net = _Tiny().double()
    losses = I.fit_blending(net, tgt, table, steps=30, batch_size=64, lr=1e-2, seed=0)
    assert len(losses) == 30 and sum(losses[-10:]) < sum(losses[:10])


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="differ in shape"):
        I.blend_pairs(torch.zeros(10, 2), torch.zeros(10, 3))(4, torch.Generator())
    with pytest.raises(ValueError, match="paired"):
        I.blend_pairs(torch.zeros(10, 2), torch.zeros(10, 2), "paired")
    with pytest.raises(ValueError, match="unknown coupling"):
        I.blend_pairs(torch.zeros(10, 2), torch.zeros(10, 2), "nope")(4, torch.Generator())
    with pytest.raises(TypeError, match="source must be"):
        I.blend_pairs(torch.zeros(10, 2), 3.0)
    with pytest.raises(ValueError, match="interpolant"):
        I.fit_blending(_Tiny(), torch.zeros(10, 2), torch.zeros(10, 2), interpolant=I.Interpolant())


def test_the_linear_interpolant_and_the_ot_coupling_conform_to_torchcfm():
    """Peer conformance (torchcfm, optional): its sigma = 0 path and target in its time (t = 0 the
    source) are ours at t = 1 - t_cfm with the velocity reversed; its exact OT plan and our Hungarian
    permutation have the same minimal cost."""
    cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    ot_pot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(9)
    x0, x1 = _target().sample(64, g), _source().sample(64, g)  # target (torchcfm's x1), source (its x0)
    t_cfm = torch.rand(64, generator=g, dtype=F64)
    _, xt, ut = cfm.ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(x1, x0, t_cfm)
    interp = I.Interpolant()
    assert torch.allclose(xt, interp.sample(x0, x1, 1 - t_cfm), rtol=0, atol=1e-14)
    assert torch.allclose(ut, -interp.target(x0, x1, 1 - t_cfm), rtol=0, atol=1e-14)
    cost = torch.cdist(x0, x1).pow(2)
    plan = torch.as_tensor(ot_pot.emd(ot_pot.unif(64), ot_pot.unif(64), cost.numpy()))
    ours = (x0 - I.couple("ot", x0, x1)).pow(2).sum(1).mean()
    assert abs(float(ours) - float((plan * cost).sum())) < 1e-9
