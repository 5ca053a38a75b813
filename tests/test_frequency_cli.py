"""The frequency view's edges: the ``spectrum`` command, the report section, ``train --objective
blurring``, and the one-line errors (too small, not images, sigma outside the run's range)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusionlens import cli
from diffusionlens.data import load_dataset
from diffusionlens.frequency import PowerLawGaussian
from diffusionlens.frequency import measure as fm
from diffusionlens.report import html
from diffusionlens.training import TrainConfig


def test_spectrum_of_a_dataset_writes_numbers_and_figure(tmp_path, capsys):
    assert cli.main(["spectrum", "digits", "--n", "300", "--sigmas", "0.1,1", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "power ~ f^" in out and "σ=0.1" in out
    assert (tmp_path / "s.json").is_file() and (tmp_path / "s.png").is_file()


def test_spectrum_refuses_what_has_no_spectrum(tmp_path, capsys):
    assert cli.main(["spectrum", "moons", "--out", str(tmp_path / "s")]) == 2
    assert "needs an image data set" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["spectrum", "digits", "--sigmas", "0.1,-1", "--out", str(tmp_path / "t")])
    assert e.value.code == 2 and "positive numbers" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _fake_run(tmp_path):
    return SimpleNamespace(config=TrainConfig(dataset="digits"), path=Path(tmp_path),
                           denoiser=PowerLawGaussian((1, 8, 8)), plan=None)


def test_a_runs_sigma_must_lie_in_its_range(tmp_path, monkeypatch):
    from diffusionlens import run as runs

    monkeypatch.setattr(runs, "open_run", lambda source, device="cpu": _fake_run(tmp_path))
    with pytest.raises(ValueError, match="sigma 200 is outside the run's noise range"):
        fm.spectrum("fake", sigmas=(0.1, 200.0), settle=False)
    r = fm.spectrum("fake", n=200, settle=True)
    assert max(r["hinge"]["sigma"]) <= 80 and r["default_stem"] == str(tmp_path / "spectrum")
    st = r["settling"]
    assert np.asarray(st["settled"]).shape == (len(st["sigmas"]), len(st["freq"]))


def test_report_section_draws_the_frequency_view(tmp_path):
    test = load_dataset("digits", "test")
    ctx = html.Context(run_dir=tmp_path, ev={"sampler": "heun"}, cfg=TrainConfig(dataset="digits"),
                       denoiser=PowerLawGaussian((1, 8, 8)), test=test, samples=test.x[:4])
    fig = html._frequency(ctx)
    assert (tmp_path / fig.file).is_file() and "hinge" in fig.caption
    toy = load_dataset("moons", "test", n=10)
    with pytest.raises(html.NotApplicable, match="image data"):
        html._frequency(html.Context(tmp_path, {}, TrainConfig(dataset="moons"), None, toy, toy.x))


def test_train_takes_the_blurring_objective():
    args = cli.build_parser().parse_args(["train", "--objective", "blurring", "--steps", "1"])
    assert cli._train_config(args).objective == "blurring"


@pytest.mark.slow
def test_a_blurring_run_trains_and_samples_through_the_run_layer(tmp_path):
    from diffusionlens import run as runs
    from diffusionlens.training import train

    cfg = TrainConfig(dataset="digits", objective="blurring", steps=20, batch_size=32, log_every=10)
    train(cfg, tmp_path / "b", progress=False)
    r = runs.open_run(tmp_path / "b")
    x, y, nfe = runs.generate(r.denoiser, r.config, 8, sampler="euler", steps=6)
    assert x.shape == (8, 1, 8, 8) and y is None and nfe == 6 and bool(torch.isfinite(x).all())
    x2, _, _ = runs.generate(r.denoiser, r.config, 3, sampler="euler", steps=6, batch_size=2)
    assert torch.allclose(x[:3], x2, atol=1e-5)  # sample i depends on the seed and i only


def test_a_blurring_run_samples_its_own_way_through_the_run_layer():
    """The run layer hands a blurring model to its own sampler (DDIM for a deterministic sampler name, the
    exact-posterior ancestral step for a stochastic one) with the run layer's per-sample noise, and refuses the
    generic samplers' grid and start options instead of ignoring them."""
    from diffusionlens import run as runs
    from diffusionlens.frequency import Blur, blurred_denoiser, blurring_sample
    from diffusionlens.processes import karras_grid
    from diffusionlens.run.students import BlurringModel, own_sampling
    from diffusionlens.samplers import noise_seeds, randn

    cfg = TrainConfig(dataset="digits", objective="blurring")
    oracle = PowerLawGaussian((1, 8, 8), exponent=-2.0, variance=0.3, mean=0.2)
    model = BlurringModel(blurred_denoiser(oracle, Blur()), cfg)
    assert own_sampling(model) is not None
    x, y, nfe = runs.generate(model, cfg, 5, sampler="euler", steps=6, seed=3, batch_size=2)
    g = torch.Generator().manual_seed(3)
    noise = randn((5, 1, 8, 8), noise_seeds(g, 5))
    expect = blurring_sample(blurred_denoiser(oracle, Blur()), noise, karras_grid(6, *runs.sampling_range(cfg)))
    assert y is None and nfe == 6
    torch.testing.assert_close(x, expect, rtol=0, atol=1e-5)  # batching changes nothing
    xs, _, _ = runs.generate(model, cfg, 5, sampler="ddpm", steps=6, seed=3)
    assert bool(torch.isfinite(xs).all()) and not torch.allclose(xs, x)  # the ancestral step, not DDIM
    for bad in ({"grid": "fitted-stop"}, {"analytic_start": True}):
        with pytest.raises(ValueError, match="blurring run samples its own way"):
            runs.generate(model, cfg, 2, sampler="euler", steps=4, **bad)
