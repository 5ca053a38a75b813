"""Training: config validation and JSON round trip, EMA maths, exact resume after SIGKILL,
checkpoint integrity, no half-written run directories, and that training learns E[x0 | x_t]."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from _kill import killed_and_resumed_equals_uninterrupted, start
from diffusionlens.data import oracle_for
from diffusionlens.training import TrainConfig, ema_beta, load_denoiser, power_gamma, train, update_ema
from diffusionlens.training import job as job_mod
from diffusionlens.training import loop as loop_mod

TINY = {"kind": "mlp", "data_shape": [2], "width": 32, "depth": 2, "emb_dim": 32}


def _cfg(**kw):
    base = dict(dataset="moons", n_train=512, batch_size=32, steps=40, net=TINY, ckpt_every=10, log_every=5,
                warmup_steps=5)
    base.update(kw)
    return TrainConfig(**base)


def test_config_json_round_trip_and_validation():
    cfg = TrainConfig(dataset="ring8", process="flow", param="velocity", density="logit-normal",
                      weighting="target", steps=None, minutes=1.5, adam_betas=(0.9, 0.99))
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg and isinstance(again.adam_betas, tuple)
    bad = [
        (dict(dataset="cifar"), "unknown dataset 'cifar'.*digits"),
        (dict(process="sde"), "unknown process 'sde'.*edm"),
        (dict(param="noise"), "unknown parameterization"),
        (dict(density="beta"), "unknown noise density"),
        (dict(weighting="p2"), "unknown loss weighting"),
        (dict(ema="swa"), "unknown ema 'swa'"),
        (dict(lr=-1.0), "lr must be in"),
        (dict(batch_size=0), "batch_size must be"),
        (dict(label_dropout=1.0), "label_dropout"),
        (dict(steps=None, minutes=None), "set a budget"),
        (dict(steps=0), "steps must be"),
        (dict(grad_clip=float("nan")), "grad_clip"),
        (dict(dataset="moons", conditional=True), "labelled data"),
        (dict(process="vp", t_min=0.0), "sigma > 0"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**kw)
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"datasett": "digits"})


def test_power_ema_matches_its_closed_form():
    """EDM2's power EMA averages theta_k with weights proportional to k^gamma, and gamma gives the
    requested relative std (EDM2 eq. 3)."""
    for s in (0.05, 0.1):
        g = power_gamma(s)
        assert abs((g + 1) / ((g + 2) ** 2 * (g + 3)) - s**2) < 1e-12
    ema, net = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    K, g = 200, power_gamma(0.1)
    for k in range(1, K + 1):
        net.weight.data.fill_(float(k))
        update_ema(ema, net, ema_beta("power", k, sigma_rel=0.1))
    w = torch.arange(1, K + 1, dtype=torch.float64) ** g
    expected = float((w * torch.arange(1, K + 1)).sum() / w.sum())
    # the discrete recursion is exact for the profile prod_j beta_j, equal to k^gamma weights up to O(1/K)
    assert abs(ema.weight.item() - expected) / expected < 0.02
    assert ema_beta("exp", 1) == 0.0 and ema_beta("exp", 10**6, decay=0.999) == 0.999


def test_train_writes_a_complete_run_and_loads(tmp_path):
    res = train(_cfg(), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert res.step == 40 and res.stopped_by == "steps" and math.isfinite(res.loss)
    assert json.loads((run / "result.json").read_text())["step"] == 40
    cfg = TrainConfig.from_json((run / "config.json").read_text())
    assert cfg.sigma_data is not None and cfg.net == TINY
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(5, 41, 5))
    assert all({"loss", "lr", "images_per_s", "elapsed_s"} <= set(r) for r in recs)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-00000030.json", "step-00000030.safetensors", "step-00000040.json",
                     "step-00000040.safetensors"]  # keep_checkpoints=2, no temporary files left
    den, cfg2 = load_denoiser(run)
    assert cfg2 == cfg and not any(p.requires_grad for p in den.parameters())
    raw, _ = load_denoiser(run / "checkpoints" / "step-00000040.safetensors", ema=False)
    x = torch.randn(5, 2)
    assert den(x, 0.5).shape == (5, 2) and not torch.allclose(den(x, 0.5), raw(x, 0.5))
    # the same seed gives the same weights
    res2 = train(_cfg(), tmp_path / "again", progress=False)
    a = load_file(run / "checkpoints" / "step-00000040.safetensors")
    b = load_file(tmp_path / "again" / "checkpoints" / "step-00000040.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and res2.loss == res.loss


def test_wall_clock_budget_and_callback(tmp_path):
    seen = []

    def cb(step, state):
        seen.append(step)
        return {"d_at_half": float(state.denoiser()(torch.zeros(1, 2), 0.5).abs().sum())}

    res = train(_cfg(steps=None, minutes=0.02, eval_every=10), tmp_path / "run", progress=False, callback=cb)
    # it stops at the first step that finds the 1.2 s budget spent
    assert res.stopped_by == "minutes" and res.step >= 1 and res.elapsed_s >= 0.02 * 60
    assert seen and seen[-1] == res.step
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval" in r for r in evals)



def test_callback_can_stop_training(tmp_path):
    def cb(step, state):
        return {"stop": True, "seen": step} if step == 15 else None

    res = train(_cfg(steps=40, eval_every=5), tmp_path / "run", progress=False, callback=cb)
    assert res.stopped_by == "callback" and res.step == 15
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in recs if "eval" in r]
    assert evals == [{"seen": 15}]  # the stop key is not logged; no extra evaluation after the stop
    assert (tmp_path / "run" / "checkpoints" / "step-00000015.json").exists()

def test_sigkill_then_resume_is_exact(tmp_path):
    # checkpoints every 5 steps, log lines every 3: the resumed run continues an open log window
    cfg = _cfg(steps=120, ckpt_every=5, log_every=3, eval_every=1, ema="power", label_dropout=0.0)
    killed_and_resumed_equals_uninterrupted(cfg, tmp_path, 21, 70)


def test_resume_refuses_mismatch_and_corruption(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=20), run, progress=False)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(_cfg(steps=20), run, progress=False)
    with pytest.raises(ValueError, match=r"differs in \['lr'\]"):
        train(_cfg(steps=30, lr=1e-3), run, resume=True, progress=False)
    # a longer budget is a legitimate change
    assert train(_cfg(steps=30), run, resume=True, progress=False).step == 30
    # a checkpoint whose config names another network: a clear error, not a silent partial load
    js = run / "checkpoints" / "step-00000030.json"
    meta = json.loads(js.read_text())
    meta["config"]["net"]["width"] = 48
    js.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match the network"):
        load_denoiser(run)
    st = run / "checkpoints" / "step-00000030.safetensors"
    raw = bytearray(st.read_bytes())
    raw[-5] ^= 0xFF
    st.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        load_denoiser(run)
    js = run / "checkpoints" / "step-00000030.json"
    js.write_text(js.read_text()[:100])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_denoiser(run)
    with pytest.raises(FileNotFoundError):
        load_denoiser(tmp_path / "nothing")


def test_failures_leave_no_half_written_run(tmp_path, monkeypatch):
    # invalid configuration: nothing is created
    with pytest.raises(ValueError):
        train(_cfg(batch_size=32, net={"kind": "mlp", "data_shape": [3]}), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()

    # a NaN during training: a clear error naming the step and sigma, and the new run directory is removed
    class NaNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, cond, y=None):
            return x * self.w * float("nan")

    monkeypatch.setattr(loop_mod, "build_net", lambda spec: NaNNet())
    with pytest.raises(FloatingPointError, match=r"step 0: non-finite loss .* at sigma="):
        train(_cfg(), tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()


def test_training_learns_the_posterior_mean(tmp_path):
    """A short EDM run on the 2-D oracle ring: the EMA denoiser's error to the exact E[x0 | x_hat]
    at moderate noise is far below that of the untrained (c_skip x_hat) denoiser."""
    cfg = TrainConfig(dataset="oracle-ring", n_train=4096, batch_size=256, steps=1200, lr=3e-3, warmup_steps=20,
                      net={"kind": "mlp", "data_shape": [2], "width": 64, "depth": 2, "emb_dim": 64},
                      ckpt_every=0, log_every=50, sigma_data=0.7)
    train(cfg, tmp_path / "run", progress=False)
    den, _ = load_denoiser(tmp_path / "run")
    gm = oracle_for("oracle-ring")
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(2000, g).float()
    for sigma in (0.2, 0.5, 1.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=g)
        exact = gm.denoise(x.double(), sigma).float()
        trained = ((den(x, sigma) - exact) ** 2).sum(1).mean()
        c_skip = 0.7**2 / (sigma**2 + 0.7**2)
        untrained = ((c_skip * x - exact) ** 2).sum(1).mean()
        assert trained < 0.25 * untrained, (sigma, float(trained), float(untrained))


def test_class_conditional_training_and_guidance(tmp_path):
    """Digits with labels, label dropout, a small UNet: trains, reloads, and guides with the null label."""
    from diffusionlens.guidance import ClassifierFree

    net = {"kind": "unet", "in_channels": 1, "image_size": 8, "channels": 8, "channel_mult": [1, 2],
           "attn_resolutions": [], "groups": 4, "num_classes": 10}
    cfg = TrainConfig(dataset="digits", conditional=True, label_dropout=0.2, batch_size=16, steps=4, net=net,
                      ckpt_every=0, log_every=2, warmup_steps=1)
    train(cfg, tmp_path / "run", progress=False)
    den, cfg2 = load_denoiser(tmp_path / "run")
    assert cfg2.conditional and den.net.num_classes == 10
    guided = ClassifierFree(den, 2.0)
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 9])
    d_c, d_u = den(x, 1.0, y=y), den(x, 1.0, y=torch.full((3,), 10))
    torch.testing.assert_close(guided(x, 1.0, y=y), d_u + 2.0 * (d_c - d_u), rtol=1e-5, atol=1e-6)


def test_atomic_write_leaves_no_temporary_and_uses_the_umask(tmp_path):
    import os

    from diffusionlens.training.checkpoint import atomic_write

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


def test_learning_rate_schedule_warmup_stable_cooldown(tmp_path):
    cfg = _cfg(steps=100, warmup_steps=10, cooldown=0.4, lr=1e-3)
    lr = [loop_mod.lr_at(cfg, s) for s in range(100)]
    assert lr[0] == pytest.approx(1e-4) and lr[9] == pytest.approx(1e-3)  # (step + 1) / warmup
    assert all(v == pytest.approx(1e-3) for v in lr[10:61])  # constant until 60 % of the budget
    for s in range(60, 100):  # then linear to 0 over the last 40 %: lr (1 - s / steps) / 0.4
        assert lr[s] == pytest.approx(1e-3 * (1 - s / 100) / 0.4)
    assert lr[99] > 0
    assert loop_mod.lr_at(cfg.replace(cooldown=0.0), 99) == pytest.approx(1e-3)
    # a time budget: the fraction of the minutes spent drives the cool-down when it is ahead of the steps
    assert loop_mod.lr_at(cfg, 20, progress=0.8) == pytest.approx(1e-3 * 0.2 / 0.4)
    # the loop logs the rate it used: the last logged step of a step budget is in the cool-down
    train(_cfg(steps=20, warmup_steps=2, log_every=5, ckpt_every=0), tmp_path / "r", progress=False)
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if "lr" in r][-1]
    assert last["step"] == 20 and last["lr"] == pytest.approx(2e-3 * (1 - 19 / 20) / 0.4)


def test_process_clock_budget_and_schedule_validation(tmp_path):
    res = train(_cfg(steps=None, minutes=0.002, clock="process", ckpt_every=0), tmp_path / "p", progress=False)
    assert res.stopped_by == "minutes" and res.step >= 1
    for kw, msg in (({"cooldown": 1.0}, "cooldown must be in"), ({"cooldown": -0.1}, "cooldown"),
                    ({"clock": "cpu"}, "clock must be 'wall' or 'process', got 'cpu'")):
        with pytest.raises(ValueError, match=msg):
            _cfg(**kw)


# ------------------------------------------------------------------ typed config, old runs


def test_previous_flat_config_format_is_converted():
    """A config.json of the previous version (flat density/weighting hyper-parameters) still loads."""
    from diffusionlens.losses import LogitNormal, LogNormal, MinSNR

    old = {"dataset": "moons", "seed": 0, "n_train": None, "process": "flow", "param": "velocity",
           "density": "logit-normal", "weighting": "min-snr", "sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2,
           "logit_mean": 0.3, "logit_std": 0.9, "min_snr_gamma": 4.0, "sigmoid_bias": 2.0, "t_min": 1e-4,
           "t_max": 1 - 1e-4, "net": TINY, "conditional": False, "label_dropout": 0.1, "batch_size": 32,
           "lr": 2e-3, "adam_betas": [0.9, 0.999], "weight_decay": 0.0, "warmup_steps": 5, "cooldown": 0.4,
           "grad_clip": 1.0, "ema": "power", "ema_std": 0.05, "ema_decay": 0.999, "steps": 40, "minutes": None,
           "clock": "wall", "log_every": 5, "ckpt_every": 10, "eval_every": 0, "keep_checkpoints": 2,
           "device": "cpu", "channels_last": False, "compile": False}
    cfg = TrainConfig.from_dict(old)
    assert cfg.density == LogitNormal(mean=0.3, std=0.9) and cfg.weighting == MinSNR(gamma=4.0)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["density"] == {"kind": "logit-normal", "mean": 0.3, "std": 0.9}
    default = TrainConfig.from_dict({**old, "density": "lognormal", "weighting": "edm", "process": "edm",
                                     "param": "edm", "p_mean": -1.0, "logit_mean": 0.0, "logit_std": 1.0,
                                     "min_snr_gamma": 5.0})
    assert default.density == LogNormal(p_mean=-1.0, p_std=1.2)
    # a flat value that the chosen kind cannot use would be ignored in silence: refused, naming it
    with pytest.raises(ValueError, match=r"p_mean=-1.0 .* applies to density 'lognormal'"):
        TrainConfig.from_dict({**old, "p_mean": -1.0})
    # parsed once: the config carries the process and parameterization objects
    assert cfg.noise_process == loop_mod.TrainConfig(process="flow", param="velocity", density="uniform",
                                                     weighting="target").noise_process
    assert cfg.sigma_range[0] > 0 and math.isfinite(cfg.sigma_range[1])
    with pytest.raises(ValueError, match="sigma_data must be"):
        TrainConfig(sigma_data=1e300)
    with pytest.raises(ValueError, match="unknown objective 'distill'"):
        TrainConfig(objective="distill")


# ------------------------------------------------------------------ faults found by probing


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_refuses_a_run_without_a_usable_checkpoint_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="no such run directory"):
        train(_cfg(steps=20), run, resume=True, progress=False)
    assert not run.exists()
    train(_cfg(steps=20), run, progress=False)
    before = _snapshot(run)
    # a torn metrics log, a corrupt newest checkpoint: refused before anything is written
    js = run / "checkpoints" / "step-00000020.json"
    meta = json.loads(js.read_text())
    del meta["rng"]
    js.write_text(json.dumps(meta))
    before = _snapshot(run)
    with pytest.raises(ValueError, match=r"step-00000020.json lacks the key 'rng'"):
        train(_cfg(steps=30), run, resume=True, progress=False)
    assert _snapshot(run) == before
    meta["tensors"] = "../../x.safetensors"
    js.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="outside its own directory"):
        load_denoiser(run)
    del meta["config"]
    meta["tensors"] = "step-00000020.safetensors"
    js.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lacks the key 'config'"):
        load_denoiser(run)
    import shutil

    shutil.rmtree(run / "checkpoints")
    before = _snapshot(run)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        train(_cfg(steps=30), run, resume=True, progress=False)
    assert _snapshot(run) == before  # metrics.jsonl and result.json untouched


def test_a_huge_network_spec_fails_fast_in_one_line(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=10), run, progress=False)
    js = run / "checkpoints" / "step-00000010.json"
    meta = json.loads(js.read_text())
    meta["config"]["net"]["width"] = 10**6  # ~10^12 parameters if it were built
    js.write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="does not match the network") as e:
        load_denoiser(run)
    assert time.perf_counter() - t0 < 10 and "\n" not in str(e.value) and len(str(e.value)) < 400


def test_one_writer_per_run_and_stale_locks(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=10), run, progress=False)
    assert not (run / ".lock").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f"{holder.pid}\n")
        with pytest.raises(ValueError, match=f"another process \\(pid {holder.pid}"):
            train(_cfg(steps=20), run, resume=True, progress=False)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over; leftovers of a kill are cleaned up
    (run / "checkpoints" / ".step-00000011.abc.safetensors.tmp").write_bytes(b"x" * 10)
    (run / "checkpoints" / "step-00000005.safetensors").write_bytes(b"orphan")
    assert train(_cfg(steps=20), run, resume=True, progress=False).step == 20
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["step-00000010.json", "step-00000010.safetensors", "step-00000020.json",
                    "step-00000020.safetensors"]
    assert not (run / ".lock").exists()


def test_resuming_a_finished_run_keeps_its_result_and_resume_config(tmp_path):
    run = tmp_path / "run"
    first = train(_cfg(steps=20), run, progress=False)
    stored = json.loads((run / "result.json").read_text())
    again = train(loop_mod.resume_config(run), run, resume=True, progress=False)
    assert again.step == 20 and again.loss == first.loss and math.isfinite(again.loss)
    assert json.loads((run / "result.json").read_text())["loss"] == stored["loss"]
    longer = loop_mod.resume_config(run, steps=30)
    assert longer == TrainConfig.from_json((run / "config.json").read_text()).replace(steps=30)
    assert train(longer, run, resume=True, progress=False).step == 30
    with pytest.raises(ValueError, match=r"cannot change \['lr'\]"):
        loop_mod.resume_config(run, lr=1.0)


def test_early_first_checkpoint(tmp_path):
    train(_cfg(steps=60, ckpt_every=500, keep_checkpoints=5), tmp_path / "r", progress=False)
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("*.json"))
    assert names == ["step-00000050.json", "step-00000060.json"]


def test_sigterm_saves_a_checkpoint_and_says_so(tmp_path):
    cfg = _cfg(steps=100000, ckpt_every=100000, eval_every=1, log_every=1)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(cfg.to_json())
    proc = start(cfg_path, tmp_path / "run", slow=0.01)
    deadline = time.time() + 60
    metrics = tmp_path / "run" / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) > 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()[-2000:]
    assert "interrupted by SIGTERM at step" in err.decode() and "saved checkpoint" in err.decode()
    ckpts = loop_mod.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert ckpts and ckpts[-1][0] >= 3 and not (tmp_path / "run" / ".lock").exists()


def test_overwrite_starts_over_and_only_removes_a_runs_own_files(tmp_path):
    run = tmp_path / "run"
    first = train(_cfg(steps=20), run, progress=False)
    with pytest.raises(FileExistsError, match=r"overwrite=True \(--overwrite\)"):
        train(_cfg(steps=20), run, progress=False)
    with pytest.raises(ValueError, match="exclude each other"):
        train(_cfg(steps=20), run, resume=True, overwrite=True, progress=False)
    (run / "evaluation.json").write_text("{}")
    (run / "fig_loss.png").write_bytes(b"png")
    again = train(_cfg(steps=10, seed=1), run, overwrite=True, progress=False)
    assert again.step == 10 and again.loss != first.loss
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl", "result.json"]
    assert [p.name for p in (run / "checkpoints").iterdir() if p.suffix == ".json"] == ["step-00000010.json"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert max(steps) == 10
    # a directory holding anything else is refused, and nothing is removed
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    with pytest.raises(ValueError, match=r"refusing to overwrite .*notes\.txt"):
        train(_cfg(steps=10), run, overwrite=True, progress=False)
    assert _snapshot(run) == before
    # a refused resume points to the way to start over
    import shutil

    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ValueError, match=r"overwrite=True \(--overwrite\)"):
        train(_cfg(steps=10), run, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"overwrite=True \(--overwrite\)"):
        loop_mod.resume_config(run)


def test_unwritable_run_directory_and_failed_checkpoint_writes(tmp_path, monkeypatch):
    import errno
    import os

    from diffusionlens.training import checkpoint as ckpt_mod

    # the up-front check asks os.access (root passes any chmod, so the check itself is emulated)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(tmp_path) else real_access(p, mode))
    with pytest.raises(OSError, match=f"cannot write the run directory {tmp_path / 'run'}: {tmp_path} is not"):
        train(_cfg(steps=10), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(os, "access", real_access)

    # the disk fills during a checkpoint write: one line naming the file, no temporary left behind
    def full(tensors, path, *a, **kw):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", full)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*step-00000010\.safetensors: .*No space") as e:
        train(_cfg(steps=10, ckpt_every=10), tmp_path / "run", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing was saved: the fresh run is removed, no temporaries


def test_lock_records_the_host_and_a_foreign_hosts_lock_is_never_stale(tmp_path, monkeypatch):
    import os
    import socket

    run = tmp_path / "run"
    train(_cfg(steps=10), run, progress=False)
    seen = {}
    real = loop_mod.acquire_lock

    def spy(d):
        path = real(d)
        seen["text"] = path.read_text()
        return path

    monkeypatch.setattr(loop_mod, "acquire_lock", spy)
    train(_cfg(steps=20), run, resume=True, progress=False)
    monkeypatch.undo()
    assert seen["text"].split() == [str(os.getpid()), socket.gethostname()]
    # a pid that does not exist here, held on another host: refused, naming the host
    (run / ".lock").write_text(f"{2**22 + 7} other-host.example\n")
    with pytest.raises(ValueError, match=r"locked by pid \d+ on host other-host\.example"):
        train(_cfg(steps=30), run, resume=True, progress=False)
    assert (run / ".lock").exists()


def test_heartbeat_shows_the_time_since_the_last_step():
    class Bar:
        def __init__(self):
            self.shown = []

        def set_postfix(self, refresh=True, **fields):
            self.shown.append(fields)

    bar = Bar()
    job_mod.Heartbeat.INTERVAL = 0.05
    try:
        beat = job_mod.Heartbeat(bar)
        beat.fields["loss"] = "0.1"
        beat.last -= 7.0  # the last step ended 7 s ago and nothing has completed since (a hung rank)
        time.sleep(0.3)
        beat.stop()
    finally:
        job_mod.Heartbeat.INTERVAL = 1.0
    assert bar.shown and bar.shown[-1]["loss"] == "0.1"
    assert 7 <= float(bar.shown[-1]["idle"].rstrip("s")) <= 60  # refreshed by the thread alone
    beat.step_done()
    assert float(bar.shown[-1]["idle"].rstrip("s")) < 1


def test_time_budget_bar_shows_the_projected_end():
    """Under a minutes budget the bar's total is where the budget is projected to end (capped by steps)."""
    from types import SimpleNamespace

    from diffusionlens.training.job import project_total

    bar = SimpleNamespace(n=9, total=None)
    project_total(bar, SimpleNamespace(minutes=1.0, steps=None), done=10, seconds=2.0, left=58.0)
    assert bar.total == 10 + 58.0 * 10 / 2.0  # 5 steps/s for the 58 s left, after the step being counted
    project_total(bar, SimpleNamespace(minutes=1.0, steps=100), done=10, seconds=2.0, left=58.0)
    assert bar.total == 100
    bar.total = None
    project_total(bar, SimpleNamespace(minutes=None, steps=None), done=10, seconds=2.0, left=58.0)
    assert bar.total is None
