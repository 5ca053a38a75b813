"""The RNN perspective on the command line: train --self-condition / --experts, finetune, and one-line
errors (exit 2, nothing written) on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from _cli import run_cli

TINY = {"net": {"kind": "mlp", "data_shape": [2], "width": 16, "depth": 1, "emb_dim": 16}, "batch_size": 32,
        "warmup_steps": 0, "log_every": 5, "ckpt_every": 0}



@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(n)


def _train(capsys, *extra):
    return run_cli(["train", "--dataset", "ring8", "--steps", "4", "--config", "tiny.json", "--quiet", "--device",
                    "cpu", *extra], capsys)


def test_help_of_finetune(capsys):
    rc, out, _ = run_cli(["finetune", "--help"], capsys)
    assert rc == 0 and "--unroll" in out and "example" in out


@pytest.mark.slow
def test_train_self_condition_and_experts_then_sample(here, capsys):
    rc, out, err = _train(capsys, "--name", "sc", "--self-condition")
    assert rc == 0, err
    assert json.loads((here / "runs/sc/config.json").read_text())["net"]["self_condition"] is True
    rc, out, err = _train(capsys, "--name", "ex", "--expert-boundaries", "0.5")
    assert rc == 0, err
    assert "2 experts split at sigma = 0.5" in out
    for run in ("sc", "ex"):
        rc, out, err = run_cli(["sample", run, "--sampler", "heun", "--steps", "3", "--n", "5", "--quiet",
                                "--device", "cpu"], capsys)
        assert rc == 0 and "NFE 5" in out, err


def test_finetune_writes_a_run(here, capsys):
    assert _train(capsys, "--name", "base")[0] == 0
    rc, out, err = run_cli(["finetune", "base", "--unroll", "2", "--sampler", "euler", "--steps", "2",
                            "--solve-steps", "4", "--out", "runs/ft", "--quiet", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "fine-tuned through 2 euler steps" in out and (here / "runs/ft/finetune.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--expert-boundaries", "5,1"], "increase strictly"),
    (["--expert-boundaries", "500"], "outside the training range"),
    (["--experts", "1"], "K >= 2"),
    (["--experts", "3", "--expert-boundaries", "0.5"], "3 experts need 2 boundaries"),
    (["--self-condition", "--base", "runs/none"], "--base applies to --experts"),
    (["--experts", "2", "--base", "runs/none"], "not found"),
])
def test_bad_expert_boundaries_fail_in_one_line(here, capsys, args, message):
    rc, _, err = _train(capsys, "--name", "bad", *args)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (here / "runs/bad").exists()


def test_an_unroll_deeper_than_the_grid_fails_in_one_line(here, capsys):
    assert _train(capsys, "--name", "base")[0] == 0
    rc, _, err = run_cli(["finetune", "base", "--unroll", "9", "--target", "data", "--grid-steps", "8", "--out",
                          "runs/ft", "--quiet", "--device", "cpu"], capsys)
    assert rc == 2 and "larger than the grid (8 steps)" in err and len(err.strip().splitlines()) == 1
    assert not (here / "runs/ft").exists()
