"""The report page: registered sections, each one figure with its caption, and the table of numbers.

A section is one function registered with :func:`section`; it draws its figure from the run's
:class:`Context` (the evaluation already computed by the run layer) and returns a :class:`Figure`, or
raises :class:`NotApplicable` with the one-line reason a run cannot fill it. A section that fails
shows its error in place; :func:`write_report` still writes the page and then raises
:class:`ReportError` naming the failed sections. Adding a view to the report is one function here::

    @section("samples")
    def _samples(ctx: Context) -> Figure:
        figures.sample_figure(ctx.samples, ctx.path("fig_samples.png"), reference=ctx.test.x)
        return Figure("fig_samples.png", "Samples of the EMA model next to real held-out data.")
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..training.checkpoint import atomic_write
from . import figures

__all__ = ["Context", "Figure", "NotApplicable", "ReportError", "SECTIONS", "section", "write_report"]


@dataclass(frozen=True)
class Figure:
    """A section's figure: a PNG file name in the run directory and its caption (plain text)."""

    file: str
    caption: str


@dataclass(frozen=True)
class Context:
    """What a section reads: the run directory, its evaluation, config, EMA denoiser, test split and samples."""

    run_dir: Path
    ev: dict
    cfg: object
    denoiser: object
    test: object
    samples: torch.Tensor

    def path(self, name: str) -> Path:
        return self.run_dir / name


class NotApplicable(Exception):
    """Raised by a section that this run cannot fill; the message is shown as its one-line reason."""


class ReportError(RuntimeError):
    """Some sections failed; the page was written with their errors in place."""


SECTIONS: list[tuple[str, Callable[[Context], Figure]]] = []
"""Registered sections in page order: (title, function)."""


def section(title: str):
    """Register a report section (a function ``Context -> Figure``) under ``title``."""

    def register(fn: Callable[[Context], Figure]) -> Callable[[Context], Figure]:
        SECTIONS.append((title, fn))
        return fn

    return register


def _fmt(v, digits=4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _training_rows(tr: dict, cfg, unit: str) -> list[tuple[str, str]]:
    """Steps, time and one throughput: training examples per second of the budget's clock over the whole run."""
    rate = tr["step"] * cfg.batch_size / tr["elapsed_s"] if tr.get("elapsed_s") else None
    return [("parameters", f"{tr['num_params']:,}"),
            ("training", f"{tr['step']:,} steps of batch {cfg.batch_size} in {tr['elapsed_s'] / 60:.2f} min "
                         f"(stopped by {tr['stopped_by']}); "
                         + (f"{rate:.0f} {unit}/s on average" if rate else "throughput unknown")),
            ("final loss", _fmt(tr.get("loss")))] + _budget_row(tr)


def _budget_row(tr: dict) -> list[tuple[str, str]]:
    """Where a time budget ended training, how far it got against the main job's step budget."""
    from ..run import MAIN_STEPS

    if tr.get("stopped_by") != "minutes" or tr["step"] >= MAIN_STEPS:
        return []
    return [("time budget", f"training stopped at {tr['step']:,} steps, {100 * tr['step'] / MAIN_STEPS:.0f} % of the "
             f"{MAIN_STEPS:,} steps of the main job's reference result: a slower or busier machine reaches fewer")]


def _best_in_sweep(ev: dict) -> tuple[str, float, float] | None:
    """(entry, NFE, value) of the lowest point of the quality-vs-NFE sweep."""
    pts = [(v, nfe, name) for name, curve in (ev.get("quality_vs_nfe") or {}).items() for nfe, v in curve]
    if not pts:
        return None
    v, nfe, name = min(pts)
    return name, nfe, v


def _rows(ev: dict, cfg) -> list[tuple[str, str]]:
    m = ev["metrics"]
    image = "fd" in m
    rows = [("data set", cfg.dataset), ("process / parameterization", f"{cfg.process} / {cfg.param}"),
            ("noise density / weighting", f"{cfg.density} / {cfg.weighting}")]
    if ev.get("training"):
        rows += _training_rows(ev["training"], cfg, "images" if image else "samples")
    rows.append(("sampler", f"{ev['sampler']}, {ev['steps']} steps, NFE {ev['nfe']:g}, "
                            f"σ in [{ev['sigma_range'][0]:.3g}, {ev['sigma_range'][1]:.3g}], {ev['n_samples']} samples "
                            f"in {ev['sampling_seconds']:.1f} s"))
    if image:
        rows += [("Fréchet distance (classifier features) to the test split", _fmt(m["fd"])),
                 ("floor: train split vs test split", _fmt(m["fd_floor"])),
                 ("ratio to the floor", _fmt(m["fd"] / m["fd_floor"] if m["fd_floor"] > 0 else math.inf, 3)),
                 ("feature classifier test accuracy", f"{100 * m['classifier_test_accuracy']:.1f} %")]
    else:
        f1, f2 = m["sw2_floor"], m["mmd2_floor"]
        rows += [("sliced W2 to held-out data", _fmt(m["sw2"])),
                 ("floor: exact vs held-out (same sizes)", f"{_fmt(f1['mean'])} ± {_fmt(f1['std'], 2)}"),
                 ("MMD² (unbiased, RBF, h = median distance)", _fmt(m["mmd2"])),
                 ("floor: exact vs held-out", f"{_fmt(f2['mean'])} ± {_fmt(f2['std'], 2)} (an unbiased estimate of 0: "
                                              "negative values are sampling noise, its spread is the floor)")]
        if "true_loglik" in m:
            t, e = m["true_loglik"], m["true_loglik_exact"]
            if "mean" in t:
                rows.append(("true log-density of samples (nats)",
                             f"{_fmt(t['mean'])} ± {_fmt(t['stderr'], 2)} (exact samples: {_fmt(e['mean'])})"))
            else:
                rows.append(("samples on the support", f"{100 * t['on_support']:.1f} % (exact: 100 %)"))
    best = _best_in_sweep(ev)
    if best is not None:
        name, nfe, v = best
        rows.append(("best point of the quality-vs-NFE sweep", f"{_fmt(v)} with {name} at NFE {nfe:g} "
                     f"(the headline above is the {ev['sampler']} sampler at NFE {ev['nfe']:g} on all samples)"))
    if "bits_per_dim" in ev:
        b = ev["bits_per_dim"]
        rows.append(("test bits/dim (PF-ODE, dequantized; an upper bound)",
                     f"{_fmt(b['mean'])} ± {_fmt(b['stderr'], 2)} (n={b['n']})"))
        base = b.get("baselines")
        if base:
            rows.append(("references: uniform / independent per-pixel histogram",
                         f"{_fmt(base['uniform'])} / {_fmt(base['histogram'])} bits/dim"))
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


# ----------------------------------------------------------------------------- sections


@section("samples")
def _samples(ctx: Context) -> Figure:
    ev = ctx.ev
    figures.sample_figure(ctx.samples, ctx.path("fig_samples.png"), reference=ctx.test.x,
                          title=f"samples ({ev['sampler']}, NFE {float(ev['nfe']):g})")
    return Figure("fig_samples.png", "Samples of the EMA model next to real held-out data.")


@section("training loss")
def _loss(ctx: Context) -> Figure:
    if not ctx.path("metrics.jsonl").is_file():
        raise NotApplicable("no metrics.jsonl in the run directory")
    figures.loss_curve(ctx.path("metrics.jsonl"), ctx.path("fig_loss.png"))
    return Figure("fig_loss.png", "Training loss (the objective's per-sample loss, averaged) per logged window.")


@section("quality against NFE")
def _quality(ctx: Context) -> Figure:
    ev, m = ctx.ev, ctx.ev["metrics"]
    if not ev.get("quality_vs_nfe"):
        raise NotApplicable("the evaluation ran no quality-vs-NFE sweep")
    if "fd" in m:
        floor, std, name = m["fd_floor"], None, "Fréchet distance (classifier features)"
        label, between = "floor (train vs test split)", "the training and the test split (real against real)"
    else:
        floor, std, name = m["sw2_floor"]["mean"], m["sw2_floor"]["std"], "sliced W2"
        label, between = "floor (exact vs exact)", "two sets of exact samples"
    figures.quality_vs_nfe(ev["quality_vs_nfe"], ctx.path("fig_quality_vs_nfe.png"), metric=name, floor=floor,
                           floor_std=std, floor_label=label)
    return Figure("fig_quality_vs_nfe.png", "Sample quality against the number of denoiser evaluations for "
                  "several samplers (same initial noise, same metric); the dashed line is the metric between "
                  f"{between}, below which no model can be told apart from the data. A name "
                  "sampler@grid is that sampler on another grid: @fitted-stop is the grid fitted to this model "
                  "by a pilot solve, ending at the last noise level that brings the sampler closest to the "
                  "pilot's own solutions (the pilot's evaluations are not in the NFE).")


@section("denoising")
def _denoising(ctx: Context) -> Figure:
    from ..evaluate import true_density

    cfg, test = ctx.cfg, ctx.test
    k = 6 if test.is_image else 1000
    gm = true_density(cfg.dataset)
    den = ctx.denoiser
    if cfg.conditional:  # the unconditional branch (null label)
        from ..guidance import ClassifierFree

        den = ClassifierFree(den, 0.0)
    figures.denoising_figure(den, test.x[:k], [0.05, 0.2, 0.5, 1.0, 2.5], ctx.path("fig_denoising.png"),
                             generator=torch.Generator().manual_seed(0), exact=gm)
    exact = " (red: the exact posterior mean)." if gm is not None else "."
    return Figure("fig_denoising.png", "Denoising as a user-facing operation: x_t at several noise levels and "
                  "the model's estimate of E[x0|x_t]" + exact)


@section("loss weighting")
def _weighting(ctx: Context) -> Figure:
    from ..losses import ddpm_loss, edm_loss, flow_matching_loss, min_snr_loss, vdm_loss
    from ..training import make_loss

    cfg = ctx.cfg
    this = f"this run ({cfg.process}/{cfg.param}/{cfg.density}/{cfg.weighting}, σ_data {cfg.sigma_data:g})"
    losses = {this: make_loss(cfg), "EDM (Karras 2022, σ_data 0.5)": edm_loss(),
              "DDPM eps-MSE (Ho 2020)": ddpm_loss(), "VDM ELBO (Kingma 2021)": vdm_loss(),
              "min-SNR-5 v (Hang 2023)": min_snr_loss(), "flow matching (Lipman 2023)": flow_matching_loss()}
    figures.weighting_figure(losses, ctx.path("fig_weighting.png"), trained=this)
    return Figure("fig_weighting.png", "The loss weighting over log-SNR that each objective implies (density of "
                  "noise levels times the weight, in eps-MSE form); the thick line is this run's. EDM's weighting "
                  "depends on σ_data, so this run and the EDM recipe differ where their σ_data do.")


@section("expectation gap")
def _gap(ctx: Context) -> Figure:
    from ..evaluate import GapCurve

    if "expectation_gap" not in ctx.ev:
        raise NotApplicable("needs data with an exact posterior mean (oracle mixtures, ring8)")
    figures.gap_figure(GapCurve(**ctx.ev["expectation_gap"]), ctx.path("fig_expectation_gap.png"))
    return Figure("fig_expectation_gap.png", "The estimator-of-expectations view: MSE training estimates "
                  "E[x0|x_t]. The model's MSE splits into the irreducible posterior variance (from the exact "
                  "oracle) and the gap to the exact posterior mean, which is what training can still remove.")


@section("sampling as a recurrent network")
def _recurrence(ctx: Context) -> Figure:
    from ..run.rnn import recurrence

    den = ctx.denoiser
    if ctx.cfg.conditional:  # the unconditional branch (null label)
        from ..guidance import ClassifierFree

        den = ClassifierFree(den, 0.0)
    rec = recurrence(den, ctx.cfg, 4 if ctx.test.is_image else 64, sampler="dpmpp_2m", steps=8)
    figures.recurrence_figure(rec["sigmas"], rec["canvas"], rec["estimate"], ctx.path("fig_recurrence.png"))
    return Figure("fig_recurrence.png", "The RNN view: a sampler is a recurrent network unrolled over its steps "
                  "(depth = network layers x steps) whose state is the canvas x_t; at every step the network "
                  "estimates x0 and the update moves the canvas toward it (dpmpp_2m, 8 steps). A self-conditioned "
                  "network also carries its previous estimate as state.")


# ----------------------------------------------------------------------------- page


def _render(ctx: Context) -> tuple[list[str], list[str]]:
    """Each section's HTML (figure, reason or error) and the titles of the sections that failed."""
    parts, failed = [], []
    for title, fn in SECTIONS:
        try:
            fig = fn(ctx)
        except NotApplicable as e:
            parts.append(f'<p class="na">{html.escape(title)}: {html.escape(str(e))}</p>')
            continue
        except Exception as e:  # noqa: BLE001 — one failing view must not take the page down
            failed.append(title)
            parts.append(f'<p class="err">{html.escape(title)} failed: {html.escape(type(e).__name__)}: '
                         f"{html.escape(str(e))}</p>")
            continue
        parts.append(f'<figure><img src="{html.escape(fig.file)}" alt="{html.escape(title)}">'
                     f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>")
    return parts, failed


_STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
th{font-weight:600;color:#444}figure{margin:2em 0}img{max-width:100%}figcaption{color:#555;font-size:.92em}
code{background:#f4f4f4;padding:1px 4px}.na{color:#777}.err{color:#a00}"""


def _page(ctx: Context, parts: list[str]) -> str:
    run, esc = ctx.run_dir, html.escape
    rows = "\n".join(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td></tr>" for a, b in _rows(ctx.ev, ctx.cfg))
    body = "\n".join(parts)
    cmd = (f"diffusionlens evaluate {esc(str(run))} --sampler {esc(str(ctx.ev['sampler']))} "
           f"--steps {esc(str(ctx.ev['steps']))}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diffusionlens report: {esc(run.name)}</title>
<style>{_STYLE}</style></head><body>
<h1>diffusionlens report — <code>{esc(run.name)}</code></h1>
<p>One denoiser D(x_t/s, σ) ≈ E[x0|x_t], trained once and read through several perspectives. Metrics are shown
next to their <em>noise floor</em>: the same metric between two independent sets of real data of the same sizes
(exact samples for oracle and toy data, the training against the test split for images).</p>
<table>{rows}</table>
{body}
<p style="color:#777;font-size:.85em">Numbers: <code>evaluation.json</code>; configuration: <code>config.json</code>;
training log: <code>metrics.jsonl</code>. Re-create this page: <code>{cmd}</code> then
<code>diffusionlens report {esc(str(run))}</code>.</p>
</body></html>
"""


def write_report(run_dir, *, progress: bool = True, device: str = "cpu") -> Path:
    """Draw every registered section's figure and write ``run_dir/report.html`` from a run and its
    ``evaluation.json`` (sections that evaluate the model do so on ``device``). Raises
    :class:`ReportError` after writing the page if a section failed."""
    from safetensors.torch import load_file

    from ..data import load_dataset
    from ..run import open_run

    run_dir = Path(run_dir)
    ev_path = run_dir / "evaluation.json"
    if not ev_path.is_file():
        raise FileNotFoundError(f"{ev_path} not found: run `diffusionlens evaluate` on the run first")
    try:
        ev = json.loads(ev_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{ev_path} is not valid JSON ({e}): run `diffusionlens evaluate` again") from None
    opened = open_run(run_dir, device=device)
    den, cfg = opened.denoiser, opened.config
    samples = load_file(str(run_dir / "samples.safetensors"))["x"]
    ctx = Context(run_dir, ev, cfg, den, load_dataset(cfg.dataset, "test", seed=cfg.seed), samples)
    parts, failed = _render(ctx)
    atomic_write(run_dir / "report.html", _page(ctx, parts).encode())
    if failed:
        raise ReportError(f"report written to {run_dir / 'report.html'}, but these sections failed: "
                          f"{', '.join(failed)} (their errors are shown in place)")
    return run_dir / "report.html"
