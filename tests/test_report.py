"""The report: figures, run evaluation and the HTML page, on tiny runs (2-D points and digits images)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffusionlens.oracle import ring
from diffusionlens.report import evaluate_run, figures, generate, write_report
from diffusionlens.training import TrainConfig, load_denoiser, train

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 1000


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A class-conditional tiny UNet trained for 10 steps on the digits (the image path of every function)."""
    run = tmp_path_factory.mktemp("report") / "digits"
    net = {"kind": "unet", "in_channels": 1, "image_size": 8, "channels": 8, "channel_mult": [1, 2], "blocks": 1,
           "attn_resolutions": [], "groups": 4, "num_classes": 10}
    cfg = TrainConfig(dataset="digits", steps=10, batch_size=32, warmup_steps=2, log_every=2, ckpt_every=0, net=net,
                      conditional=True)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, run, progress=False)
    finally:
        torch.set_num_threads(n)
    return run


# ----------------------------------------------------------------------------- figures


def test_image_grid_layout():
    x = torch.linspace(-1, 1, 5 * 2 * 2 * 2).reshape(5, 2, 2, 2)
    g = figures.image_grid(x, nrow=3)
    assert g.shape == (2 * 3 - 1, 3 * 3 - 1, 2)  # 2 rows of 2x2 images with 1-pixel gaps
    assert torch.allclose(g[0:2, 0:2], ((x[0] + 1) / 2).permute(1, 2, 0))
    assert torch.allclose(g[3:5, 3:5], ((x[4] + 1) / 2).permute(1, 2, 0))  # image 4 = row 1, column 1
    assert bool((g[2] == 1).all()) and bool((g[:, 2] == 1).all())  # white gaps
    assert bool((g[3:5, 6:8] == 1).all())  # the empty sixth cell stays white
    assert bool((figures.image_grid(x, nrow=3, pad=0.25)[2] == 0.25).all())


def test_every_figure_writes_a_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(12, 1, 8, 8, generator=g) * 2 - 1
    assert _is_png(figures.sample_figure(imgs, tmp_path / "a.png", reference=imgs, nrow=4))
    pts = torch.randn(300, 2, generator=g)
    assert _is_png(figures.sample_figure(pts, tmp_path / "b.png", reference=pts + 1))
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"step": 10 * k, "loss": 1 / (k + 1), "images_per_s": 900.0})
                                              + "\n" for k in range(1, 30)) + json.dumps({"step": 300, "eval": {}}))
    assert _is_png(figures.loss_curve(tmp_path / "m.jsonl", tmp_path / "c.png"))
    curves = {"euler": [[4, 3.0], [8, 1.5]], "heun": [[3, 4.0], [7, 1.0]]}
    assert _is_png(figures.quality_vs_nfe(curves, tmp_path / "d.png", metric="FD", floor=0.5, floor_std=0.1))
    gm = ring()
    assert _is_png(figures.denoising_figure(gm.denoise, gm.sample(200, g).float(), [0.1, 1.0], tmp_path / "e.png",
                                            generator=g, exact=gm))
    assert _is_png(figures.denoising_figure(lambda x, s: x / (1 + s * s), imgs[:3], [0.1, 1.0], tmp_path / "f.png",
                                            generator=g))
    from diffusionlens.evaluate import expectation_gap
    from diffusionlens.losses import edm_loss, flow_matching_loss

    assert _is_png(figures.weighting_figure({"edm": edm_loss(), "fm": flow_matching_loss()}, tmp_path / "g.png",
                                            trained="edm"))
    curve = expectation_gap(lambda x, s: gm.denoise(x, s) + 0.01, gm, gm.sample(200, g), sigmas=[0.1, 1.0],
                            generator=g)
    assert _is_png(figures.gap_figure(curve, tmp_path / "h.png"))
    assert not list(tmp_path.glob("*.tmp.png"))  # written atomically


# ----------------------------------------------------------------------------- generate


def test_generate_is_seeded_and_labels(digits_run):
    den, cfg = load_denoiser(digits_run)
    a, ya, nfe = generate(den, cfg, 12, sampler="euler", steps=3, seed=4)
    b, _, _ = generate(den, cfg, 12, sampler="euler", steps=3, seed=4, batch_size=5)
    c, _, _ = generate(den, cfg, 12, sampler="euler", steps=3, seed=5)
    assert a.shape == (12, 1, 8, 8) and nfe == 3
    assert torch.equal(ya, torch.arange(12) % 10)
    assert torch.allclose(a[:5], b[:5], atol=1e-6)  # the first batch starts from the same noise
    assert not torch.allclose(a, c)
    _, y3, _ = generate(den, cfg, 4, sampler="euler", steps=2, label=3, guidance=2.0)
    assert torch.equal(y3, torch.full((4,), 3))
    with pytest.raises(ValueError, match="number of samples"):
        generate(den, cfg, 0)


def test_generate_with_a_fitted_grid_on_a_conditional_model(digits_run, monkeypatch):
    """The pilot of a conditional model runs one class at a time (the adaptive solver calls the denoiser
    on subsets of its batch, so labels cannot be bound by position); the pilot is not in the NFE."""
    from diffusionlens.guidance import ClassifierFree

    den, cfg = load_denoiser(digits_run)
    call = ClassifierFree.__call__
    pilot_labels = []

    def spy(self, x, sigma, y=None, **kw):
        if x.shape[0] != 12:  # pilot batches (8 per class) and their subsets; the samples come in 12
            pilot_labels.append(torch.unique(y).tolist())
        return call(self, x, sigma, y=y, **kw)

    monkeypatch.setattr(ClassifierFree, "__call__", spy)
    cache: dict = {}  # the pilots are solved once for the calls with the same conditions
    x, y, nfe = generate(den, cfg, 12, sampler="deis", steps=4, grid="fitted", guidance=1.5, pilot_cache=cache)
    assert x.shape == (12, 1, 8, 8) and bool(torch.isfinite(x).all()) and nfe == 4
    assert pilot_labels and all(len(u) == 1 for u in pilot_labels)
    assert {u[0] for u in pilot_labels} == set(range(10))
    pilot_labels.clear()
    generate(den, cfg, 12, sampler="deis", steps=4, grid="fitted", label=3)
    assert pilot_labels and all(u == [3] for u in pilot_labels)
    # the measured stop runs the sampler on each class's pilot with that class's denoiser; with the analytic
    # start each sample's first evaluation is its class's pilot mean, one NFE fewer
    pilot_labels.clear()
    x, y, nfe = generate(den, cfg, 12, sampler="deis", steps=4, grid="fitted-stop", guidance=1.5, analytic_start=True,
                         pilot_cache=cache)
    assert bool(torch.isfinite(x).all()) and nfe == 3
    assert all(len(u) == 1 for u in pilot_labels) and {u[0] for u in pilot_labels} == set(range(10))
    x, y, nfe = generate(den, cfg, 12, sampler="deis", steps=4, analytic_start=True)
    assert bool(torch.isfinite(x).all()) and nfe == 3


# ----------------------------------------------------------------------------- evaluate_run and write_report


def test_evaluate_and_report_on_images(digits_run):
    ev = evaluate_run(digits_run, n_samples=100, steps=3, sweep=("euler", "dpmpp_2m"), nfes=(2, 4), bpd_n=4,
                      guidance=1.5, progress=False)
    m = ev["metrics"]
    assert m["n_samples"] == m["n_floor"] == 100  # floor measured at the sample size
    assert m["fd"] > m["fd_floor"] > 0  # 10 steps of training are far from the data
    assert 0.95 < m["classifier_test_accuracy"] <= 1
    assert ev["headline"] == {"name": "fd", "value": m["fd"]}
    assert ev["bits_per_dim"]["n"] == 4 and ev["bits_per_dim"]["stderr"] > 0
    assert [p[0] for p in ev["quality_vs_nfe"]["dpmpp_2m"]] == [2, 4]
    assert ev["training"]["step"] == 10 and ev["guidance"] == 1.5
    saved = load_file(str(digits_run / "samples.safetensors"))
    assert saved["x"].shape == (100, 1, 8, 8) and saved["y"].shape == (100,)
    assert json.loads((digits_run / "evaluation.json").read_text())["nfe"] == ev["nfe"]
    page = write_report(digits_run, progress=False)
    html = page.read_text()
    for fig in ("fig_samples.png", "fig_loss.png", "fig_quality_vs_nfe.png", "fig_denoising.png", "fig_weighting.png",
                "fig_elbo.png", "fig_score.png", "fig_sde.png", "fig_flow.png", "fig_expectation.png"):
        assert f'src="{fig}"' in html and _is_png(digits_run / fig)
    assert "fig_expectation_gap.png" not in html  # no exact posterior mean for the digits
    for row in ("Fréchet distance", "floor: train split vs test split", "test bits/dim", "classifier test accuracy",
                "images/s on average", "per-pixel histogram"):
        assert row in html


def test_report_and_evaluate_errors(tmp_path, digits_run):
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        evaluate_run(digits_run, sampler="nope", progress=False)
    with pytest.raises(ValueError, match="NFE budgets"):
        evaluate_run(digits_run, nfes=(0,), progress=False)
    import shutil

    fresh = tmp_path / "fresh"
    shutil.copytree(digits_run, fresh, ignore=shutil.ignore_patterns("evaluation.json", "report.html"))
    with pytest.raises(FileNotFoundError, match="evaluation.json"):
        write_report(fresh, progress=False)
    assert not (fresh / "report.html").exists()


def test_sections_fail_in_place_and_values_are_escaped(tmp_path, digits_run):
    """A failing section shows its error on the page and the call raises afterwards; a value from
    evaluation.json is rendered as text, never as markup."""
    import shutil

    from diffusionlens.report import SECTIONS, NotApplicable, section
    from diffusionlens.report.html import ReportError

    run = tmp_path / "copy"
    shutil.copytree(digits_run, run)
    if not (run / "evaluation.json").exists():
        evaluate_run(run, n_samples=20, steps=2, sweep=(), bpd_n=0, progress=False)
    ev = json.loads((run / "evaluation.json").read_text())
    ev["steps"] = "<script>alert(1)</script>"
    (run / "evaluation.json").write_text(json.dumps(ev))

    @section("broken view")
    def _broken(ctx):
        raise RuntimeError("boom <b>")

    @section("empty view")
    def _empty(ctx):
        raise NotApplicable("nothing to show for this run")

    try:
        with pytest.raises(ReportError, match="broken view"):
            write_report(run, progress=False)
    finally:
        del SECTIONS[-2:]
    page = (run / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "broken view failed: RuntimeError: boom &lt;b&gt;" in page
    assert "empty view: nothing to show for this run" in page
    assert 'src="fig_samples.png"' in page  # the other sections still drew
