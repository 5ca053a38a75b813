"""The command line: help texts, a tiny end-to-end run on a 2-D toy, and one-line errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from diffusionlens.cli import build_parser, main
from diffusionlens.report import DEFAULT_SWEEP

COMMANDS = ("train", "sample", "evaluate", "likelihood", "encode", "report", "main")
TINY = {"net": {"kind": "mlp", "data_shape": [2], "width": 32, "depth": 1, "emb_dim": 32}, "batch_size": 128,
        "warmup_steps": 10, "log_every": 10, "ckpt_every": 0}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread-pool barriers would dominate on a busy machine
    yield
    torch.set_num_threads(n)


def run_cli(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse exits on usage errors and --help
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A run trained for 60 steps on ring8 with a tiny MLP, in its own working directory."""
    root = tmp_path_factory.mktemp("cli")
    (root / "tiny.json").write_text(json.dumps(TINY))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with torch.random.fork_rng(devices=[]):
            n = torch.get_num_threads()
            torch.set_num_threads(1)
            rc = main(["train", "--dataset", "ring8", "--steps", "60", "--config", "tiny.json", "--name", "toy",
                       "--quiet", "--device", "cpu"])
            torch.set_num_threads(n)
    finally:
        os.chdir(cwd)
    assert rc == 0
    return root


@pytest.fixture
def in_toy(toy, monkeypatch):
    monkeypatch.chdir(toy)
    return toy


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    rc, out, _ = run_cli([command, "--help"], capsys)
    assert rc == 0
    assert "example" in out and "--" in out
    assert len(out.splitlines()) > 8


def test_top_level_help_lists_commands(capsys):
    rc, out, _ = run_cli(["--help"], capsys)
    assert rc == 0
    for c in COMMANDS:
        assert c in out
    p = build_parser()
    assert p.prog == "diffusionlens"


def test_entry_point_runs_as_a_module():
    # the console script is diffusionlens.cli:main; its module form must behave the same
    r = subprocess.run([sys.executable, "-m", "diffusionlens.cli", "sample", "no-such-run"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["diffusionlens sample: error: run directory 'no-such-run' not found "
                                             "(train one with `diffusionlens train --name ...`)"]
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- end to end


def test_train_writes_a_run(in_toy):
    run = in_toy / "runs" / "toy"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["dataset"] == "ring8" and cfg["steps"] == 60 and cfg["net"]["width"] == 32
    assert json.loads((run / "result.json").read_text())["step"] == 60
    assert list((run / "checkpoints").glob("step-00000060.safetensors"))


def test_sample_prints_nfe_and_writes_files(in_toy, capsys):
    rc, out, err = run_cli(["sample", "toy", "--sampler", "heun", "--steps", "4", "--n", "50", "--quiet",
                            "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "NFE 7 per sample" in out  # Heun: 2 evaluations per step but the last
    x = load_file(str(in_toy / "runs/toy/samples-heun-4.safetensors"))["x"]
    assert x.shape == (50, 2) and bool(torch.isfinite(x).all())
    assert (in_toy / "runs/toy/samples-heun-4.png").stat().st_size > 1000


def test_sample_on_the_fitted_stop_grid(in_toy, capsys):
    rc, out, err = run_cli(["sample", "toy", "--sampler", "deis", "--steps", "5", "--grid", "fitted-stop", "--n", "20",
                            "--quiet", "--device", "cpu", "--out", "stop"], capsys)
    assert rc == 0, err
    assert "NFE 5 per sample" in out  # the pilot and the stop search are not the samples' evaluations
    x = load_file(str(in_toy / "stop.safetensors"))["x"]
    assert x.shape == (20, 2) and bool(torch.isfinite(x).all())
    rc, out, err = run_cli(["sample", "toy", "--sampler", "deis", "--steps", "5", "--grid", "fitted-stop",
                            "--analytic-start", "--n", "20", "--quiet", "--device", "cpu", "--out", "stop-as"], capsys)
    assert rc == 0, err
    assert "NFE 4 per sample" in out  # the first evaluation is the pilot's data mean


def test_evaluate_report_likelihood_encode(in_toy, capsys):
    rc, out, err = run_cli(["evaluate", "toy", "--n", "300", "--steps", "4", "--samplers", "euler,dpmpp_2m",
                            "--nfe", "2,4", "--bpd-n", "8", "--quiet", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "sliced W2" in out and "floor" in out
    ev = json.loads((in_toy / "runs/toy/evaluation.json").read_text())
    assert set(ev["quality_vs_nfe"]) == {"euler", "dpmpp_2m"}
    assert [p[0] for p in ev["quality_vs_nfe"]["euler"]] == [2, 4]
    assert "expectation_gap" in ev and "test_loglik" in ev
    rc, out, err = run_cli(["report", "toy", "--quiet"], capsys)
    assert rc == 0, err
    html = (in_toy / "runs/toy/report.html").read_text()
    for fig in ("fig_samples.png", "fig_loss.png", "fig_quality_vs_nfe.png", "fig_denoising.png",
                "fig_weighting.png", "fig_expectation_gap.png"):
        assert f'src="{fig}"' in html
        assert (in_toy / "runs/toy" / fig).stat().st_size > 1000
    rc, out, err = run_cli(["likelihood", "toy", "--n", "8", "--quiet", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "nats per point" in out and "±" in out and "true density" in out
    assert json.loads((in_toy / "runs/toy/likelihood.json").read_text())["log_likelihood"]["n"] == 8
    rc, out, err = run_cli(["encode", "toy", "--n", "8", "--steps", "12", "--quiet", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "round-trip relative error" in out
    enc = json.loads((in_toy / "runs/toy/encode.json").read_text())
    assert enc["n"] == 8 and enc["relative_error_mean"] < 0.2
    lat = load_file(str(in_toy / "runs/toy/latents.safetensors"))
    assert lat["z"].shape == lat["x"].shape == (8, 2)


def test_resume_extends_a_run(in_toy, capsys):
    rc, out, err = run_cli(["train", "--dataset", "ring8", "--steps", "70", "--config", "tiny.json", "--name", "toy",
                            "--resume", "--quiet", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "trained 70 steps" in out


def test_main_job_end_to_end_and_rerun(in_toy, capsys):
    args = ["main", "--dataset", "ring8", "--steps", "20", "--name", "m", "--n-samples", "300", "--nfe", "2",
            "--bpd-n", "0", "--sampler-steps", "4", "--quiet", "--device", "cpu"]
    rc, out, err = run_cli(args, capsys)
    assert rc == 0, err
    assert "[3/3]" in out and "runs/m/report.html" in out
    assert (in_toy / "runs/m/report.html").is_file() and (in_toy / "runs/m/fig_quality_vs_nfe.png").is_file()
    ev = json.loads((in_toy / "runs/m/evaluation.json").read_text())
    assert set(ev["quality_vs_nfe"]) == set(DEFAULT_SWEEP)
    rc, out, err = run_cli(args, capsys)  # a second run resumes: no new steps, fresh evaluation
    assert rc == 0, err
    assert "resuming" in out and json.loads((in_toy / "runs/m/result.json").read_text())["step"] == 20


# ----------------------------------------------------------------------------- bad input


def _one_line_error(rc, err, *needles):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0] and "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["train", "--dataset", "cifar"], ["--dataset", "'cifar'"]),
    (["train", "--lr", "-1"], ["--lr", "'-1'"]),
    (["train", "--steps", "ten"], ["--steps", "'ten'"]),
    (["sample", "toy", "--sampler", "magic"], ["--sampler", "'magic'"]),
    (["evaluate", "toy", "--samplers", "euler,magic"], ["'magic'"]),
    (["evaluate", "toy", "--samplers", "unipc@cosine"], ["unknown grid 'cosine'", "'unipc@cosine'"]),
    (["evaluate", "toy", "--nfe", "4,x"], ["--nfe", "'4,x'"]),
    (["sample", "missing-run"], ["'missing-run'", "not found"]),
    (["report", "missing-run"], ["'missing-run'"]),
    (["sample", "toy", "--label", "3"], ["--label", "unconditional"]),
    (["sample", "toy", "--guidance", "2"], ["--guidance 2", "unconditional"]),
    (["evaluate", "toy", "--guidance", "3"], ["--guidance 3", "unconditional"]),
    (["sample", "toy", "--device", "tpu"], ["'tpu'"]),
    (["frobnicate"], ["'frobnicate'"]),
])
def test_bad_input_one_line(in_toy, capsys, args, needles):
    rc, _, err = run_cli(args, capsys)
    _one_line_error(rc, err, *needles)


def test_bad_training_values_leave_no_run_directory(in_toy, capsys):
    rc, _, err = run_cli(["train", "--dataset", "moons", "--label-dropout", "1.5", "--name", "x", "--steps", "5"],
                         capsys)
    _one_line_error(rc, err, "label_dropout", "1.5")
    (in_toy / "bad.json").write_text('{"dataset": "moons", "ema_decay": 2}')
    rc, _, err = run_cli(["train", "--config", "bad.json", "--name", "y", "--device", "cpu"], capsys)
    _one_line_error(rc, err, "ema_decay", "2")
    (in_toy / "unknown.json").write_text('{"dataset": "moons", "colour": "red"}')
    rc, _, err = run_cli(["train", "--config", "unknown.json", "--name", "y"], capsys)
    _one_line_error(rc, err, "colour")
    (in_toy / "broken.json").write_text('{"dataset": ')
    rc, _, err = run_cli(["train", "--config", "broken.json", "--name", "y"], capsys)
    _one_line_error(rc, err, "broken.json", "not valid JSON")
    assert not (in_toy / "runs/x").exists() and not (in_toy / "runs/y").exists()


def test_existing_run_needs_resume(in_toy, capsys):
    rc, _, err = run_cli(["train", "--dataset", "ring8", "--steps", "5", "--config", "tiny.json", "--name", "toy"],
                         capsys)
    _one_line_error(rc, err, "runs/toy", "--resume")


def test_corrupt_and_incomplete_runs(in_toy, capsys):
    import shutil

    bad = in_toy / "runs/corrupt"
    skip = shutil.ignore_patterns("evaluation.json", "report.html")
    shutil.copytree(in_toy / "runs/toy", bad, ignore=skip)
    for f in (bad / "checkpoints").glob("*.safetensors"):
        f.write_bytes(b"garbage")
    rc, _, err = run_cli(["sample", str(bad), "--device", "cpu"], capsys)
    _one_line_error(rc, err, "corrupt")
    for f in (bad / "checkpoints").glob("*.json"):
        f.write_text('{"step": ')
    rc, _, err = run_cli(["evaluate", str(bad), "--device", "cpu"], capsys)
    _one_line_error(rc, err, "not valid JSON")
    assert not (bad / "evaluation.json").exists()
    empty = in_toy / "runs/empty"
    empty.mkdir(parents=True, exist_ok=True)
    rc, _, err = run_cli(["report", str(empty)], capsys)
    _one_line_error(rc, err, "no checkpoint")
    fresh = in_toy / "runs/fresh"
    shutil.copytree(in_toy / "runs/toy", fresh, ignore=skip)
    rc, _, err = run_cli(["report", str(fresh)], capsys)
    _one_line_error(rc, err, "evaluation.json", "diffusionlens evaluate")
    assert not (fresh / "report.html").exists()
