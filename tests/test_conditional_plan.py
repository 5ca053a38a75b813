"""Class-conditional sampling through the one resolver: per-class pilots pooled for the stop, per-class mean
starts, and a sampling plan tuned per class and stored in the same plan files."""

from __future__ import annotations

import math

import pytest
import torch

from diffusionlens import run, samplers
from diffusionlens.nets import build_net
from diffusionlens.oracle import random_mixture
from diffusionlens.processes import karras_grid
from diffusionlens.samplers import SamplingPlan
from diffusionlens.samplers._common import AnalyticStart
from diffusionlens.training import TrainConfig

CLASSES = [random_mixture(4, 3, seed=11), random_mixture(4, 3, seed=12)]


def _pooled_rmse(plan_or_grid, fn, pilots, means=None) -> float:
    """RMS error of ``fn`` on ``grid`` against each condition's own pilot solutions, pooled."""
    sq, count = 0.0, 0
    for i, (den, p) in enumerate(pilots):
        grid = plan_or_grid
        d = den if means is None else AnalyticStart(den, means[i], float(grid[0]))
        x = fn(d, p.pilot_noise * float(grid[0]), grid)
        sq += float((x - p.pilot_x0).pow(2).sum())
        count += x.numel()
    return math.sqrt(sq / count)


def test_tune_per_condition_pools_the_pilots_and_keeps_the_class_means(tmp_path):
    conditions = [gm.denoise for gm in CLASSES]
    plan = samplers.tune(None, (4,), ("deis",), (6,), pilot=64, dtype=torch.float64, conditions=conditions)
    t = plan.tuned[("deis", 6)]
    assert t.start == "mean" and plan.gaussian is None and t.sigmas.shape == (t.steps + 1,)
    # each class's mean, measured on its own pilot: Monte Carlo error of 32 draws of D at sigma 80
    for gm, m in zip(CLASSES, plan.class_means):
        spread = gm.cov().diagonal().sum().sqrt().item()
        assert (m - gm.mean()).norm().item() < 5 * spread / math.sqrt(32) + 0.05 * spread
    # the tuned grid and class-mean start beat the untuned Karras grid at the same NFE on fresh pilots
    fresh = [(c, samplers.error_density(c, (4,), pilot=32, generator=torch.Generator().manual_seed(7 + i),
                                        dtype=torch.float64)) for i, c in enumerate(conditions)]
    deis = samplers.SAMPLERS["deis"]
    tuned = _pooled_rmse(t.sigmas, deis, fresh, means=plan.class_means)
    plain = _pooled_rmse(karras_grid(6), deis, fresh)
    assert tuned < 0.7 * plain, (tuned, plain)
    plan.save(tmp_path)
    back = SamplingPlan.load(tmp_path)
    assert torch.equal(back.class_means, plan.class_means.double())
    assert torch.equal(back.tuned[("deis", 6)].sigmas, t.sigmas)


def test_resolve_takes_per_condition_pilots():
    conditions = [gm.denoise for gm in CLASSES]
    pilots = [(c, samplers.error_density(c, (4,), pilot=16, generator=torch.Generator().manual_seed(i),
                                         dtype=torch.float64)) for i, c in enumerate(conditions)]
    r = samplers.resolve(conditions[0], (4,), "unipc", steps=6, grid="fitted-stop", pilot=pilots,
                         start=samplers.MeanStart(pilots[0][1].data_mean), dtype=torch.float64)
    direct = samplers.stop_grid(conditions[0], samplers.ErrorDensity.average([p for _, p in pilots]), "unipc", 6,
                                pilots=pilots, analytic_start=True)
    assert torch.equal(r.sigmas, direct)
    fitted = samplers.resolve(conditions[0], (4,), "unipc", steps=6, grid="fitted", pilot=pilots)
    average = samplers.ErrorDensity.average([p for _, p in pilots])
    assert torch.equal(fitted.sigmas, average.grid(6, samplers.SPECS["unipc"].order))
    with pytest.raises(TypeError, match="pilot must be"):
        samplers.resolve(conditions[0], (4,), "unipc", steps=6, grid="fitted", pilot=[conditions[0]])
    with pytest.raises(ValueError, match="range"):
        samplers.resolve(conditions[0], (4,), "unipc", steps=6, grid="fitted", pilot=pilots[0][1], sigma_min=0.01)
    karras = samplers.resolve(conditions[0], (4,), "unipc", steps=6, grid="karras-stop", pilot=pilots[0][1])
    assert torch.equal(karras.sigmas, samplers.stop_grid(conditions[0], pilots[0][1], "unipc", 6, base="karras"))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """An untrained class-conditional tiny UNet on the digits: the run layer's conditional path, not quality."""
    net = {"kind": "unet", "in_channels": 1, "image_size": 8, "channels": 4, "channel_mult": [1], "blocks": 1,
           "attn_resolutions": [], "groups": 2, "num_classes": 10}
    cfg = TrainConfig.from_dict({"dataset": "digits", "conditional": True, "net": net, "sigma_data": 0.5})
    torch.manual_seed(0)
    den = cfg.denoiser(build_net(cfg.net)).eval()
    for p in den.parameters():
        p.requires_grad_(False)
    return run.Run(tmp_path_factory.mktemp("cond"), den, cfg, "cpu")


@pytest.mark.slow  # ten per-class pilots on a UNet
def test_conditional_runs_tune_and_sample_with_their_plan(digits_run):
    plan = run.plan.tune(digits_run, samplers=("deis",), nfes=(4,))
    assert plan.class_means.shape == (10, 1, 8, 8) and (digits_run.path / "plan.json").is_file()
    loaded = SamplingPlan.load(digits_run.path)
    den, cfg = digits_run.denoiser, digits_run.config
    # batch-invariant with the per-class mean start taken from the plan (labels cycle through the classes)
    a, y, nfe = run.generate(den, cfg, 12, sampler="deis", steps=4, plan=loaded, batch_size=12)
    b, _, _ = run.generate(den, cfg, 12, sampler="deis", steps=4, plan=loaded, batch_size=5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert nfe == 4 and torch.equal(y, torch.arange(12) % 10)
    plain, _, _ = run.generate(den, cfg, 12, sampler="deis", steps=4, batch_size=12)
    assert (a - plain).abs().max() > 1e-3  # the plan's grid and class means, not the default grid
    guided, _, _ = run.generate(den, cfg, 12, sampler="deis", steps=4, plan=loaded, guidance=2.0)
    unplanned, _, _ = run.generate(den, cfg, 12, sampler="deis", steps=4, guidance=2.0)
    assert torch.equal(guided, unplanned)  # tuned unguided: not used with guidance
