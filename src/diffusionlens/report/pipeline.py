"""The report of an evaluated run: figures and HTML from ``evaluation.json`` (which :mod:`diffusionlens.run`
computes; ``generate``, ``evaluate_run`` and ``sampling_range`` are re-exported from there).

    run_dir/report.html         the report; figures beside it as PNG:
    run_dir/fig_samples.png, fig_loss.png, fig_quality_vs_nfe.png, fig_denoising.png,
    run_dir/fig_weighting.png, fig_expectation_gap.png (oracle and ring8 data only)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..run import DEFAULT_NFE, DEFAULT_SWEEP, evaluate_run, generate, open_run, sampling_range, sweep_entry
from ..training.checkpoint import atomic_write

__all__ = ["sampling_range", "generate", "evaluate_run", "write_report", "sweep_entry", "DEFAULT_SWEEP",
           "DEFAULT_NFE"]


def _training_summary(run_dir: Path, result: dict) -> dict:
    """result.json, with the loss and throughput taken from metrics.jsonl when the last session ran no
    step (a resumed run that had already reached its budget records them as null)."""
    path = run_dir / "metrics.jsonl"
    if (result.get("loss") is not None and result.get("images_per_s") is not None) or not path.is_file():
        return result
    recs = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("loss") is not None:
            recs.append(rec)
    if recs:
        ips = sorted(r["images_per_s"] for r in recs if r.get("images_per_s") is not None)
        result = dict(result, loss=recs[-1]["loss"] if result.get("loss") is None else result["loss"])
        if result.get("images_per_s") is None and ips:
            result["images_per_s"] = ips[len(ips) // 2]
    return result


# ----------------------------------------------------------------------------- report


def _fmt(v, digits=4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _rows(ev: dict, cfg) -> list[tuple[str, str]]:
    m = ev["metrics"]
    rows = [("data set", cfg.dataset), ("process / parameterization", f"{cfg.process} / {cfg.param}"),
            ("noise density / weighting", f"{cfg.density} / {cfg.weighting}")]
    tr = ev.get("training")
    if tr:
        ips = tr.get("images_per_s")
        rows += [("parameters", f"{tr['num_params']:,}"),
                 ("training steps", f"{tr['step']:,} (stopped by {tr['stopped_by']})"),
                 ("training time", f"{tr['elapsed_s'] / 60:.2f} min"),
                 ("throughput", f"{ips:.0f} images/s" if ips else "—"), ("final loss", _fmt(tr.get("loss")))]
    rows.append(("sampler", f"{ev['sampler']}, {ev['steps']} steps, NFE {ev['nfe']:g}, "
                            f"σ in [{ev['sigma_range'][0]:.3g}, {ev['sigma_range'][1]:.3g}], {ev['n_samples']} samples "
                            f"in {ev['sampling_seconds']:.1f} s"))
    if "fd" in m:
        rows += [("Fréchet distance (classifier features) to the test split", _fmt(m["fd"])),
                 ("floor: train split vs test split", _fmt(m["fd_floor"])),
                 ("ratio to the floor", _fmt(m["fd"] / m["fd_floor"] if m["fd_floor"] > 0 else math.inf, 3)),
                 ("feature classifier test accuracy", f"{100 * m['classifier_test_accuracy']:.1f} %")]
    else:
        f1, f2 = m["sw2_floor"], m["mmd2_floor"]
        rows += [("sliced W2 to held-out data", _fmt(m["sw2"])),
                 ("floor: exact vs held-out (same sizes)", f"{_fmt(f1['mean'])} ± {_fmt(f1['std'], 2)}"),
                 ("MMD² (unbiased, RBF, h = median distance)", _fmt(m["mmd2"])),
                 ("floor: exact vs held-out", f"{_fmt(f2['mean'])} ± {_fmt(f2['std'], 2)}")]
        if "true_loglik" in m:
            t, e = m["true_loglik"], m["true_loglik_exact"]
            if "mean" in t:
                rows.append(("true log-density of samples (nats)",
                             f"{_fmt(t['mean'])} ± {_fmt(t['stderr'], 2)} (exact samples: {_fmt(e['mean'])})"))
            else:
                rows.append(("samples on the support", f"{100 * t['on_support']:.1f} % (exact: 100 %)"))
    if "bits_per_dim" in ev:
        b = ev["bits_per_dim"]
        rows.append(("test bits/dim (PF-ODE, dequantized)", f"{_fmt(b['mean'])} ± {_fmt(b['stderr'], 2)} (n={b['n']})"))
    if "test_loglik" in ev:
        t = ev["test_loglik"]
        extra = f"; truth {_fmt(t['true'])}" if "true" in t else ""
        rows.append(("model log-likelihood of test points (PF-ODE, nats)",
                     f"{_fmt(t['mean'])} ± {_fmt(t['stderr'], 2)}{extra}"))
    if "expectation_gap" in ev:
        rows.append(("expectation gap: mean E||D - E[x0|x_t]||² / irreducible MSE",
                     _fmt(ev["expectation_gap"]["summary"], 3)))
    if "seconds" in ev:
        t = ev["seconds"]
        rows.append(("evaluation time", f"sampling {t['headline_sampling']:.0f} s, quality-vs-NFE sweep "
                                        f"{t['sweep']:.0f} s, likelihood {t['likelihood']:.0f} s"))
    return rows


def write_report(run_dir, *, progress: bool = True, device: str = "cpu") -> Path:
    """Draw the figures and write ``run_dir/report.html`` from a run and its ``evaluation.json`` (the
    denoising figure evaluates the model on ``device``)."""
    import html

    from safetensors.torch import load_file

    from ..data import load_dataset
    from ..evaluate import GapCurve, true_density
    from ..losses import ddpm_loss, edm_loss, flow_matching_loss, min_snr_loss, vdm_loss
    from ..training import make_loss
    from . import figures

    run_dir = Path(run_dir)
    ev_path = run_dir / "evaluation.json"
    if not ev_path.is_file():
        raise FileNotFoundError(f"{ev_path} not found: run `diffusionlens evaluate` on the run first")
    ev = json.loads(ev_path.read_text())
    opened = open_run(run_dir, device=device)
    den, cfg = opened.denoiser, opened.config
    x = load_file(str(run_dir / "samples.safetensors"))["x"]
    test = load_dataset(cfg.dataset, "test", seed=cfg.seed)
    figs: list[tuple[str, str]] = []
    figures.sample_figure(x, run_dir / "fig_samples.png", reference=test.x,
                          title=f"samples ({ev['sampler']}, NFE {ev['nfe']:g})")
    figs.append(("fig_samples.png", "Samples of the EMA model next to real held-out data."))
    if (run_dir / "metrics.jsonl").is_file():
        figures.loss_curve(run_dir / "metrics.jsonl", run_dir / "fig_loss.png")
        figs.append(("fig_loss.png", "Training loss (the weighted denoising MSE) per logged window."))
    if ev.get("quality_vs_nfe"):
        m = ev["metrics"]
        if "fd" in m:
            floor, std, name = m["fd_floor"], None, "Fréchet distance (classifier features)"
            label, between = "floor (train vs test split)", "the training and the test split (real against real)"
        else:
            floor, std, name = m["sw2_floor"]["mean"], m["sw2_floor"]["std"], "sliced W2"
            label, between = "floor (exact vs exact)", "two sets of exact samples"
        figures.quality_vs_nfe(ev["quality_vs_nfe"], run_dir / "fig_quality_vs_nfe.png", metric=name, floor=floor,
                               floor_std=std, floor_label=label)
        figs.append(("fig_quality_vs_nfe.png", "Sample quality against the number of denoiser evaluations for "
                     "several samplers (same initial noise, same metric); the dashed line is the metric between "
                     f"{between}, below which no model can be told apart from the data. A name "
                     "sampler@grid is that sampler on another grid: @fitted-stop is the grid fitted to this model "
                     "by a pilot solve, ending at the last noise level that brings the sampler closest to the "
                     "pilot's own solutions (the pilot's evaluations are not in the NFE)."))
    g = torch.Generator().manual_seed(0)
    k = 6 if test.is_image else 1000
    gm = true_density(cfg.dataset)
    den_fn = den
    if cfg.conditional:  # the unconditional branch (null label) for the denoising figure
        from ..guidance import ClassifierFree

        den_fn = ClassifierFree(den, 0.0)
    figures.denoising_figure(den_fn, test.x[:k], [0.05, 0.2, 0.5, 1.0, 2.5], run_dir / "fig_denoising.png",
                             generator=g, exact=gm)
    figs.append(("fig_denoising.png", "Denoising as a user-facing operation: x_t at several noise levels and the "
                 "model's estimate of E[x0|x_t]" + (" (red: the exact posterior mean)." if gm is not None else ".")))
    this = f"this run ({cfg.process}/{cfg.param}/{cfg.density}/{cfg.weighting})"
    losses = {this: make_loss(cfg), "EDM (Karras 2022)": edm_loss(), "DDPM eps-MSE (Ho 2020)": ddpm_loss(),
              "VDM ELBO (Kingma 2021)": vdm_loss(), "min-SNR-5 v (Hang 2023)": min_snr_loss(),
              "flow matching (Lipman 2023)": flow_matching_loss()}
    figures.weighting_figure(losses, run_dir / "fig_weighting.png", trained=this)
    figs.append(("fig_weighting.png", "The loss weighting over log-SNR that each objective implies (density of "
                 "noise levels times the weight, in eps-MSE form); the thick line is this run's."))
    if "expectation_gap" in ev:
        figures.gap_figure(GapCurve(**ev["expectation_gap"]), run_dir / "fig_expectation_gap.png")
        figs.append(("fig_expectation_gap.png", "The estimator-of-expectations view: MSE training estimates "
                     "E[x0|x_t]. The model's MSE splits into the irreducible posterior variance (from the exact "
                     "oracle) and the gap to the exact posterior mean, which is what training can still remove."))
    rows = "\n".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td></tr>" for a, b in _rows(ev, cfg))
    body = "\n".join(f'<figure><img src="{f}" alt="{f}"><figcaption>{html.escape(c)}</figcaption></figure>'
                     for f, c in figs)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diffusionlens report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}}
th{{font-weight:600;color:#444}}figure{{margin:2em 0}}img{{max-width:100%}}figcaption{{color:#555;font-size:.92em}}
code{{background:#f4f4f4;padding:1px 4px}}</style></head><body>
<h1>diffusionlens report — <code>{html.escape(run_dir.name)}</code></h1>
<p>One denoiser D(x_t/s, σ) ≈ E[x0|x_t], trained once and read through several perspectives. Metrics are shown
next to their <em>noise floor</em>: the same metric between two independent sets of real data of the same sizes
(exact samples for oracle and toy data, the training against the test split for images).</p>
<table>{rows}</table>
{body}
<p style="color:#777;font-size:.85em">Numbers: <code>evaluation.json</code>; configuration: <code>config.json</code>;
training log: <code>metrics.jsonl</code>. Re-create this page: <code>diffusionlens evaluate {html.escape(str(run_dir))}
--sampler {html.escape(ev['sampler'])} --steps {ev['steps']}</code> then <code>diffusionlens report
{html.escape(str(run_dir))}</code>; other samplers: <code>diffusionlens sample {html.escape(str(run_dir))} --sampler
dpmpp_2m --steps 10</code>.</p>
</body></html>
"""
    atomic_write(run_dir / "report.html", page.encode())
    return run_dir / "report.html"
