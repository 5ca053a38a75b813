"""The RNN perspective on the oracle: self-conditioning threaded through every sampler (determinism,
honest NFE, batch-size invariance, a fresh state per call), experts per noise range composed into one
denoiser, and fine-tuning through unrolled sampler steps."""

import pytest
import torch
from torch import nn

from diffusionlens import oracle, samplers
from diffusionlens.losses import edm_loss
from diffusionlens.nets import MLP
from diffusionlens.objectives import Batch, Denoising, SelfConditioning, Streams
from diffusionlens.rnn import (
    AgainstData,
    AgainstSolve,
    Experts,
    SelfConditioned,
    boundaries_of_ranges,
    check_boundaries,
    equal_share_boundaries,
    finetune_unrolled,
    unroll_grid,
    unrolled,
)

GM = oracle.ring()
FIXED = [n for n, fn in samplers.SAMPLERS.items() if not fn.spec.adaptive]


class Recorder:
    """A self-conditioned denoiser made of the oracle: D = exact + 0.3 x0_prev, counting its evaluations."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, x0_prev=None):
        self.calls += 1
        return GM.denoise(x, sigma) + 0.3 * x0_prev


def _noise(n, seed=0):
    return samplers.randn((n, 2), torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", FIXED)
def test_self_conditioning_threads_the_estimate_through_every_sampler(name):
    rec = Recorder()
    den = SelfConditioned(rec)
    noise = _noise(6)
    g = torch.Generator().manual_seed(3)
    a, info = samplers.sample(den, noise, sampler=name, steps=4, generator=g, return_info=True)
    assert info.nfe == samplers.SPECS[name].nfe(4) == rec.calls / 1  # one network evaluation per counted call
    b = samplers.sample(den, noise, sampler=name, steps=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)  # the second call starts from zeros again: same result
    part = samplers.sample(den, noise[:2], sampler=name, steps=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(part, a[:2], rtol=1e-12, atol=1e-12)  # batch-size invariant
    plain = samplers.sample(lambda x, s: GM.denoise(x, s), noise, sampler=name, steps=4,
                            generator=torch.Generator().manual_seed(3))
    assert (a - plain).abs().max() > 1e-3  # the estimate was fed back


def test_the_threaded_state_equals_a_hand_written_recurrence():
    noise = _noise(5)
    grid = samplers.make_grid("karras", 6, 0.002, 80.0)
    out = samplers.sample(SelfConditioned(Recorder()), noise, sampler="euler", grid=grid)
    x, prev = noise * grid[0].item(), torch.zeros_like(noise)
    for s, s_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        prev = GM.denoise(x, s) + 0.3 * prev
        x = x + (x - prev) / s * (s_next - s)
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


def test_direct_calls_and_encoding_see_zeros():
    x = _noise(4)
    den = SelfConditioned(Recorder())
    torch.testing.assert_close(den(x, 0.5), GM.denoise(x, 0.5))
    traj = den.trajectory()
    up = [traj(x, s) for s in (0.1, 0.5, 1.0)]  # an increasing grid never continues a trajectory
    torch.testing.assert_close(up[-1], GM.denoise(x, 1.0))


def test_self_conditioning_objective_feeds_the_zero_pass_estimate_to_half_the_batch():
    seen = []

    def model(x, sigma, x0_prev=None):
        seen.append(x0_prev)
        return GM.denoise(x, sigma)

    x0 = GM.sample(4000, torch.Generator().manual_seed(0))
    obj = SelfConditioning(Denoising(edm_loss(0.5)))
    per = obj(model, Batch(x0), Streams(0))
    used = (seen[-1] != 0).any(1)
    assert abs(used.double().mean().item() - 0.5) < 4 * 0.5 / 4000**0.5
    assert seen[0] is None and seen[0] is not seen[-1]  # the first pass is the estimate-free one
    ref = Denoising(edm_loss(0.5))(lambda x, s, **c: GM.denoise(x, s), Batch(x0), Streams(0))
    torch.testing.assert_close(per, ref)  # same draws: the exact denoiser ignores the estimate


def test_experts_answer_on_their_ranges_and_compose_the_exact_denoiser():
    lo = lambda x, s: torch.full_like(x, -1.0)  # noqa: E731
    hi = lambda x, s: torch.full_like(x, 1.0)  # noqa: E731
    e = Experts([lo, hi], [1.0])
    x = _noise(4)
    sig = torch.tensor([0.5, 1.0, 2.0, 0.999], dtype=torch.float64)
    assert e(x, sig)[:, 0].tolist() == [-1.0, 1.0, 1.0, -1.0]  # a boundary belongs to the expert above it
    exact = Experts([GM.denoise] * 3, equal_share_boundaries(edm_loss(0.5), 3))
    for name in ("heun", "dpmpp_2m", "adaptive"):
        a = samplers.sample(exact, _noise(64), sampler=name, steps=None if name == "adaptive" else 8)
        b = samplers.sample(GM.denoise, _noise(64), sampler=name, steps=None if name == "adaptive" else 8)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_equal_shares_and_bad_boundaries():
    loss = edm_loss(0.5)
    b = equal_share_boundaries(loss, 4)
    t = loss.process.t_of_sigma(torch.tensor(b, dtype=torch.float64))
    u = torch.linspace(0, 1, 200001, dtype=torch.float64)[1:-1]
    draws = loss.t_from_uniform(u)
    shares = [(draws < v).double().mean().item() for v in t]
    assert shares == pytest.approx([0.25, 0.5, 0.75], abs=1e-4)
    with pytest.raises(ValueError, match="a gap between sigma=1 .* sigma=1.5"):
        boundaries_of_ranges([(0.002, 1.0), (1.5, 80.0)])
    with pytest.raises(ValueError, match="an overlap"):
        boundaries_of_ranges([(0.002, 1.0), (0.5, 80.0)])
    assert boundaries_of_ranges([(1.0, 80.0), (0.002, 1.0)]) == [1.0]
    with pytest.raises(ValueError, match="increase strictly"):
        check_boundaries([2.0, 1.0])
    with pytest.raises(ValueError, match="outside the training range"):
        check_boundaries([100.0], sigma_range=(0.002, 80.0))
    with pytest.raises(ValueError, match="3 experts need 2 boundaries"):
        Experts([GM.denoise] * 3, [1.0])


class Perturbed(nn.Module):
    """The exact ring denoiser plus a learnable perturbation (a small MLP with a non-zero output layer)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = MLP(2, width=32, depth=1, emb_dim=16).double()
        nn.init.normal_(self.net.out.weight, std=0.3)

    def forward(self, x, sigma, **cond):
        sig = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        return GM.denoise(x, sig) + self.net(x / (1 + sig[:, None] ** 2).sqrt(), sig.log() / 4)


def _map_error(model, noise, k):
    fn, grid = unroll_grid(model, (2,), "euler", k, 0.002, 80.0)
    with torch.no_grad():
        ref_fn, ref_grid = unroll_grid(GM.denoise, (2,), "heun", 32, float(grid[-2]), 80.0)
        return (fn(model, noise * float(grid[0]), grid) - ref_fn(GM.denoise, noise * float(grid[0]), ref_grid)
                ).pow(2).sum(1).mean().item()


def test_unrolled_fine_tuning_moves_a_perturbed_denoiser_toward_the_exact_map():
    model, noise = Perturbed(), _noise(256, seed=5)
    before = _map_error(model, noise, 3)
    finetune_unrolled(model, AgainstSolve(GM.denoise, 32, "heun", (2,), torch.float64), k=3, steps=15,
                      batch_size=32, lr=3e-3)
    assert _map_error(model, noise, 3) < 0.2 * before


def test_unrolled_fine_tuning_against_the_data_and_bad_depth():
    model = Perturbed()
    x0 = GM.sample(256, torch.Generator().manual_seed(0))
    r = finetune_unrolled(model, AgainstData(x0, steps=4), k=2, steps=3, batch_size=16, lr=1e-3)
    assert r.steps == 3 and len(r.losses) == 3
    with pytest.raises(ValueError, match="larger than the grid"):
        finetune_unrolled(model, AgainstData(x0, steps=4), k=5, steps=1)
    with pytest.raises(ValueError, match="deterministic fixed-grid"):
        finetune_unrolled(model, AgainstData(x0, steps=4), k=2, steps=1, sampler="euler_maruyama")


def test_unrolling_a_self_conditioned_model_threads_its_estimate_with_gradients():
    class SC(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

        def forward(self, x, sigma, x0_prev=None):
            return GM.denoise(x, sigma) + self.a * x0_prev

    model = SelfConditioned(SC())
    fn, grid = unroll_grid(model, (2,), "euler", 6, 0.002, 80.0)
    x = _noise(5) * float(grid[0])
    out, _ = unrolled(model, fn, x, grid)
    torch.testing.assert_close(out, samplers.sample(model, x / float(grid[0]), sampler="euler", grid=grid))
    out.sum().backward()  # through the checkpointed evaluations (the fed-back estimate carries no gradient)
    assert model.denoiser.a.grad is not None and torch.isfinite(model.denoiser.a.grad)
