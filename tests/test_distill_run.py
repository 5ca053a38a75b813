"""Distilled and consistency runs: run.distill, exact resume, sampling through the run layer, the CLI."""

import json
import os
import re
import socket

import pytest
import torch
from safetensors.torch import load_file

from diffusionlens import run
from diffusionlens.cli import main
from diffusionlens.training import TrainConfig, resume_config, train

TINY = {"kind": "mlp", "data_shape": [2], "width": 32, "depth": 2, "emb_dim": 32}
ORACLE = dict(dataset="oracle-ring", net=TINY, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def progressive(tmp_path_factory):
    path = tmp_path_factory.mktemp("pd") / "pd"
    run.distill("oracle", method="progressive", steps=4, train_steps=60, run_dir=path, **ORACLE)
    return path


def test_progressive_run_keeps_every_student_and_samples_on_its_grid(progressive):
    r = run.open_run(progressive)
    den = r.denoiser
    assert den.steps == (1, 2) and run.default_steps(den) == 1
    for k in (1, 2):
        x, _, nfe = run.generate(den, r.config, 40, steps=k, seed=3)
        assert nfe == k and x.shape == (40, 2) and bool(torch.isfinite(x).all())
        # batch-size invariant like every sampler: the first 10 of 40 are the 10 of n=10
        y, _, _ = run.generate(den, r.config, 10, steps=k, seed=3, batch_size=3)
        torch.testing.assert_close(x[:10], y)
    # the 2-step student is the round-0 student stored in the checkpoint, run on every other teacher level
    assert torch.equal(den.grid_of(2), den.grid[::2]) and len(den.grid) == 5
    with pytest.raises(ValueError, match="--steps 4: .*students of 1, 2 steps"):
        run.generate(den, r.config, 4, steps=4)


def _stop_at(step):
    return lambda k, state: {"stop": True} if k == step else None


# at the round boundary, and inside the second round (the teacher then comes from the checkpoint)
@pytest.mark.parametrize("stop", [pytest.param(30, marks=pytest.mark.slow), 41])
def test_interrupted_distillation_resumes_bit_identically(progressive, tmp_path, stop):
    cfg = TrainConfig.from_json((progressive / "config.json").read_text())
    out = tmp_path / "resumed"
    res = train(cfg.replace(eval_every=1), out, progress=False, callback=_stop_at(stop))
    assert res.step == stop and res.stopped_by == "callback"
    train(resume_config(out), out, resume=True, progress=False)
    a = load_file(progressive / "checkpoints" / "step-00000060.safetensors")
    b = load_file(out / "checkpoints" / "step-00000060.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("objective/students/2/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_consistency_runs_sample_with_their_levels(tmp_path):
    run.distill("oracle", method="consistency", train_steps=20, run_dir=tmp_path / "cd", **ORACLE)
    cfg = TrainConfig(dataset="oracle-ring", objective="consistency-training", steps=20, net=TINY, batch_size=32,
                      log_every=10)
    train(cfg, tmp_path / "ct", progress=False)
    for name in ("cd", "ct"):
        r = run.open_run(tmp_path / name)
        assert r.denoiser.kind == "consistency"
        levels = r.denoiser.levels(4)
        assert len(levels) == 4 and levels[0] == r.sigma_range[1] and levels == sorted(levels, reverse=True)
        x, _, nfe = run.generate(r.denoiser, r.config, 16, steps=2, seed=1)
        assert nfe == 2 and bool(torch.isfinite(x).all())
        # the boundary condition holds for the stored model: f(x, sigma_min) = x
        f = r.denoiser.f
        torch.testing.assert_close(f(x, f.sigma_min), x, rtol=0, atol=0)


def test_distill_refuses_bad_input_and_writes_nothing(progressive, tmp_path):
    new = tmp_path / "new"
    cases = [
        (dict(teacher=tmp_path / "missing", method="progressive"), FileNotFoundError, "not found"),
        (dict(teacher=progressive, method="progressive", steps=12), ValueError, "power of two.*12"),
        (dict(teacher=progressive, method="diffusion"), ValueError, "unknown distillation method 'diffusion'"),
        (dict(teacher="oracle", dataset="oracle-ring", net=TINY, method="progressive", train_steps=30),
         ValueError, "train_steps=30 is too small"),
        (dict(teacher="oracle", dataset="digits", method="consistency"), ValueError, "exact mixture.*digits"),
    ]
    for kw, err, msg in cases:
        teacher = kw.pop("teacher")
        kw.setdefault("train_steps", 40)
        with pytest.raises(err, match=msg):
            run.distill(teacher, run_dir=new, progress=False, **kw)
        assert not new.exists()
    # a teacher still being trained: its lock is held by a live process
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "checkpoints").mkdir()
    (busy / ".lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")
    with pytest.raises(ValueError, match="still training"):
        run.distill(busy, method="progressive", train_steps=40, run_dir=new, progress=False)
    assert not new.exists()


def test_cli_distill_train_objective_and_sample_steps(progressive, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"net": TINY, "batch_size": 32, "log_every": 5}))
    assert main(["train", "--dataset", "oracle-ring", "--objective", "consistency-training", "--steps", "10",
                 "--config", str(cfg), "--name", "ct", "--quiet", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "runs" / "ct" / "config.json").read_text())["objective"] == "consistency-training"
    assert main(["train", "--dataset", "oracle-ring", "--steps", "5", "--config", str(cfg), "--name", "teacher",
                 "--quiet", "--device", "cpu"]) == 0
    teacher = str(tmp_path / "runs" / "teacher")
    for r in ("ct", str(progressive)):
        assert main(["sample", r, "--steps", "1", "--n", "8", "--quiet", "--device", "cpu",
                     "--out", str(tmp_path / "s")]) == 0
        assert "NFE 1 per sample" in capsys.readouterr().out
    # bad input: one line naming the value, exit 2, no run directory
    bad = [(["distill", "nope", "--minutes", "1", "--name", "x"], "'nope' not found"),
           (["distill", teacher, "--minutes", "1", "--name", "x", "--steps", "6"], "power of two.*6"),
           (["distill", teacher, "--minutes", "0.001", "--name", "x"], "--minutes 0.001 buys about"),
           (["distill", str(progressive), "--minutes", "1", "--name", "x"], "a teacher must be a denoiser"),
           (["train", "--objective", "progressive-distillation", "--dataset", "oracle-ring", "--steps", "5",
             "--name", "x", "--config", str(cfg)], "needs objective_options\\['teacher'\\]")]
    for argv, msg in bad:
        assert main(argv + ["--quiet", "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert re.search(msg, err), err
        assert not (tmp_path / "runs" / "x").exists()


def test_distill_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["distill", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--method" in out and "examples" in out


@pytest.mark.slow
def test_report_of_a_distilled_run_shows_its_students(progressive, tmp_path):
    import shutil

    from diffusionlens.report import write_report

    path = tmp_path / "pd"
    shutil.copytree(progressive, path)
    ev = run.evaluate(run.open_run(path), n_samples=200, bpd_n=0, progress=False)
    assert ev["sampler"] == "progressive student" and ev["steps"] == 1
    assert [nfe for nfe, _ in ev["quality_vs_nfe"]["progressive student"]] == [1.0, 2.0]
    write_report(path, progress=False)
    assert (path / "fig_distillation.png").is_file()


@pytest.mark.slow
def test_sigkilled_distillation_resumes_exactly(progressive, tmp_path):
    """A progressive distillation killed by SIGKILL mid-run (in either round) and resumed ends where an
    uninterrupted one does: students, teacher and round counter are objective state in the checkpoint."""
    from _kill import killed_and_resumed_equals_uninterrupted

    cfg = TrainConfig.from_json((progressive / "config.json").read_text())
    killed_and_resumed_equals_uninterrupted(cfg.replace(ckpt_every=7, log_every=3), tmp_path, 14, 45)
