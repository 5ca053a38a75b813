"""train --source/--coupling, restore and reflow on tiny runs (slow: they train); bad input is one line, exit 2,
nothing written."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from _cli import run_cli
from diffusionlens.data import load_dataset
from diffusionlens.interpolants.objective import build, interpolant_options
from diffusionlens.training import TrainConfig

TINY = ["--steps", "3", "--batch-size", "16", "--quiet", "--ckpt-every", "0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A paired (InDI) digits run and a Gaussian-source OT moons run, trained once for the module."""
    import os

    root = tmp_path_factory.mktemp("interp")
    old = os.getcwd()
    os.chdir(root)
    try:
        from diffusionlens.cli import main

        assert main(["train", "--dataset", "digits", "--source", "degraded:blur:0.8", "--name", "blur", *TINY]) == 0
        assert main(["train", "--dataset", "moons", "--coupling", "ot", "--name", "moons", *TINY]) == 0
    finally:
        os.chdir(old)
    return root


@pytest.fixture
def in_runs(runs, monkeypatch):
    monkeypatch.chdir(runs)
    return runs


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_train_records_source_and_coupling(in_runs):
    cfg = json.loads((in_runs / "runs/blur/config.json").read_text())
    assert (cfg["objective"], cfg["process"], cfg["param"]) == ("interpolant", "flow", "velocity")
    assert cfg["objective_options"] == {"source": "degraded:blur:0.8"}
    assert interpolant_options(TrainConfig.from_dict(cfg))["coupling"] == "paired"
    assert json.loads((in_runs / "runs/moons/config.json").read_text())["objective_options"] == {"coupling": "ot"}


@pytest.mark.slow
def test_restore_writes_restorations_and_psnr(in_runs, capsys):
    rc, out, err = run_cli(["restore", "blur", "--steps", "1,2", "--n", "8", "--quiet"], capsys)
    assert rc == 0, err
    assert "PSNR" in out
    t = load_file(str(in_runs / "runs/blur/restore-test.safetensors"))
    assert t["restored-2"].shape == t["clean"].shape == (8, 1, 8, 8)
    assert torch.equal(t["clean"], load_dataset("digits", "test").x[:8])
    summary = json.loads((in_runs / "runs/blur/restore-test.json").read_text())
    assert set(summary["steps"]) == {"1", "2"} and summary["steps"]["1"]["psnr"]["mean"] > 0
    save_file({"degraded": t["degraded"][:3].contiguous()}, str(in_runs / "y.safetensors"))
    rc, out, err = run_cli(["restore", "blur", "--input", "y.safetensors", "--steps", "1", "--out", "r", "--quiet"],
                           capsys)
    assert rc == 0, err
    # the same inputs restore to the same images: no clean references, so no PSNR
    assert torch.allclose(load_file(str(in_runs / "r.safetensors"))["restored-1"], t["restored-1"][:3])
    assert "psnr" not in json.loads((in_runs / "r.json").read_text())["steps"]["1"]


@pytest.mark.slow
def test_reflow_writes_a_run_that_samples_in_one_step(in_runs, capsys):
    rc, out, err = run_cli(["reflow", "moons", "--name", "moons-rf", "--steps", "3", "--pairs", "64",
                            "--solve-steps", "2", "--quiet"], capsys)
    assert rc == 0, err
    cfg = json.loads((in_runs / "runs/moons-rf/config.json").read_text())
    assert cfg["objective"] == "reflow" and cfg["objective_options"]["pairs"] == 64
    rc, out, err = run_cli(["sample", "moons-rf", "--steps", "1", "--n", "8", "--quiet"], capsys)
    assert rc == 0, err
    assert "NFE 1 per sample" in out


@pytest.mark.parametrize("args, message", [
    (["--dataset", "digits", "--source", "degraded:smudge"], "unknown degradation 'smudge'"),
    (["--dataset", "digits", "--coupling", "paired"], "paired coupling needs pairs"),
    (["--dataset", "digits", "--source", "moons"], "shape"),
    (["--dataset", "moons", "--coupling", "ot", "--batch-size", "10000"], "the limit is 8192"),
    (["--dataset", "digits", "--source", "degraded:noise", "--coupling", "ot"], "use the paired coupling"),
    (["--dataset", "digits", "--source", "degraded:downsample:3"], "factor"),
    (["--dataset", "digits", "--objective", "blurring", "--source", "gaussian"], "apply to --objective interpolant"),
])
def test_bad_interpolant_training_input_is_one_line(in_tmp, capsys, args, message):
    rc, out, err = run_cli(["train", *args, "--steps", "1", "--name", "bad", "--quiet"], capsys)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (in_tmp / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["restore", "moons"], "needs a run trained on a degraded source"),
    (["restore", "blur", "--input", "missing.safetensors"], "not found"),
    (["restore", "blur", "--input", "x.safetensors", "--split", "test"], "one way"),
    (["reflow", "blur", "--name", "nope"], "Gaussian-source"),
    (["reflow", "moons"], "--name"),
])
def test_bad_restore_and_reflow_input_is_one_line(in_runs, capsys, args, message):
    rc, out, err = run_cli([*args, "--quiet"], capsys)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (in_runs / "runs/nope").exists()


def test_old_objective_names_keep_their_coupling():
    data = load_dataset("moons", "train")
    cfg = TrainConfig(dataset="moons", objective="interpolant+ot", process="flow", param="velocity")
    assert build(cfg, data).coupling == "ot"
    with pytest.raises(ValueError, match="uses the sinkhorn coupling"):
        build(cfg.replace(objective="interpolant+sinkhorn", objective_options={"coupling": "ot"}), data)


class _Still(torch.nn.Module):
    """A velocity network that is zero everywhere: transport then returns its sources unchanged."""

    def forward(self, x, t):
        return torch.zeros_like(x)


def test_a_degraded_source_run_samples_by_transporting_its_sources():
    """A run from a non-Gaussian source samples its own way: sample i degrades train image (seed_i mod n) with
    its own seed and carries it with Euler steps; batch-size invariant, NFE = steps, generic options refused."""
    from types import SimpleNamespace

    from diffusionlens import run
    from diffusionlens.interpolants.objective import source_of
    from diffusionlens.run.students import SourceTransport, own_sampling
    from diffusionlens.samplers import noise_seeds

    cfg = TrainConfig(dataset="digits", objective="interpolant", process="flow", param="velocity",
                      objective_options={"source": "degraded:block", "coupling": "paired"})
    model = SourceTransport(SimpleNamespace(net=_Still()), cfg, "degraded:block")
    assert own_sampling(model) is not None and model.label() == "transport from degraded:block"
    x, y, nfe = run.generate(model, cfg, 6, steps=3, seed=5)
    assert y is None and nfe == 3
    x2, _, _ = run.generate(model, cfg, 4, steps=3, seed=5, batch_size=3)
    torch.testing.assert_close(x[:4], x2, rtol=0, atol=0)
    train = load_dataset("digits", "train")
    g = torch.Generator().manual_seed(5)
    noise_seeds(g, 6)  # the start's stream, unused by a transport
    seeds = noise_seeds(g, 6)
    block = source_of("degraded:block", train)
    for i, s in enumerate(seeds.tolist()):  # the velocity is zero: the samples are the degraded train images
        expect = block(train.x[s % len(train)][None].float(), torch.Generator().manual_seed(s % (2**63)))
        torch.testing.assert_close(x[i:i + 1], expect, rtol=0, atol=0)
    with pytest.raises(ValueError, match="transport run samples its own way"):
        run.generate(model, cfg, 2, steps=3, grid="fitted-stop")
