"""Run directories of the RNN perspective: a self-conditioned run samples with its estimate threaded and
nothing passed; a directory of experts and a fine-tuned run open like any run."""

import json

import pytest
import torch

from diffusionlens import run as runs
from diffusionlens.rnn import Experts, SelfConditioned
from diffusionlens.run import rnn
from diffusionlens.training import TrainConfig

TINY = {"kind": "mlp", "data_shape": [2], "width": 16, "depth": 1, "emb_dim": 16}


def _cfg(**kw):
    kw = {"steps": 6, **kw}
    return TrainConfig(dataset="oracle-ring", net=TINY, batch_size=32, log_every=3, ckpt_every=0, warmup_steps=0,
                       **kw)


@pytest.mark.slow
def test_a_self_conditioned_run_opens_and_samples_with_nothing_passed(tmp_path):
    cfg = rnn.self_conditioned(_cfg())
    assert cfg.objective == "self-conditioning" and cfg.net["self_condition"]
    from diffusionlens.training import train

    train(cfg, tmp_path / "sc", progress=False)
    r = runs.open_run(tmp_path / "sc")
    assert isinstance(r.denoiser, SelfConditioned)
    a, _, nfe = runs.generate(r.denoiser, r.config, 5, sampler="heun", steps=4, seed=0, progress=False)
    b, _, _ = runs.generate(r.denoiser, r.config, 3, sampler="heun", steps=4, seed=0, progress=False)
    assert nfe == 7
    torch.testing.assert_close(a[:3], b, rtol=1e-5, atol=1e-6)  # float32 matmuls of other batch sizes


def test_experts_train_into_one_directory_and_open_as_one_denoiser(tmp_path):
    rs = rnn.train_experts(_cfg(), tmp_path / "ex", boundaries=[0.5, 5.0], progress=False)
    assert len(rs) == 3 and all(r.step == 2 for r in rs)  # the 6 steps split three ways
    r = runs.open_run(tmp_path / "ex")
    assert isinstance(r.denoiser, Experts) and r.denoiser.boundaries == pytest.approx([0.5, 5.0], rel=1e-6)
    assert r.sigma_range == pytest.approx(runs.sampling_range(_cfg()), rel=1e-9)
    x, _, _ = runs.generate(r.denoiser, r.config, 4, sampler="dpmpp_2m", steps=6, seed=0, progress=False)
    assert x.shape == (4, 2) and bool(torch.isfinite(x).all())
    with pytest.raises(FileExistsError, match="not empty"):
        rnn.train_experts(_cfg(), tmp_path / "ex", experts=2, progress=False)
    with pytest.raises(ValueError, match="outside the training range"):
        rnn.plan_experts(_cfg(), boundaries=[1e6])
    meta = json.loads((tmp_path / "ex" / "experts.json").read_text())
    (tmp_path / "ex" / "experts.json").write_text(json.dumps({"experts": meta["experts"][::2]}))
    with pytest.raises(ValueError, match="a gap between sigma=0.5 .* sigma=5"):
        runs.open_run(tmp_path / "ex")


def test_a_fine_tuned_run_opens_like_any_run(tmp_path):
    from diffusionlens.training import train

    train(_cfg(), tmp_path / "base", progress=False)
    base = runs.open_run(tmp_path / "base")
    info = rnn.finetune(base, tmp_path / "ft", k=2, steps=2, solve_steps=4, progress=False)
    assert info["steps"] == 2 and (tmp_path / "ft" / "finetune.json").is_file()
    ft = runs.open_run(tmp_path / "ft")
    assert ft.config == base.config
    moved = [(p - q).abs().max().item() for p, q in zip(ft.denoiser.parameters(), base.denoiser.parameters())]
    assert max(moved) > 0
    with pytest.raises(ValueError, match="larger than the grid"):
        rnn.finetune(base, tmp_path / "ft2", k=9, target="data", grid_steps=8, steps=1, progress=False)
    assert not (tmp_path / "ft2").exists()


@pytest.mark.parametrize("dataset", ["digits", "oracle-ring"])
def test_the_recurrence_is_recorded_and_drawn(tmp_path, dataset):
    from diffusionlens.oracle import ring
    from diffusionlens.report.figures import recurrence_figure

    gm = ring()
    den = (lambda x, s: torch.tanh(x)) if dataset == "digits" else (lambda x, s: gm.denoise(x, s).float())
    rec = rnn.recurrence(den, TrainConfig(dataset=dataset), 2, sampler="euler", steps=3)
    assert rec["canvas"].shape[:2] == (4, 2) and rec["estimate"].shape[:2] == (3, 2) and len(rec["sigmas"]) == 4
    # Euler: each step moves the canvas along (x - estimate) / sigma
    c, e, s = rec["canvas"], rec["estimate"], rec["sigmas"]
    torch.testing.assert_close(c[1], c[0] + (c[0] - e[0]) / s[0] * (s[1] - s[0]), rtol=1e-5, atol=1e-5)
    assert recurrence_figure(s, c, e, tmp_path / "fig.png").stat().st_size > 1000


@pytest.mark.slow
def test_experts_start_from_a_base_run(tmp_path):
    from diffusionlens.training import train
    from diffusionlens.training.state import load_denoiser

    train(_cfg(), tmp_path / "base", progress=False)
    rs = rnn.train_experts(_cfg(steps=2), tmp_path / "ex", experts=2, base=tmp_path / "base", progress=False)
    assert [r.step for r in rs] == [1, 1]
    base, _ = load_denoiser(tmp_path / "base")
    for j in range(2):  # one update from the base weights: near them, not at a fresh initialisation
        ex, cfg = load_denoiser(tmp_path / "ex" / f"expert-{j}")
        gap = max((p - q).abs().max().item() for p, q in zip(ex.parameters(), base.parameters()))
        assert 0 < gap < 0.05
    with pytest.raises(ValueError, match="not a trained run"):
        rnn.train_experts(_cfg(), tmp_path / "ex2", experts=2, base=tmp_path / "ex", progress=False)
    assert not (tmp_path / "ex2").exists()


def test_self_conditioning_and_experts_refuse_conditional_runs(tmp_path):
    """Guidance hides the estimate a self-conditioned sampler threads, and experts are composed without labels:
    both refuse a class-conditional configuration instead of sampling it wrongly."""
    from diffusionlens.run import rnn
    from diffusionlens.training import TrainConfig

    cfg = TrainConfig(dataset="digits", conditional=True, steps=2)
    with pytest.raises(ValueError, match="unconditional runs"):
        rnn.self_conditioned(cfg)
    with pytest.raises(ValueError, match="unconditional runs"):
        rnn.train_experts(cfg, tmp_path / "experts", experts=2, progress=False)
    assert not (tmp_path / "experts").exists()
