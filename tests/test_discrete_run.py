"""Discrete diffusion through the generic training loop, the run layer and the CLI (tiny runs)."""

import json
import math

import pytest
import torch

from diffusionlens.cli import main
from diffusionlens.discrete import run as drun
from diffusionlens.training import TrainConfig, train

TINY = {"kind": "token-transformer", "vocab": 17, "length": 64, "shape": [8, 8], "states": 18, "dim": 16,
        "depth": 1, "heads": 2}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "d17"
    cfg = TrainConfig(dataset="digits17", objective="masked", steps=3, batch_size=8, n_train=32, net=TINY,
                      ckpt_every=0, log_every=1)
    res = train(cfg, path, progress=False)
    assert math.isfinite(res.loss) and res.step == 3
    return path


def test_the_cli_scores_and_samples_a_masked_run(tiny_run, capsys):
    rc = main(["discrete", str(tiny_run), "--sampler", "maskgit", "--steps", "4", "--n", "3", "--n-test", "16",
               "--random-order", "--quiet", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "bits/token" in out
    ev = json.loads((tiny_run / "evaluation.json").read_text())
    assert ev["options"]["choice_temperature"] == math.inf
    # an untrained x0-model predicts uniform tokens: its bound is about log2(17) bits per token
    assert abs(ev["test_bpd"] - math.log2(17)) < 0.5 and ev["n_test"] == 16
    assert len(ev["bound_per_time"]["t"]) == len(ev["bound_per_time"]["nats_per_token"]) == 20
    page = (tiny_run / "report.html").read_text()
    assert "fig_discrete_samples.png" in page and "fig_discrete_bound.png" in page and "failed" not in page
    assert (tiny_run / "fig_discrete_bound.png").stat().st_size > 1000
    assert main(["report", str(tiny_run), "--quiet"]) == 0  # the report command hands discrete runs over
    r = drun.open_run(tiny_run)
    x = drun.sample(r, 3, sampler="ancestral", steps=4)
    assert x.shape == (3, 8, 8) and int(x.max()) < 17 and int(x.min()) >= 0


def test_d3pm_and_ctmc_uniform_objectives_train(tmp_path, capsys):
    for name in ("d3pm-uniform", "d3pm-absorbing", "ctmc-uniform"):
        net = dict(TINY, states=18 if name == "d3pm-absorbing" else 17)
        cfg = TrainConfig(dataset="digits17", objective=name, steps=2, batch_size=4, n_train=8, net=net, ckpt_every=0)
        res = train(cfg, tmp_path / name, progress=False)
        assert math.isfinite(res.loss)
    r = drun.open_run(tmp_path / "d3pm-uniform")
    assert r.d3pm is not None and r.d3pm.process.kind.value == "uniform"
    nats = drun.elbo(r, torch.zeros(2, 8, 8, dtype=torch.int64))
    assert nats.shape == (2,) and bool(torch.isfinite(nats).all())
    r = drun.open_run(tmp_path / "ctmc-uniform")
    assert r.d3pm is None and r.process.kind.value == "uniform"
    nats = drun.elbo(r, torch.zeros(2, 8, 8, dtype=torch.int64))
    assert nats.shape == (2,) and bool(torch.isfinite(nats).all())
    rc = main(["discrete", str(tmp_path / "ctmc-uniform"), "--sampler", "tau-leaping", "--steps", "2", "--n", "2",
               "--n-test", "4", "--quiet"])
    assert rc == 0, capsys.readouterr().err


def test_bad_input_is_one_line(tiny_run, tmp_path, capsys):
    with pytest.raises(ValueError, match="needs token data .* got dataset 'digits'"):
        train(TrainConfig(dataset="digits", objective="masked", steps=1), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    r = drun.open_run(tiny_run)
    from diffusionlens.data import load_dataset

    with pytest.raises(ValueError, match="vocabulary mismatch: the run has vocabulary 17"):
        drun.check_data(r, load_dataset("text", "test", n=2))
    with pytest.raises(ValueError, match="token 17 is outside the vocabulary 0..16"):
        drun.elbo(r, torch.full((1, 8, 8), 17))  # the mask token is not data
    with pytest.raises(ValueError, match="unknown discrete sampler"):
        drun.sample(r, 2, sampler="euler")
