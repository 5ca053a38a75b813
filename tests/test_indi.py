"""InDI against its exact oracle: a Gaussian-mixture target under a linear Gaussian degradation."""

import math

import pytest
import torch

from diffusionlens.interpolants import indi
from diffusionlens.interpolants.core import Interpolant
from diffusionlens.oracle import GaussianMixture, random_mixture


def _blur_matrix(d: int) -> torch.Tensor:
    """A 1-D three-tap blur (0.25, 0.5, 0.25) with replicated ends: linear, non-invertible-ish, not symmetric."""
    H = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d):
        for k, w in ((-1, 0.25), (0, 0.5), (1, 0.25)):
            H[i, min(max(i + k, 0), d - 1)] += w
    return H


def test_one_step_is_the_posterior_mean_of_a_gaussian():
    g = torch.Generator().manual_seed(0)
    d = 4
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = A @ A.T + 0.1 * torch.eye(d, dtype=torch.float64)
    m = torch.randn(d, generator=g, dtype=torch.float64)
    gm = GaussianMixture(m[None], A[None])
    deg = indi.LinearGaussianDegradation(_blur_matrix(d), 0.3)
    oracle = indi.PairedOracle(gm, deg)
    y = deg(gm.sample(64, g), g)
    H, s2 = deg.H, 0.3**2
    exact = m + (A @ H.T @ torch.linalg.solve(H @ A @ H.T + s2 * torch.eye(d, dtype=torch.float64),
                                              (y - m @ H.T).T)).T
    assert torch.allclose(indi.restore(oracle.velocity, y, 1), exact, atol=1e-10, rtol=0)
    # one InDI step from any t is Euler's step on the velocity
    x, t, dt = y * 0.7, 0.6, 0.2
    step = (dt / t) * indi.clean_estimate(oracle.velocity, x, t) + (1 - dt / t) * x
    assert torch.allclose(step, x - dt * oracle.velocity(x, torch.full((64,), t, dtype=torch.float64)), atol=1e-12)


def test_the_oracle_with_h_identity_is_the_mixture_denoiser():
    """y = x0 + s n: x_t = x0 + t s n, so E[x0 | x_t] is the mixture's denoiser at sigma = t s."""
    g = torch.Generator().manual_seed(1)
    gm = random_mixture(3, 5, seed=1)
    oracle = indi.PairedOracle(gm, indi.LinearGaussianDegradation(torch.eye(gm.dim, dtype=torch.float64), 0.8))
    x = gm.sample(50, g) + 0.4 * torch.randn(50, gm.dim, generator=g, dtype=torch.float64)
    for t in (0.25, 0.5, 1.0):
        assert torch.allclose(oracle.clean(x, t), gm.denoise(x, 0.8 * t), atol=1e-9, rtol=0)


def test_the_oracle_velocity_is_the_regression_target_on_average():
    """b(x_t, t) = E[y - x0 | x_t]: the residual y - x0 - b(x_t, t) is uncorrelated with functions of x_t."""
    g = torch.Generator().manual_seed(2)
    gm = GaussianMixture(torch.tensor([[-1.0, 0.0], [1.5, 0.5]], dtype=torch.float64),
                         torch.tensor([0.3, 0.2], dtype=torch.float64))
    deg = indi.LinearGaussianDegradation(torch.tensor([[0.6, 0.3], [0.0, 0.5]], dtype=torch.float64), 0.4)
    oracle = indi.PairedOracle(gm, deg)
    n = 40_000
    x0 = gm.sample(n, g)
    y = deg(x0, g)
    t = torch.randint(1, 16, (n,), generator=g).double() / 16  # a few times: the oracle solves per time
    xt = Interpolant().sample(x0, y, t)
    res = Interpolant().target(x0, y, t) - oracle.velocity(xt, t)
    for feature in (torch.ones(n, dtype=torch.float64), xt[:, 0], xt[:, 1], torch.tanh(xt[:, 0] * xt[:, 1])):
        prod = res * feature[:, None]
        z = prod.mean(0) / (prod.std(0) / math.sqrt(n))
        assert z.abs().max() < 4.5, z


@pytest.fixture(scope="module")
def gaussian_problem():
    g = torch.Generator().manual_seed(3)
    gm = GaussianMixture(torch.tensor([[0.5, -0.5]], dtype=torch.float64),
                         torch.tensor([[[1.0, 0.6], [0.6, 0.8]]], dtype=torch.float64))
    deg = indi.LinearGaussianDegradation(torch.tensor([[0.5, 0.2], [0.1, 0.4]], dtype=torch.float64), 0.3)
    x0 = gm.sample(10_000, g)
    return gm, indi.PairedOracle(gm, deg), x0, deg(x0, g)


def test_many_steps_reach_the_clean_law_and_trade_distortion(gaussian_problem):
    gm, oracle, x0, y = gaussian_problem
    one = indi.restore(oracle.velocity, y, 1)
    many = indi.restore(oracle.velocity, y, 100)
    n = x0.shape[0]
    # the flow's end has the clean law: mean and covariance within Monte-Carlo error plus Euler's O(1/100)
    se = (gm.covs[0].diagonal() / n).sqrt()
    assert ((many.mean(0) - gm.means[0]).abs() < 5 * se + 0.01).all()
    assert torch.allclose(torch.cov(many.T), gm.covs[0], atol=0.05, rtol=0)
    # one step: the MMSE, the trace of the exact posterior covariance; more steps: a larger squared error
    A, H, s2 = gm.covs[0], oracle.degradation.H, 0.3**2
    post = A - A @ H.T @ torch.linalg.solve(H @ A @ H.T + s2 * torch.eye(2, dtype=torch.float64), H @ A)
    e1, em = (one - x0).pow(2).sum(1), (many - x0).pow(2).sum(1)
    assert abs(float(e1.mean()) - float(post.trace())) < 4 * float(e1.std()) / math.sqrt(n)
    diff = em - e1
    assert float(diff.mean()) > 10 * float(diff.std()) / math.sqrt(n)
    # the one-step restoration's law is narrower than the clean law (regression to the mean)
    assert float(torch.cov(one.T).trace()) < float(gm.covs[0].trace()) - 0.1


def test_bad_input():
    with pytest.raises(ValueError, match="steps"):
        indi.restore(lambda x, t: x, torch.zeros(2, 2), 0)
    with pytest.raises(ValueError, match="square"):
        indi.LinearGaussianDegradation(torch.zeros(2, 3), 0.1)
    with pytest.raises(ValueError, match="differ in shape"):
        indi.psnr(torch.zeros(2, 3), torch.zeros(2, 4))


def test_a_trained_velocity_restores_near_the_exact_mmse():
    """Velocity matching with the paired coupling (the objective's loss, :func:`fit`) on a linear Gaussian
    degradation: one InDI step of the trained field has a squared error between the exact MMSE (no estimator
    beats it, up to Monte-Carlo error) and 1.25 x the MMSE; the exact oracle's own one step sits at the MMSE."""
    from diffusionlens.interpolants import fit, net_velocity
    from diffusionlens.nets import MLP

    torch.manual_seed(0)
    gm = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64),
                         torch.tensor([0.15, 0.1], dtype=torch.float64))
    deg = indi.LinearGaussianDegradation(torch.tensor([[0.5, 0.3], [0.2, 0.4]], dtype=torch.float64), 0.2)

    def draw(n, g):
        x0 = gm.sample(n, g, dtype=torch.float32)
        return x0, deg(x0, g)

    net = MLP(2, width=64, depth=2, emb_dim=32)
    fit(net, draw, steps=120, batch_size=256, lr=3e-3, seed=1)
    x0, y = draw(10_000, torch.Generator().manual_seed(5))
    exact = (indi.restore(indi.PairedOracle(gm, deg).velocity, y.double(), 1) - x0.double()).pow(2).sum(1)
    learned = (indi.restore(net_velocity(net), y, 1) - x0).double().pow(2).sum(1)
    se = float(exact.std()) / math.sqrt(x0.shape[0])
    assert float(exact.mean()) - 4 * se < float(learned.mean()) < 1.25 * float(exact.mean())
