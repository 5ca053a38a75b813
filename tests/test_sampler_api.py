"""Samplers that describe themselves (SamplerSpec), the one grid resolver with composable starts, the
stored sampling plan, and the check of a plain denoiser's output (issue 15, probing 3)."""

import json

import pytest
import torch

from diffusionlens.oracle import random_mixture
from diffusionlens.samplers import (
    SAMPLERS,
    MeanStart,
    NoiseStart,
    SamplingPlan,
    Teleport,
    error_density,
    gaussian_model,
    resolve,
    sample,
    sampler,
    stop_grid,
    tune,
)


@pytest.mark.parametrize("name", [n for n, f in SAMPLERS.items() if not f.spec.adaptive])
def test_the_spec_counts_the_evaluations(name):
    """The NFE a spec predicts is the NFE the counting wrapper sees, and steps_for_nfe inverts it."""
    gm = random_mixture(3, 2, seed=3)
    spec = SAMPLERS[name].spec
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in (2, 5):
        _, info = sample(gm, noise, sampler=name, steps=steps, generator=torch.Generator().manual_seed(0),
                         return_info=True)
        assert info.nfe == spec.nfe(steps)
    for nfe in range(max(1, spec.nfe(1)), 40):
        k = spec.steps_for_nfe(nfe)
        assert spec.nfe(k) <= nfe < spec.nfe(k + 1)


def test_an_nfe_budget_is_met_and_the_analytic_start_spends_its_saving():
    gm = random_mixture(3, 2, seed=3)
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in ("deis", "heun", "unipc"):
        for nfe in (5, 8):
            _, plain = sample(gm, noise, sampler=name, nfe=nfe, return_info=True)
            _, mean = sample(gm, noise, sampler=name, nfe=nfe, start=MeanStart(torch.zeros(3)), return_info=True)
            assert plain.nfe <= nfe and mean.nfe <= nfe
            assert len(mean.sigmas) == len(plain.sigmas) + (1 if name != "heun" else (nfe + 1) % 2)
    with pytest.raises(ValueError, match="steps or nfe"):
        sample(gm, noise, steps=4, nfe=4)
    with pytest.raises(ValueError, match="chooses its own steps"):
        sample(gm, noise, sampler="adaptive", steps=4)
    with pytest.raises(ValueError, match="chooses its own steps"):
        sample(gm, noise, sampler="adaptive", grid="fitted")


def test_a_sampler_function_without_a_spec_gets_no_order():
    gm = random_mixture(3, 2, seed=3)
    noise = torch.randn(4, 3, dtype=torch.float64)

    def mine(denoiser, x, sigmas, *, generator=None, callback=None):
        return SAMPLERS["euler"](denoiser, x, sigmas, callback=callback)

    x = sample(gm, noise, sampler=mine, steps=4)  # a named grid needs no order
    assert torch.equal(x, sample(gm, noise, sampler="euler", steps=4))
    with pytest.raises(ValueError, match="order"):
        sample(gm, noise, sampler=mine, steps=4, grid="fitted")
    sampler(order=1)(mine)
    assert mine.spec.order == 1 and mine.spec.name == "mine"
    grid = sample(gm, noise, sampler=mine, steps=4, grid="fitted", return_info=True)[1].sigmas
    assert torch.equal(grid, error_density(gm, (3,), dtype=torch.float64).grid(4, 1))


def test_starts_are_the_earlier_keywords():
    """MeanStart and Teleport give exactly what analytic_start / teleport gave."""
    gm = random_mixture(4, 3, seed=5)
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = torch.full((4,), 0.1, dtype=torch.float64)
    assert torch.equal(sample(gm, noise, steps=6, start=MeanStart(m)),
                       sample(gm, noise, steps=6, analytic_start=True, data_mean=m))
    G = gaussian_model(gm, (4,), dtype=torch.float64)
    grid = torch.tensor([20.0, 3.0, 0.5, 0.05, 0.0], dtype=torch.float64)
    assert torch.equal(sample(gm, noise, grid=grid, start=Teleport(G)),
                       sample(gm, noise, grid=grid, teleport=G, analytic_start=True))
    # a teleported start on a named family starts that family at its first level
    _, info = sample(gm, noise, steps=5, grid="karras", start=Teleport(G, first=10.0), return_info=True)
    assert abs(info.sigmas[0].item() - 10.0) < 1e-13 * 10.0 and info.nfe == 4  # (10^(1/7))^7, rounded
    with pytest.raises(ValueError, match="Teleport\\(first"):
        sample(gm, noise, grid="karras", start=Teleport(G))
    with pytest.raises(ValueError, match="not both"):
        sample(gm, noise, start=NoiseStart(), analytic_start=True)


def test_resolve_once_then_sample_many_batches():
    gm = random_mixture(4, 3, seed=5)
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = resolve(gm, (4,), "unipc", steps=6, grid="fitted-stop", start=MeanStart(), dtype=torch.float64)
    x, info = sample(gm, noise, sampler="unipc", steps=6, grid="fitted-stop", analytic_start=True, return_info=True)
    assert torch.equal(r.sigmas, info.sigmas)
    assert torch.equal(sample(gm, noise, sampler=r.sampler, grid=r.sigmas, start=r.start), x)
    dens = error_density(gm, (4,), dtype=torch.float64)
    assert torch.equal(r.sigmas, stop_grid(gm, dens, "unipc", 6, analytic_start=True))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_denoiser_of_the_wrong_shape_batch_or_dtype_fails_in_one_line(name):
    gm = random_mixture(3, 2, seed=3)
    noise = torch.randn(4, 3, dtype=torch.float64)
    steps = None if SAMPLERS[name].spec.adaptive else 3
    bad = {
        "batch": (ValueError, lambda x, s: gm(x, s)[:1]),
        "shape": (ValueError, lambda x, s: gm(x, s)[:, :2]),
        "dtype": (ValueError, lambda x, s: gm(x, s).float()),
        "type": (TypeError, lambda x, s: gm(x, s).tolist()),
    }
    for what, (err, den) in bad.items():
        with pytest.raises(err) as e:
            sample(den, noise, sampler=name, steps=steps, generator=torch.Generator().manual_seed(0))
        assert "denoiser" in str(e.value) and "\n" not in str(e.value), what


def test_a_plan_round_trips_and_is_what_sample_uses(tmp_path):
    gm = random_mixture(4, 3, seed=5)
    plan = tune(gm, (4,), ["deis", "unipc"], [6, 8], dtype=torch.float64, pilot=64)
    assert set(plan.tuned) == {(s, n) for s in ("deis", "unipc") for n in (6, 8)}
    plan.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "plan.safetensors"]  # no temporaries
    back = SamplingPlan.load(tmp_path)
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for nfe in (6, 8):
        best = plan.best_sampler(nfe)
        assert plan.tuned[(best, nfe)].pilot_rmse == min(plan.tuned[(s, nfe)].pilot_rmse for s in ("deis", "unipc"))
        for name in ("deis", "unipc", None):  # None: the plan's best at this budget
            t = plan.tuned[(name or best, nfe)]
            assert torch.equal(back.tuned[(name or best, nfe)].sigmas, t.sigmas)
            x, info = sample(gm, noise, sampler=name, nfe=nfe, plan=back, return_info=True)
            assert info.nfe == nfe and torch.equal(info.sigmas, t.sigmas)
            assert torch.equal(x, sample(gm, noise, sampler=name or best, nfe=nfe, plan=plan))
    # a budget the plan has not tuned: the untuned default, in the plan's range
    _, info = sample(gm, noise, nfe=7, plan=back, return_info=True)
    assert isinstance(info.start, NoiseStart) and info.nfe == 7
    assert SamplingPlan.load(tmp_path / "missing") is None


def test_a_plan_tunes_each_sampler_at_its_own_budgets():
    """A mapping {sampler: budgets} tunes exactly those pairs on one pilot: the first budget of a sampler is
    searched as in the product form (same pilot, nothing before it to narrow the search)."""
    gm = random_mixture(4, 3, seed=5)
    per = tune(gm, (4,), {"deis": (6,), "unipc": (8, 12)}, dtype=torch.float64, pilot=64)
    assert set(per.tuned) == {("deis", 6), ("unipc", 8), ("unipc", 12)}
    both = tune(gm, (4,), ["deis", "unipc"], [6], dtype=torch.float64, pilot=64)
    assert torch.equal(per.tuned[("deis", 6)].sigmas, both.tuned[("deis", 6)].sigmas)
    with pytest.raises(ValueError, match="per sampler"):
        tune(gm, (4,), {"deis": (6,)}, (8,), dtype=torch.float64, pilot=16)
    with pytest.raises(ValueError, match="unipc"):
        tune(gm, (4,), {"unipc": (1,)}, dtype=torch.float64, pilot=16)


def test_a_corrupt_plan_fails_in_one_line_naming_the_file(tmp_path):
    gm = random_mixture(3, 2, seed=3)
    plan = tune(gm, (3,), ["deis"], [6], dtype=torch.float64, pilot=16, teleport=False)
    plan.save(tmp_path)
    tensors = (tmp_path / "plan.safetensors").read_bytes()
    (tmp_path / "plan.safetensors").write_bytes(tensors[:-8])
    with pytest.raises(ValueError, match="plan.json") as e:
        SamplingPlan.load(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "plan.safetensors").write_bytes(tensors)
    meta = json.loads((tmp_path / "plan.json").read_text())
    for broken in ("{not json", json.dumps({**meta, "version": 99}), json.dumps({k: v for k, v in meta.items()
                                                                                 if k != "tuned"})):
        (tmp_path / "plan.json").write_text(broken)
        with pytest.raises(ValueError, match="plan.json") as e:
            SamplingPlan.load(tmp_path)
        assert "\n" not in str(e.value)


def test_the_default_last_level_rises_from_ten_steps():
    """Named grid families stop at LATE_SIGMA_MIN from LATE_STEPS intervals, at SIGMA_MIN below; an
    explicit sigma_min, fitted grids' pilot range and the adaptive sampler's end are not affected."""
    from diffusionlens.samplers.resolve import LATE_SIGMA_MIN, LATE_STEPS, SIGMA_MIN

    gm = random_mixture(3, 2, seed=3)
    for steps, last in ((LATE_STEPS - 1, SIGMA_MIN), (LATE_STEPS, LATE_SIGMA_MIN), (32, LATE_SIGMA_MIN)):
        for grid in ("karras", "logsnr"):
            r = resolve(gm, (3,), steps=steps, grid=grid)
            assert abs(r.sigmas[-2].item() - last) < 1e-12 * last and abs(r.sigmas[0].item() - 80.0) < 1e-12 * 80
    assert abs(resolve(gm, (3,), steps=16, sigma_min=0.002).sigmas[-2].item() - 0.002) < 1e-12 * 0.002
    assert resolve(gm, (3,), "adaptive").sigmas.tolist() == [80.0, SIGMA_MIN, 0.0]
    assert abs(resolve(gm, (3,), "ddpm", steps=16).sigmas[-2].item() - SIGMA_MIN) < 1e-12 * SIGMA_MIN
