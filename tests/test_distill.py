"""Distillation and consistency models against the exact Gaussian-mixture oracle."""

import math

import pytest
import torch

from diffusionlens import oracle, samplers
from diffusionlens.distill import (
    ConsistencyDistillation,
    ConsistencyFunction,
    ConsistencyTraining,
    ProgressiveDistillation,
    consistency_sample,
    curriculum,
    discretisation,
    halvable_grid,
    progressive_distill,
    target_variance,
    two_step_target,
)
from diffusionlens.model import Denoiser
from diffusionlens.nets.mlp import MLP
from diffusionlens.objectives import Batch, Streams
from diffusionlens.processes import EDM

SIGMA_MAX = 10.0
RING = oracle.ring(std=0.1)


def exact_teacher(x, sigma):
    return RING.denoise(x.double(), sigma.double()).to(x.dtype)


def draw(n, g):
    return RING.sample(n, g).float()


@pytest.fixture(scope="module")
def flow():
    """Noise and its exact probability-flow end point (Heun at 400 steps, float64)."""
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    end = samplers.sample(RING.denoise, z, sampler="heun", steps=400, sigma_min=0.002, sigma_max=SIGMA_MAX)
    return z, end


def rmse(x, end):
    return float(((x.double() - end) ** 2).sum(1).mean().sqrt())


def baseline(z, end, nfe):
    """The best RMSE of euler and deis at this NFE on the same noise."""
    return min(rmse(samplers.sample(RING.denoise, z, sampler=s, steps=nfe, sigma_min=0.002, sigma_max=SIGMA_MAX), end)
               for s in ("euler", "deis"))


# ------------------------------------------------------------------ target variance
def test_target_variance_identities():
    n, sigmas = 4096, [4.0, 1.0, 0.3, 0.1]
    g = torch.Generator().manual_seed(0)
    out = target_variance(RING.denoise, lambda k, gen: RING.sample(k, gen), sigmas, targets=("data", "teacher"),
                          n=n, generator=g)
    # Reference: E tr Cov[x0 | x_t] / d from independent draws, each with its own standard error.
    for j, s in enumerate(sigmas):
        x0 = RING.sample(20 * n, g)
        x = x0 + s * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        post = RING.posterior_cov_trace(x, s) / RING.dim
        se = math.hypot(float(out["data"]["stderr"][j]), float(post.std()) / math.sqrt(len(post)))
        assert abs(float(out["data"]["value"][j]) - float(post.mean())) < 4 * se
    # The exact teacher's target is E[x0 | x_t] itself: no scatter at all.
    assert torch.equal(out["teacher"]["value"], torch.zeros(len(sigmas), dtype=torch.float64))


def test_two_step_target_lands_where_two_teacher_steps_land():
    x = 3.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for s, mid, nxt in ((3.0, 1.0, 0.2), (0.5, 0.1, 0.0)):
        y = two_step_target(RING.denoise, x, s, nxt, mid)
        x1 = samplers.euler_update(x, RING.denoise(x, s), s, mid)
        x2 = samplers.euler_update(x1, RING.denoise(x1, mid), mid, nxt)
        one = samplers.euler_update(x, y, s, nxt) if nxt > 0 else y
        torch.testing.assert_close(one, x2, rtol=1e-12, atol=1e-12)
    grid = halvable_grid(4, 0.002, SIGMA_MAX)
    out = target_variance(RING.denoise, lambda k, gen: RING.sample(k, gen), grid, targets=("two-step",), n=256,
                          generator=torch.Generator().manual_seed(2))
    assert out["two-step"]["sigma"].tolist() == grid[::2][:-1].tolist()
    assert bool((out["two-step"]["value"] >= 0).all())


def test_bad_input():
    with pytest.raises(ValueError, match="power of two"):
        halvable_grid(6)
    with pytest.raises(ValueError, match="weighting"):
        ProgressiveDistillation(exact_teacher, halvable_grid(4), "snr")
    with pytest.raises(ValueError, match="target"):
        target_variance(exact_teacher, draw, [1.0], targets=("x0",))
    with pytest.raises(ValueError, match="teacher that is not a torch module"):
        progressive_distill(exact_teacher, draw, steps=4)
    with pytest.raises(ValueError, match="decrease"):
        consistency_sample(exact_teacher, torch.zeros(2, 2), (1.0, 2.0))


# ------------------------------------------------------------------ progressive distillation
def small_student():
    torch.manual_seed(0)
    return Denoiser(MLP(2, width=96, depth=3, emb_dim=32), EDM(), "edm", sigma_data=0.7)


def test_progressive_distillation_approaches_the_flow_map(flow):
    z, end = flow
    kw = dict(iters=150, batch_size=256, lr=2e-3, sigma_max=SIGMA_MAX)
    students = progressive_distill(exact_teacher, draw, steps=16, student=small_student(), **kw)
    assert sorted(students) == [1, 2, 4, 8]
    one, two = students[1], students[2]
    grid = halvable_grid(16, 0.002, SIGMA_MAX)
    with torch.no_grad():
        r1 = rmse(samplers.sample(one, z.float(), sampler="euler", steps=1, grid=grid[::16]), end)
        r2 = rmse(samplers.sample(two, z.float(), sampler="euler", steps=2, grid=grid[::8]), end)
    assert r1 < 0.3 * baseline(z, end, 1)
    assert r2 < 0.3 * baseline(z, end, 2)


def test_progressive_state_round_trip():
    teacher = small_student()
    obj = ProgressiveDistillation(teacher, halvable_grid(4), "v")
    state = obj.state_dict()
    other = ProgressiveDistillation(small_student().apply(_perturb), halvable_grid(8))
    other.load_state_dict(state)
    assert torch.equal(other.grid, obj.grid) and other.weighting == "v"
    x0 = draw(32, torch.Generator().manual_seed(3))
    student = small_student()
    a = obj(student, Batch(x0), Streams(7))
    b = other(student, Batch(x0), Streams(7))
    assert torch.equal(a, b)


def _perturb(module):
    if isinstance(module, torch.nn.Linear):
        torch.nn.init.normal_(module.weight)


# ------------------------------------------------------------------ consistency models
def consistency_net():
    torch.manual_seed(0)
    return ConsistencyFunction(MLP(2, width=96, depth=3, emb_dim=32), sigma_data=0.7)


def test_boundary_condition():
    f = consistency_net().apply(_perturb)
    x = torch.randn(16, 2)
    torch.testing.assert_close(f(x, 0.002), x, rtol=0, atol=0)


def test_consistency_distillation_approaches_the_flow_map(flow):
    z, end = flow
    f = consistency_net()
    obj = ConsistencyDistillation(exact_teacher, n=18, solver="heun", sigma_max=SIGMA_MAX)
    opt, rng = torch.optim.Adam(f.parameters(), lr=2e-3), Streams(0)
    for _ in range(400):
        loss = obj(f, Batch(draw(256, rng["data"])), rng).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    r1 = rmse(consistency_sample(f, z.float(), (SIGMA_MAX,)), end)
    assert r1 < 0.3 * baseline(z, end, 1)
    # Two steps are a stochastic sampler (fresh noise at the second level): compare distributions.
    x2 = consistency_sample(f, z.float(), (SIGMA_MAX, 0.8), generator=torch.Generator().manual_seed(1))
    radius = x2.double().norm(dim=1)
    assert abs(float(radius.mean()) - 1.0) < 0.1


def test_consistency_training_curriculum_and_state():
    assert curriculum(0, 1000) == 11 and curriculum(999, 1000) == 1281
    assert [curriculum(k, 800, 10, 80) for k in (0, 199, 200, 400, 799)] == [11, 11, 21, 41, 81]
    s = discretisation(11, 0.002, 80.0)
    assert float(s[0]) == pytest.approx(0.002) and float(s[-1]) == pytest.approx(80.0)
    f = consistency_net()
    obj = ConsistencyTraining(100, sigma_max=SIGMA_MAX)
    rng = Streams(0)
    for _ in range(3):
        loss = obj(f, Batch(draw(64, rng["data"])), rng)
        assert loss.shape == (64,) and bool((loss >= 0).all())
    other = ConsistencyTraining(100, sigma_max=SIGMA_MAX)
    other.load_state_dict(obj.state_dict())
    assert other.k == 3 and other.levels() == obj.levels()
    with pytest.raises(ValueError, match="total"):
        ConsistencyTraining(50).load_state_dict(obj.state_dict())


@pytest.mark.slow
def test_consistency_training_from_scratch_learns_the_ring():
    f = consistency_net()
    obj = ConsistencyTraining(1500, sigma_max=SIGMA_MAX)
    opt, rng = torch.optim.Adam(f.parameters(), lr=2e-3), Streams(0)
    for _ in range(1500):
        loss = obj(f, Batch(draw(256, rng["data"])), rng).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    x = consistency_sample(f, z, (SIGMA_MAX, 0.8), generator=torch.Generator().manual_seed(1)).double()
    assert abs(float(x.norm(dim=1).mean()) - 1.0) < 0.1
    # Better than the exact denoiser's own two-step Euler/DEIS samples, by likelihood under the data.
    best = max(float(RING.log_prob(samplers.sample(RING.denoise, z.double(), sampler=s, steps=2, sigma_min=0.002,
                                                   sigma_max=SIGMA_MAX)).mean()) for s in ("euler", "deis"))
    assert float(RING.log_prob(x).mean()) > best
