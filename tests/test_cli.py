"""The command line: help texts, a tiny end-to-end run on a 2-D toy, and one-line errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from _cli import run_cli
from diffusionlens.cli import build_parser, main
from diffusionlens.evaluate import headline_floor
from diffusionlens.report import DEFAULT_SWEEP

COMMANDS = ("train", "sample", "evaluate", "tune", "likelihood", "encode", "report", "main", "discrete")
TINY = {"net": {"kind": "mlp", "data_shape": [2], "width": 32, "depth": 1, "emb_dim": 32}, "batch_size": 128,
        "warmup_steps": 10, "log_every": 10, "ckpt_every": 0}


pytestmark = pytest.mark.usefixtures("one_thread")



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
                            "--nfe", "2,4", "--sweep-samples", "200", "--bpd-n", "8", "--quiet", "--device", "cpu"],
                           capsys)
    assert rc == 0, err
    assert "sliced W2" in out and "floor" in out
    ev = json.loads((in_toy / "runs/toy/evaluation.json").read_text())
    assert set(ev["quality_vs_nfe"]) == {"euler", "dpmpp_2m"}
    assert [p[0] for p in ev["quality_vs_nfe"]["euler"]] == [2, 4]
    # the sweep on 200 samples: its floor is the metric between exact draws of that size, not the headline's
    assert ev["quality_vs_nfe_samples"] == 200 and ev["n_samples"] == 300
    assert ev["quality_vs_nfe_floor"] == headline_floor("ring8", 200) != ev["metrics"]["sw2_floor"]
    assert headline_floor("ring8", 300) == ev["metrics"]["sw2_floor"]
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
    (["evaluate", "toy", "--sweep-samples", "0"], ["--sweep-samples", "'0'"]),
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
    assert "--overwrite" in err


def test_overwrite_starts_over_and_keeps_foreign_files(in_toy, capsys):
    import shutil

    run = in_toy / "runs/over"
    shutil.copytree(in_toy / "runs/toy", run, ignore=shutil.ignore_patterns("samples-*"))  # other tests sample into toy
    args = ["train", "--dataset", "ring8", "--steps", "5", "--config", "tiny.json", "--name", "over", "--quiet"]
    rc, _, err = run_cli([*args, "--resume", "--overwrite"], capsys)
    _one_line_error(rc, err, "--resume", "--overwrite")
    rc, out, err = run_cli([*args, "--overwrite"], capsys)
    assert rc == 0, err
    assert "trained 5 steps" in out
    assert not (run / "evaluation.json").exists()  # the old run's files went with it
    (run / "notes.txt").write_text("mine")
    rc, _, err = run_cli([*args, "--overwrite"], capsys)
    _one_line_error(rc, err, "notes.txt")
    assert (run / "notes.txt").read_text() == "mine"


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


# ----------------------------------------------------------------------------- issue 15: faults found by probing


def test_version(capsys):
    from diffusionlens import __version__

    rc, out, _ = run_cli(["--version"], capsys)
    assert rc == 0 and out.strip() == f"diffusionlens {__version__}"


@pytest.mark.parametrize("sampler", ["deis", "euler_maruyama"])
def test_sample_is_batch_invariant(in_toy, capsys, sampler):
    """Sample i depends on the seed and i only: --n 10 is the first 10 of --n 100 (also for an SDE sampler)."""
    for n in (10, 100):
        rc, _, err = run_cli(["sample", "toy", "--sampler", sampler, "--steps", "4", "--n", n, "--quiet",
                              "--device", "cpu", "--out", f"inv-{n}"], capsys)
        assert rc == 0, err
    a = load_file(str(in_toy / "inv-10.safetensors"))["x"]
    b = load_file(str(in_toy / "inv-100.safetensors"))["x"]
    # the same noise: equal up to float32 rounding of the network's batched matrix products
    torch.testing.assert_close(a, b[:10], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args, needles", [
    (["sample", "toy", "--sampler", "adaptive", "--grid", "fitted", "--steps", "4"], ["--steps 4", "adaptive"]),
    (["sample", "toy", "--sampler", "adaptive", "--grid", "fitted"], ["--grid fitted", "adaptive"]),
    (["sample", "toy", "--sampler", "adaptive", "--analytic-start"], ["--analytic-start", "adaptive"]),
    (["sample", "toy", "--teleport"], ["--teleport", "--grid fitted-stop"]),
    (["evaluate", "toy", "--no-sweep", "--samplers", "euler"], ["--samplers", "--no-sweep"]),
    (["evaluate", "toy", "--no-sweep", "--nfe", "4"], ["--nfe", "--no-sweep"]),
    (["evaluate", "toy", "--no-sweep", "--sweep-samples", "40"], ["--sweep-samples", "--no-sweep"]),
    (["encode", "toy", "--sampler", "euler"], ["--sampler euler", "--steps"]),
    (["encode", "toy", "--steps", "4", "--rtol", "1e-3"], ["--rtol", "--steps"]),
    (["likelihood", "toy", "--probes", "4"], ["probes=4", "exact divergence"]),
    (["train", "--name", "never-trained", "--resume"], ["--resume", "never-trained", "no checkpoint"]),
    (["sample", "toy", "--out", "no/such/dir/x"], ["'no/such/dir'", "does not exist"]),
])
def test_options_that_cannot_apply_are_errors(in_toy, capsys, args, needles):
    rc, _, err = run_cli([*args, "--device", "cpu"], capsys)
    _one_line_error(rc, err, *needles)
    assert not (in_toy / "no").exists() and not (in_toy / "runs/never-trained").exists()


def test_likelihood_states_the_cap(in_toy, capsys):
    from diffusionlens.data import load_dataset

    held = len(load_dataset("ring8", "test", seed=0))
    rc, out, err = run_cli(["likelihood", "toy", "--n", 100000, "--quiet", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert f"holds {held} points; using all {held} (--n 100000)" in err and len(err.strip().splitlines()) == 1
    assert json.loads((in_toy / "runs/toy/likelihood.json").read_text())["log_likelihood"]["n"] == held


def test_resume_reads_the_stored_configuration(in_toy, capsys):
    import shutil

    shutil.copytree(in_toy / "runs/toy", in_toy / "runs/toy2")
    before = json.loads((in_toy / "runs/toy2/config.json").read_text())
    rc, out, err = run_cli(["train", "--name", "toy2", "--resume", "--steps", "80", "--quiet", "--device", "cpu"],
                           capsys)  # neither --dataset nor --config repeated
    assert rc == 0, err
    assert "trained 80 steps" in out
    after = json.loads((in_toy / "runs/toy2/config.json").read_text())
    assert after["net"] == before["net"] and after["dataset"] == "ring8"


def test_files_get_the_users_mode(in_toy, capsys):
    mask = os.umask(0)
    os.umask(mask)
    rc, _, err = run_cli(["sample", "toy", "--steps", "3", "--n", "5", "--quiet", "--device", "cpu", "--out", "m"],
                         capsys)
    assert rc == 0, err
    for f in ("m.safetensors", "m.png"):
        assert (in_toy / f).stat().st_mode & 0o777 == 0o666 & ~mask, f


@pytest.mark.parametrize("command", [["sample", "--n", "5"], ["evaluate", "--no-sweep", "--n", "50"],
                                     ["encode", "--n", "2"], ["likelihood", "--n", "2"]])
def test_read_only_run_is_one_line_before_computing(in_toy, capsys, monkeypatch, command):
    import tempfile

    from diffusionlens.run import measure, sampling

    def refuse(*a, dir=None, **k):  # a read-only directory, also for root (who may write anywhere)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    for module in (sampling, measure):
        monkeypatch.setattr(module, "generate", lambda *a, **k: pytest.fail("computed before checking writability"))
    rc, _, err = run_cli([command[0], "toy", *command[1:], "--quiet", "--device", "cpu"], capsys)
    _one_line_error(rc, err, "cannot write", "runs/toy", "Permission denied")
    assert tempfile.mkstemp is refuse


def test_concurrent_writers_use_unique_temporary_names(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from diffusionlens.run import save_tensors

    path = tmp_path / "x.safetensors"
    xs = [torch.full((1000, 4), float(i)) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda x: save_tensors(path, {"x": x}), xs))
    x = load_file(str(path))["x"]
    assert any(torch.equal(x, v) for v in xs)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary left behind


def test_messages_name_flags_not_keywords():
    from diffusionlens.cli import _one_line

    assert _one_line(FileExistsError("runs/x already holds a run; pass resume=True to continue it")) == \
        "runs/x already holds a run; pass --resume to continue it"


def test_report_accepts_device(in_toy, capsys):
    rc, _, err = run_cli(["evaluate", "toy", "--no-sweep", "--n", "50", "--bpd-n", "0", "--quiet", "--device", "cpu"],
                         capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["report", "toy", "--device", "cpu", "--quiet"], capsys)
    assert rc == 0, err


def test_main_help_states_the_step_budget(capsys):
    from diffusionlens._cli_args import MAIN_STEPS

    rc, out, _ = run_cli(["main", "--help"], capsys)
    assert rc == 0 and f"{MAIN_STEPS} steps" in " ".join(out.split()) and "about 4.5 minutes" in " ".join(out.split())


def test_tune_stores_a_plan_that_sample_uses_unless_turned_off(in_toy, capsys):
    import shutil

    run = in_toy / "runs/tuned"
    shutil.copytree(in_toy / "runs/toy", run, ignore=shutil.ignore_patterns("samples-*"))  # other tests sample into toy
    base = ["sample", str(run), "--sampler", "deis", "--steps", "4", "--n", "20", "--quiet", "--device", "cpu"]
    rc, _, err = run_cli([*base, "--out", "before"], capsys)
    assert rc == 0, err
    rc, out, err = run_cli(["tune", str(run), "--samplers", "deis", "--nfe", "4", "--quiet", "--device", "cpu"],
                           capsys)
    assert rc == 0, err
    assert "deis" in out and (run / "plan.json").is_file() and (run / "plan.safetensors").is_file()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    rc, out, err = run_cli([*base, "--plan", "none", "--out", "off"], capsys)
    assert rc == 0, err
    rc, out, err = run_cli([*base, "--out", "on"], capsys)
    assert rc == 0, err
    assert "NFE 4 per sample" in out  # the tuned configuration keeps the budget
    before, off, on = (load_file(str(in_toy / f"{s}.safetensors"))["x"] for s in ("before", "off", "on"))
    assert torch.equal(before, off) and not torch.equal(before, on)
