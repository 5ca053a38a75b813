"""The consistency regularisers on the oracle: the consistent-diffusion and score Fokker–Planck residuals
vanish for the exact mixture denoiser (to Monte-Carlo error), are positive for perturbed ones, and
agree with each other as Lai et al.'s equivalence says (Dynkin's formula along the model's own
reverse paths); the regularised objectives train."""

import math

import pytest
import torch

from diffusionlens.distill.regularisers import (
    Regularised,
    consistency_fp_relation,
    consistency_residual,
    fokker_planck_field,
    fokker_planck_residual,
    reverse_paths,
)
from diffusionlens.nets import build_net
from diffusionlens.objectives import OBJECTIVES, Batch, Streams
from diffusionlens.oracle import random_mixture, ring
from diffusionlens.training import TrainConfig, load_denoiser, train

GM = ring()


def data(n, g):
    return GM.sample(n, g)


def scaled(x, sigma):
    """A perturbed denoiser whose score stays conservative (the gradient of a log-density plus a quadratic)."""
    return 0.9 * GM(x, sigma)


def shifted(x, sigma):
    """The exact denoiser of the wrong noise level: conservative, and off by a relative 30% in sigma."""
    return GM(x, sigma * 1.3)


def _zero(res, k=4.0):
    """Each level's estimate is within k standard errors of 0 (plus float64 rounding)."""
    return bool((res["value"].abs() <= k * res["stderr"] + 1e-12).all())


def _positive(res, k=5.0):
    return bool((res["value"] > k * res["stderr"]).all())


def test_fokker_planck_residual_vanishes_only_for_the_exact_denoiser():
    g = torch.Generator().manual_seed(0)
    levels = [0.05, 0.3, 1.0, 3.0]
    exact = fokker_planck_residual(GM, data, levels, n=256, generator=g)
    assert bool((exact["value"] < 1e-20).all())  # exact divergence in 2-D: zero up to rounding
    for wrong in (scaled, shifted):
        assert _positive(fokker_planck_residual(wrong, data, levels[1:3], n=256, generator=g))
    # Hutchinson (two independent probe sets): unbiased, so zero within its standard error
    mix = random_mixture(16, 4, seed=3)
    h = fokker_planck_residual(mix, lambda n, g: mix.sample(n, g), [0.3, 1.0], n=256, divergence="hutchinson",
                               generator=g)
    assert _zero(h) and bool((h["stderr"] > 0).all())
    # (the sigma-shifted denoiser of one Gaussian solves the score FPE, so the shift shows only where
    # the components' posteriors overlap: sigma ~ 1 and above in this 16-D mixture)
    h_wrong = fokker_planck_residual(lambda x, s: mix(x, 2.0 * s), lambda n, g: mix.sample(n, g), [1.0, 3.0],
                                     n=256, divergence="hutchinson", generator=g)
    assert _positive(h_wrong)


def test_the_fokker_planck_field_is_the_heat_equation_for_a_gaussian():
    # data N(0, v I): D = v x / (v + sigma^2); the scaled denoiser c D has s = ((c v - v - sigma^2) x) / ((v + s^2) s^2)
    # and r_FP computed by hand from s = a(sigma) x: sigma^3 (a' x - sigma (2 a^2 x)) (div s is constant in x)
    v, c, sig = 0.5, 0.8, 0.7
    x = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def a(s):
        return (c * v - v - s * s) / ((v + s * s) * s * s)

    h = 1e-5
    da = (a(sig + h) - a(sig - h)) / (2 * h)
    want = sig**3 * (da - 2 * sig * a(sig) ** 2) * x
    (got,) = fokker_planck_field(lambda y, s: c * v * y / (v + s[:, None] ** 2), x, sig)
    assert torch.allclose(got, want, rtol=1e-7, atol=1e-9)


def test_consistency_residual_vanishes_only_for_the_exact_denoiser():
    g = torch.Generator().manual_seed(2)
    kw = dict(n=128, paths=8, steps=8, generator=g)
    assert _zero(consistency_residual(GM, data, [0.05, 0.2, 1.0], **kw))
    assert _positive(consistency_residual(shifted, data, [0.2, 1.0], **kw))
    assert _positive(consistency_residual(scaled, data, [0.05], **kw))


def test_consistency_equals_the_integrated_fokker_planck_residual():
    """Lai et al.: for a conservative score, E[D(x_s) | x_t] - D(x_t) = -E int r_FP d ln sigma along the
    model's reverse paths. The Euler–Maruyama discretisation leaves a relative error O(span / steps) in
    each, so the squared difference may hold (span / steps)^2 ~ 1e-3 of the signal beyond its noise."""
    g = torch.Generator().manual_seed(3)
    kw = dict(span=0.5, steps=16, n=96, paths=8, generator=g)
    rel = consistency_fp_relation(shifted, data, [0.5], **kw)
    c, f, diff = rel["consistency"], rel["fokker-planck"], rel["difference"]
    assert _positive(c) and _positive(f)
    allowance = (0.5 / 16) ** 2 * c["value"]
    assert bool((diff["value"].abs() <= 4 * diff["stderr"] + allowance).all())
    se = torch.sqrt(c["stderr"] ** 2 + f["stderr"] ** 2)
    assert bool(((c["value"] - f["value"]).abs() <= 4 * se + 2 * math.sqrt(float(allowance)) * f["value"]).all())
    exact = consistency_fp_relation(GM, data, [0.5], **kw)
    assert all(_zero(exact[k]) for k in exact)


def test_reverse_paths_step_rows_at_their_own_levels():
    x = GM.sample(3, torch.Generator().manual_seed(4)) + 0.5
    seeds = torch.arange(6, dtype=torch.int64)
    states, denoised, sigmas = reverse_paths(GM, x, torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), 0.3,
                                             steps=3, paths=2, generator=seeds)
    assert states.shape == (4, 6, 2) and denoised.shape == (3, 6, 2) and sigmas.shape == (4, 6)
    assert torch.allclose(sigmas[-1], torch.tensor([0.5, 0.5, 1.0, 1.0, 2.0, 2.0], dtype=torch.float64)
                          * math.exp(-0.3), rtol=1e-14)
    one, _, _ = reverse_paths(GM, x[1:2], 1.0, 0.3, steps=3, paths=2, generator=seeds[2:4])
    assert torch.equal(one, states[:, 2:4])  # per-path noise: a row's paths do not depend on the batch


def test_bad_input():
    with pytest.raises(ValueError, match="sigmas"):
        fokker_planck_residual(GM, data, [0.5, -1.0])
    with pytest.raises(ValueError, match="n must"):
        consistency_residual(GM, data, [0.5], n=1)
    with pytest.raises(ValueError, match="paths"):
        consistency_residual(GM, data, [0.5], paths=1)
    with pytest.raises(ValueError, match="span"):
        consistency_fp_relation(GM, data, [0.5], span=0.0)
    with pytest.raises(ValueError, match="divergence"):
        fokker_planck_residual(GM, data, [0.5], divergence="exactly")
    with pytest.raises(ValueError, match="residual"):
        Regularised(OBJECTIVES["denoising"](_cfg(), None), "martingale", 1.0)
    with pytest.raises(ValueError, match="weight"):
        Regularised(OBJECTIVES["denoising"](_cfg(), None), "consistency", -1.0)
    with pytest.raises(ValueError, match="unconditional"):
        OBJECTIVES["denoising+consistency"](_cfg(dataset="digits", conditional=True), None)


TINY = {"kind": "mlp", "data_shape": [2], "width": 32, "depth": 1, "emb_dim": 16}


def _cfg(**kw):
    base = dict(dataset="oracle-ring", sigma_data=0.5, n_train=512, batch_size=32, steps=6, net=TINY, ckpt_every=0,
                log_every=2, warmup_steps=2, cooldown=0.0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("name", ["denoising+consistency", "denoising+fokker-planck"])
def test_regularised_objectives_are_registered_and_reproduce_across_ranks(name):
    cfg = _cfg(objective=name)
    obj = OBJECTIVES[name](cfg, None)
    model = cfg.denoiser(build_net(TINY)).double()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # a zero-initialised head is the exact denoiser of N(0, sigma_data^2): no residual
        for p in model.parameters():
            p += 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
    x0 = GM.sample(8, torch.Generator().manual_seed(5))
    whole = obj(model, Batch(x0), Streams(0))
    halves = torch.cat([obj(model, Batch(x0, rows=slice(0, 4)), Streams(0)),
                        obj(model, Batch(x0, rows=slice(4, 8)), Streams(0))])
    assert torch.allclose(whole, halves, rtol=1e-12, atol=1e-14)
    plain = OBJECTIVES["denoising"](cfg, None)(model, Batch(x0), Streams(0))
    assert not torch.allclose(whole, plain)  # the residual is added


@pytest.mark.slow
@pytest.mark.parametrize("name,residual", [("denoising+fokker-planck", fokker_planck_residual),
                                           ("denoising+consistency", consistency_residual)])
def test_training_with_a_regulariser_lowers_its_residual(tmp_path, name, residual):
    net = {"kind": "mlp", "data_shape": [2], "width": 64, "depth": 2, "emb_dim": 32}
    out = {}
    for obj in ("denoising", name):
        cfg = _cfg(objective=obj, steps=300, batch_size=128, n_train=4096, net=net, warmup_steps=20, log_every=50)
        train(cfg, tmp_path / obj, progress=False)
        den, _ = load_denoiser(tmp_path / obj)
        g = torch.Generator().manual_seed(0)
        out[obj] = residual(den, lambda n, g: GM.sample(n, g, dtype=torch.float32), [0.2, 0.5, 1.0], n=256,
                            generator=g)
        assert bool(torch.isfinite(out[obj]["value"]).all())
    assert float(out[name]["value"].sum()) < 0.7 * float(out["denoising"]["value"].sum())


def test_the_report_section_says_why_it_does_not_apply(tmp_path):
    from diffusionlens.report.html import Context, NotApplicable, _regularisers

    model = _cfg().denoiser(build_net(TINY))
    with pytest.raises(NotApplicable, match="exact density"):
        _regularisers(Context(tmp_path, {}, _cfg(dataset="digits"), model, None, torch.zeros(1, 2)))


@pytest.mark.slow  # seconds of drawing (matplotlib) on an idle machine, more on a busy one
def test_the_report_section_draws_the_relation(tmp_path):
    from diffusionlens.report.html import Context, _regularisers

    cfg = _cfg(dataset="ring8", sigma_data=1.0)
    fig = _regularisers(Context(tmp_path, {}, cfg, cfg.denoiser(build_net(TINY)), None, torch.zeros(1, 2)))
    png = tmp_path / fig.file
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp.png"))
