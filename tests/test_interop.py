"""diffusers interoperability: tiny UNet2DModels built here (nothing downloaded), imported, sampled, exported."""

from __future__ import annotations

import json
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusionlens import run as runs  # noqa: E402
from diffusionlens.cli import main  # noqa: E402
from diffusionlens.interop import export_diffusers, import_diffusers, load_diffusers  # noqa: E402
from diffusionlens.nets.diffusers_unet import MissingExtra, require_diffusers  # noqa: E402
from diffusionlens.processes import DDPMTable, timestep_grid  # noqa: E402
from diffusionlens.samplers import SAMPLERS  # noqa: E402
from diffusionlens.training import TrainConfig, train  # noqa: E402

TINY = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
        "block_out_channels": (8, 16), "norm_num_groups": 4, "attention_head_dim": 4,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"), "up_block_types": ("AttnUpBlock2D", "UpBlock2D")}


def tiny_unet(seed=0, **changes):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(**{**TINY, **changes}).eval()


def save(path, unet, scheduler):
    unet.save_pretrained(path / "unet")
    scheduler.save_pretrained(path / "scheduler")
    return path


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_our_ddim_on_the_imported_model_matches_diffusers_ddim(tmp_path, pred):
    """eta = 0 on the scheduler's own (leading) timesteps: the same map up to float32 rounding."""
    unet = tiny_unet()
    sched = diffusers.DDIMScheduler(prediction_type=pred, clip_sample=False, beta_schedule="squaredcos_cap_v2")
    den = load_diffusers(save(tmp_path, unet, sched))
    assert isinstance(den.process, DDPMTable) and den.process.T == 1000
    sched.set_timesteps(10)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            ref = sched.step(unet(ref, t).sample, t, ref, eta=0.0).prev_sample
        sigmas = timestep_grid(den.process, 10)
        assert torch.equal(den.process.timestep(sigmas[:-1]).round().long(), sched.timesteps)
        # diffusers' x_T is in VP coordinates: x_hat = x_T / s(sigma_max)
        ours = SAMPLERS["ddim"](den, x / float(den.process.scale_of_sigma(sigmas[0])), sigmas)
    # float32 network and diffusers' float32 alphas_cumprod: relative error a few 1e-6; x0-prediction
    # divides by sqrt(1 - abar) at the last step, hence the looser bound
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_import_makes_a_run_every_layer_opens_and_export_round_trips(tmp_path):
    unet = tiny_unet(seed=3)
    src = save(tmp_path / "src", unet, diffusers.DDPMScheduler(prediction_type="v_prediction",
                                                                beta_schedule="scaled_linear", num_train_timesteps=500))
    run = import_diffusers(src, tmp_path / "run")
    r = runs.open_run(run)
    assert r.config.dataset == "digits" and r.config.param == "v"
    assert r.config.process == {"kind": "ddpm", "T": 500, "schedule": "scaled_linear", "beta_start": 0.0001,
                                "beta_end": 0.02}
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 1.0, 20.0])
    with torch.no_grad():
        assert torch.equal(r.denoiser(x, sigma), load_diffusers(src)(x, sigma))
    out = export_diffusers(run, tmp_path / "out")
    back = diffusers.UNet2DModel.from_pretrained(out / "unet")
    for (k, a), (k2, b) in zip(unet.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    cfg = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (cfg["num_train_timesteps"], cfg["beta_schedule"], cfg["prediction_type"]) == (500, "scaled_linear",
                                                                                        "v_prediction")
    with torch.no_grad():
        assert torch.equal(load_diffusers(out)(x, sigma), r.denoiser(x, sigma))


def _assert_edm_matches(den, out):
    """diffusers' own EDM preconditioning of the UNet in ``out`` gives the denoiser ``den``."""
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet")
    sched = diffusers.EDMEulerScheduler.from_pretrained(out / "scheduler")
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for s in (0.01, 0.7, 40.0):
            sig = torch.tensor(s)
            F = unet(sched.precondition_inputs(x, sig), sched.precondition_noise(sig)).sample
            ref = sched.precondition_outputs(x, F, sig)
            assert (den(x, s) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_an_edm_model_imports_and_exports_with_edm_preconditioning(tmp_path):
    sched = diffusers.EDMEulerScheduler(sigma_data=0.6, sigma_min=0.01, sigma_max=50.0)
    src = save(tmp_path / "src", tiny_unet(seed=5), sched)
    run = import_diffusers(src, tmp_path / "run")
    r = runs.open_run(run)
    assert (r.config.process, r.config.param, r.config.sigma_data) == ("edm", "edm", 0.6)
    assert r.config.sigma_range == pytest.approx((0.01, 50.0), rel=1e-9)
    _assert_edm_matches(r.denoiser, src)
    out = export_diffusers(run, tmp_path / "out")
    _assert_edm_matches(r.denoiser, out)
    cfg = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (cfg["sigma_min"], cfg["sigma_max"], cfg["sigma_data"]) == pytest.approx((0.01, 50.0, 0.6), rel=1e-9)


@pytest.mark.slow  # trains
def test_a_run_trained_with_the_diffusers_unet_exports_as_an_edm_model(tmp_path):
    """The default recipe (EDM preconditioning) on the diffusers UNet exports with EDMEulerScheduler."""
    spec = {"kind": "diffusers-unet", "unet": {**TINY, "block_out_channels": [8, 16]}, "timestep_scale": 1.0,
            "timestep_shift": 0.0}
    cfg = TrainConfig(dataset="digits", net=spec, steps=2, batch_size=8, warmup_steps=0, log_every=1)
    train(cfg, tmp_path / "run", progress=False)
    out = export_diffusers(tmp_path / "run", tmp_path / "out")
    _assert_edm_matches(runs.open_run(tmp_path / "run").denoiser, out)


def test_train_net_flag_builds_the_diffusers_unet_for_the_data(tmp_path, capsys):
    run = tmp_path / "dd"
    assert main(["train", "--net", "diffusers-unet", "--process", "ddpm", "--param", "eps", "--steps", "1",
                 "--batch-size", "4", "--run-dir", str(run), "--quiet", "--device", "cpu"]) == 0
    net = runs.open_run(run).config.net
    assert net["kind"] == "diffusers-unet" and net["unet"]["sample_size"] == 8
    assert (net["timestep_scale"], net["timestep_shift"]) == (1000.0, -1.0)  # diffusers' 0-based index
    assert main(["export-diffusers", str(run), "--out", str(tmp_path / "x")]) == 0
    assert json.loads((tmp_path / "x/scheduler/scheduler_config.json").read_text())["_class_name"] == "DDPMScheduler"


def _bad(tmp_path, capsys, mutate):
    src = save(tmp_path / "src", tiny_unet(), diffusers.DDPMScheduler())
    mutate(src)
    assert main(["import-diffusers", str(src), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
    return err


def _edit(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_bad_diffusers_directories_fail_in_one_line_naming_the_value(tmp_path, capsys):
    err = _bad(tmp_path / "a", capsys, lambda s: _edit(s / "scheduler/scheduler_config.json",
                                                       _class_name="ScoreSdeVeScheduler"))
    assert "unknown scheduler 'ScoreSdeVeScheduler'" in err
    err = _bad(tmp_path / "b", capsys, lambda s: _edit(s / "scheduler/scheduler_config.json", prediction_type="noise"))
    assert "unknown prediction_type 'noise'" in err
    err = _bad(tmp_path / "c", capsys, lambda s: _edit(s / "unet/config.json", block_out_channels=[8, 32]))
    assert "diffusion_pytorch_model.safetensors does not match" in err and "other shape" in err
    err = _bad(tmp_path / "d", capsys, lambda s: (s / "unet/diffusion_pytorch_model.safetensors").unlink())
    assert "missing weights file" in err and "diffusion_pytorch_model.safetensors" in err


def test_a_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(MissingExtra, match=r"extra 'diffusers'.*diffusionlens\[diffusers\]"):
        require_diffusers()


@pytest.mark.slow  # evaluating and drawing a run: ~10 CPU-seconds
def test_the_run_layer_and_the_report_run_on_an_imported_model(tmp_path):
    from diffusionlens.report import evaluate_run, write_report

    src = save(tmp_path / "src", tiny_unet(), diffusers.DDIMScheduler(prediction_type="epsilon"))
    run = import_diffusers(src, tmp_path / "run")
    ev = evaluate_run(run, n_samples=100, steps=4, sweep=("euler", "dpmpp_2m"), nfes=(2, 4), bpd_n=4, progress=False)
    assert ev["metrics"]["fd"] > 0 and ev["bits_per_dim"]["n"] == 4
    page = write_report(run, progress=False)
    assert "fig_samples.png" in page.read_text()
