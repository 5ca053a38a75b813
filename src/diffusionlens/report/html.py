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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .._util import read_json
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


def section(title: str, *, requires: tuple[Callable[[Context], None], ...] = ()):
    """Register a report section (a function ``Context -> Figure``) under ``title``; ``requires``: checks
    run before it, each raising :class:`NotApplicable` for a run the section cannot read."""

    def register(fn: Callable[[Context], Figure]) -> Callable[[Context], Figure]:
        def checked(ctx: Context) -> Figure:
            for check in requires:
                check(ctx)
            return fn(ctx)

        SECTIONS.append((title, checked if requires else fn))
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


def _sweep_floor(ev: dict) -> tuple[int, object]:
    """(samples per point, floor) of the quality-vs-NFE sweep: its own, or the headline's for an evaluation
    that scored the sweep on all its samples."""
    m = ev["metrics"]
    k = ev.get("quality_vs_nfe_samples", ev["n_samples"])
    floor = ev.get("quality_vs_nfe_floor", m["fd_floor"] if "fd" in m else m["sw2_floor"])
    return k, floor


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
        k, floor = _sweep_floor(ev)
        floor = floor if isinstance(floor, float) else floor["mean"]
        rows.append(("best point of the quality-vs-NFE sweep", f"{_fmt(v)} with {name} at NFE {nfe:g} on {k:,} "
                     f"samples, floor {_fmt(floor)} at that size (the headline above is the {ev['sampler']} "
                     f"sampler at NFE {ev['nfe']:g} on {ev['n_samples']:,} samples)"))
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


def _reads_the_denoiser(ctx: Context) -> None:
    """The views that read the model as the canonical Gaussian denoiser E[x0 | x0 + sigma n] do not apply
    to runs whose model is something else: blurring diffusion (a frequency-wise corruption) or a distilled
    few-step map."""
    from ..run.students import own_sampling

    if own_sampling(ctx.denoiser) is not None:
        raise NotApplicable(ctx.denoiser.why_not_a_denoiser)


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
    k, floor = _sweep_floor(ev)
    if "fd" in m:
        std, name = None, "Fréchet distance (classifier features)"
        label, between = "floor (train vs test split)", "the training and the test split (real against real)"
    else:
        floor, std, name = floor["mean"], floor["std"], "sliced W2"
        label, between = "floor (exact vs exact)", "two sets of exact samples"
    figures.quality_vs_nfe(ev["quality_vs_nfe"], ctx.path("fig_quality_vs_nfe.png"), metric=name, floor=floor,
                           floor_std=std, floor_label=label)
    return Figure("fig_quality_vs_nfe.png", "Sample quality against the number of denoiser evaluations for "
                  f"several samplers ({k:,} samples per point, the same initial noise and metric for all; the "
                  "metric's bias grows as the sample count falls, so compare these points with each other and "
                  f"with their floor, not with the headline); the dashed line is the metric between "
                  f"{between} at that size, below which no model can be told apart from the data. A name "
                  "sampler@grid is that sampler on another grid: @fitted-stop is the grid fitted to this model "
                  "by a pilot solve, ending at the last noise level that brings the sampler closest to the "
                  "pilot's own solutions (the pilot's evaluations are not in the NFE).")


def _run(ctx: Context):
    """The run a section's views read (the context's denoiser and config; no second load)."""
    from .._util import device_of
    from ..run import Run

    return Run(ctx.run_dir, ctx.denoiser, ctx.cfg, str(device_of(ctx.denoiser)))


@section("denoising autoencoder", requires=(_reads_the_denoiser,))
def _denoising(ctx: Context) -> Figure:
    from ..run import views

    lo, hi = _run(ctx).sigma_range
    sigmas = [s for s in (0.05, 0.2, 0.5, 1.0, 2.5) if lo <= s <= hi]
    if not sigmas:
        raise NotApplicable(f"the model's noise-level range [{lo:.3g}, {hi:.3g}] holds none of the levels shown")
    res = views.denoise(_run(ctx), sigmas, n=64, figure=ctx.path("fig_denoising.png"))
    mid = min(res["levels"], key=lambda r: abs(r["sigma"] - 0.5))
    exact = (f" (the exact posterior mean: {mid['exact_mse']:.3g}; red in the figure)"
             if "exact_mse" in mid else "")
    return Figure("fig_denoising.png", "The denoising-autoencoder view: x_t at several noise levels and the model's "
                  f"estimate of E[x0|x_t]. At σ = {mid['sigma']:g} its MSE per dimension on {res['n']} held-out points "
                  f"is {mid['mse']:.3g}{exact}, against a data variance of {res['data_var']:.3g}: at low noise the "
                  "network is close to the identity, at high noise close to the data mean.")


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


@section("latent-variable model", requires=(_reads_the_denoiser,))
def _latent(ctx: Context) -> Figure:
    from ..run import views

    res = views.elbo(_run(ctx), n=8, steps=32, max_rounds=32)
    figures.elbo_figure(res, ctx.path("fig_elbo.png"))
    c, pf, unit = res["continuous"], res["pf"], res["unit"]
    flow = (f"; the probability-flow ODE gives {pf['mean']:.3f} ± {pf['stderr']:.2g} on the evaluation's {pf['n']} "
            "points" if pf is not None else "")
    return Figure("fig_elbo.png", "The latent-variable view: the denoiser defines a chain of Gaussian decoders whose "
                  "variational bound is a sum of per-step KL terms (drawn over their noise levels). On the first "
                  f"{res['n']} test points the {res['ddpm']['steps']}-level DDPM bound is {res['ddpm']['total']:.3f} "
                  f"{unit} and the continuous-time bound {c['total']:.3f} ± {c['stderr']:.2g} (Monte-Carlo standard "
                  f"error per point {c['mc_stderr_nats_per_dim']:.3f} nats/dim with {c['draws']} draws){flow}. "
                  "More levels tighten the discrete bound towards the continuous one; the flow's exact likelihood "
                  "needs no bound.")


@section("score estimator", requires=(_reads_the_denoiser,))
def _score(ctx: Context) -> Figure:
    from ..run import views

    res = views.score(_run(ctx), n=32 if ctx.test.is_image else 500, figure=ctx.path("fig_score.png"))
    text = (f"The score view: (D - x)/σ² is the score of the noisy data, so Langevin dynamics annealed over "
            f"{res['nfe'] - 1:g} evaluations samples without any ODE or SDE solver; it stops at σ = "
            f"{res['sigma_last']:.3g}, where one Tweedie step x + σ² score = D(x, σ) removes the remaining noise "
            f"(RMS change {res['tweedie_rms']:.3g} per dimension).")
    if "score_matching" in res:
        sm = res["score_matching"][1]
        text += (f" Explicit score matching against the exact score and denoising score matching differ by a "
                 f"constant that does not depend on the model (Vincent 2011), so they share their minimiser: at "
                 f"σ = {sm['sigma']:g} DSM − ESM = {sm['difference']:.3f} ± {sm['stderr']:.2g} measured, "
                 f"{sm['constant']:.3f} exact (ESM {sm['esm']:.3g}, DSM {sm['dsm']:.3g}).")
    else:
        text += " Explicit score matching needs the exact score: shown for oracle data only."
    return Figure("fig_score.png", text)


@section("reverse SDE", requires=(_reads_the_denoiser,))
def _sde(ctx: Context) -> Figure:
    from ..run import views

    res = views.reverse_sde(_run(ctx), n=100 if ctx.test.is_image else 1000, nfe=16,
                            figure=ctx.path("fig_sde.png"))
    r = res["samplers"]
    best = min(r, key=lambda k: r[k]["score"])
    return Figure("fig_sde.png", "The reverse-SDE view: the same denoiser drives the stochastic reverse process "
                  "(Euler–Maruyama; predictor–corrector adds a Langevin step per level) and its probability-flow "
                  f"ODE (Euler), here from the same noise at about {r['euler']['nfe']:g} evaluations on "
                  f"{res['n']} samples: {res['metric']} {r['euler']['score']:.3g} (ODE), "
                  f"{r['euler_maruyama']['score']:.3g} (SDE), {r['pc']['score']:.3g} (PC), best {best}. All three "
                  "share the marginals of the forward process; they differ in how discretisation errors are "
                  "carried (the SDE's injected noise contracts them, at the price of more steps to average out).")


@section("flow", requires=(_reads_the_denoiser,))
def _flow(ctx: Context) -> Figure:
    from ..run import views

    res = views.interpolate(_run(ctx), steps=16, figure=ctx.path("fig_flow.png"))
    return Figure("fig_flow.png", "The flow view: the probability-flow ODE is a bijection between data and Gaussian "
                  "latents, so test points encode to latents and decode back (relative round-trip error "
                  f"{res['round_trip_error_mean']:.2g} on average with Heun, {res['nfe_each_way']} evaluations each "
                  "way: the solver's error). Spherical interpolation between two latents decodes to a path through "
                  "the data distribution (each row or path; its ends are the round trips).")


@section("expectation", requires=(_reads_the_denoiser,))
def _gap(ctx: Context) -> Figure:
    from ..evaluate import GapCurve
    from ..run import views

    if "expectation_gap" in ctx.ev:
        figures.gap_figure(GapCurve(**ctx.ev["expectation_gap"]), ctx.path("fig_expectation_gap.png"))
        return Figure("fig_expectation_gap.png", "The estimator-of-expectations view: MSE training estimates "
                      "E[x0|x_t]. The model's MSE splits into the irreducible posterior variance (from the exact "
                      "oracle) and the gap to the exact posterior mean, which is what training can still remove: "
                      f"here {ctx.ev['expectation_gap']['summary']:.3g} of the irreducible MSE on average.")
    res = views.expectation(_run(ctx), n=128, figure=ctx.path("fig_expectation.png"))
    i = min(range(len(res["sigma"])), key=lambda k: abs(math.log(res["sigma"][k] / float(ctx.cfg.sigma_data))))
    return Figure("fig_expectation.png", "The estimator-of-expectations view: the network regresses x0 on x_t, so "
                  "it can only learn E[x0|x_t], and every training target scatters around it with the posterior "
                  f"variance drawn here (per dimension, about the model's own estimate). At σ = {res['sigma'][i]:.3g} "
                  f"it is {res['value'][i]:.3g} against a data variance of {res['data_var']:.3g}: the noise in the "
                  "targets that distillation from a teacher removes.")


@section("consistency regularisers")
def _regularisers(ctx: Context) -> Figure:
    from ..distill.regularisers import consistency_fp_relation
    from ..evaluate import true_density

    gm = true_density(ctx.cfg.dataset)
    if gm is None or ctx.cfg.conditional:
        raise NotApplicable("needs unconditional data with an exact density (oracle mixtures, ring8), whose exact "
                            "denoiser is the zero reference")
    p = next(iter(ctx.denoiser.parameters()), None) if hasattr(ctx.denoiser, "parameters") else None
    dtype, device = (p.dtype, p.device) if p is not None else (torch.float64, "cpu")
    levels = [ctx.cfg.sigma_data * k for k in (0.1, 0.5, 2.5)]
    curves = {}
    for name, den, dt in (("exact", gm, torch.float64), ("exact at 1.3σ", lambda x, s: gm(x, 1.3 * s), torch.float64),
                          ("this run (EMA)", ctx.denoiser, dtype)):
        curves[name] = consistency_fp_relation(den, lambda n, g, dt=dt: gm.sample(n, g, dtype=dt, device=device),
                                               levels, n=16, paths=8, steps=16,
                                               generator=torch.Generator().manual_seed(0))
    figures.regularisers_figure(curves, ctx.path("fig_regularisers.png"))
    return Figure("fig_regularisers.png", "Two consistency notions of one denoiser, measured along its own reverse-SDE "
                  "paths from σ to σ/e^0.5: how far E[D(x_s)|x_t] drifts from D(x_t) (Daras et al. 2023) and the score "
                  "Fokker–Planck residual integrated along the same paths (Lai et al. 2023). Both vanish for the exact "
                  "denoiser; for a conservative score they are equal (right: on y = x), and a trained network that is "
                  "off the line has a non-conservative score.")


@section("distillation")
def _distillation(ctx: Context) -> Figure:
    from ..run import open_run
    from ..run.students import beside_teacher

    if not getattr(ctx.denoiser, "student", False):
        raise NotApplicable("not a distilled or consistency run (made by `diffusionlens distill` or `train "
                            "--objective consistency-training`)")
    panels = beside_teacher(open_run(ctx.run_dir, plan=False), min(int(ctx.ev["n_samples"]), 1000))
    name = "FD" if ctx.samples.ndim == 4 else "SW2"
    plt = figures._plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.9), squeeze=False)
    for ax, (title, x, v) in zip(axes[0], panels):
        if x.ndim == 4:
            figures.show_images(ax, x[:64], 8, f"{title}\n{name} {v:.3g}")
        else:
            p = x.reshape(len(x), -1)[:, :2].numpy()
            ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5)
            ax.set_aspect("equal")
            ax.set_title(f"{title}\n{name} {v:.3g}", fontsize=9)
    figures._save(fig, ctx.path("fig_distillation.png"))
    return Figure("fig_distillation.png", f"The distilled model's samples at 1, 2 and 4 network evaluations beside "
                  f"its teacher's (or, for the oracle teacher, exact samples), from the same noise, with the "
                  f"headline metric ({name}, lower is better) of {min(int(ctx.ev['n_samples']), 1000)} samples each.")


_DISCRETE_NA = "needs a run trained with a discrete objective (masked, d3pm-absorbing, d3pm-uniform)"


@section("discrete samples")
def _discrete_samples(ctx: Context) -> Figure:
    from ..data import decode_text

    ev = ctx.ev
    if ev.get("kind") != "discrete":
        raise NotApplicable(_DISCRETE_NA)
    text = ev["dataset"] == "text"
    x = decode_text(ctx.samples) if text else ctx.samples
    figures.token_figure(x, ctx.path("fig_discrete_samples.png"), vocab=ctx.test.vocab, text=text,
                         reference=None if text else ctx.test.x,
                         title=f"samples ({ev['sampler']}, {ev['steps']} steps)")
    return Figure("fig_discrete_samples.png", f"Samples of the EMA model ({ev['objective']}) by {ev['sampler']} "
                  f"decoding in {ev['steps']} steps; test bound {ev['test_bpd']:.3f} bits/token.")


@section("discrete bound per time")
def _discrete_bound(ctx: Context) -> Figure:
    ev = ctx.ev
    if ev.get("kind") != "discrete":
        raise NotApplicable(_DISCRETE_NA)
    b = ev["bound_per_time"]
    figures.bound_figure(b["t"], b["nats_per_token"], ctx.path("fig_discrete_bound.png"),
                         title=f"{ev['objective']} on {ev['dataset']}: {ev['test_bpd']:.3f} bits/token")
    return Figure("fig_discrete_bound.png", "Where the negative ELBO comes from: its density over diffusion "
                  "time on test data (nats per token; the area under the curve is the bound).")


@section("frequency", requires=(_reads_the_denoiser,))
def _frequency(ctx: Context) -> Figure:
    from ..frequency.figures import frequency_figure
    from ..frequency.measure import report_view

    if not ctx.test.is_image:
        raise NotApplicable("needs image data (the spectrum of a 2-D point set is not defined)")
    den = ctx.denoiser
    if ctx.cfg.conditional:  # the unconditional branch (null label)
        from ..guidance import ClassifierFree

        den = ClassifierFree(den, 0.0)
    r = report_view(den, ctx.cfg, ctx.test.x, sampler=ctx.ev.get("sampler"))
    frequency_figure(r, ctx.path("fig_frequency.png"))
    fit = r["fit"]
    return Figure("fig_frequency.png", "The frequency view. Left: the held-out images' power per DCT coefficient "
                  f"against radial frequency, with a power-law fit (exponent {fit['exponent']:.2f}, 95% interval "
                  f"{fit['ci'][0]:.2f} to {fit['ci'][1]:.2f}; natural photographs give about -2) and the flat power "
                  "σ² of the noise at several levels. Middle: the hinge, the frequency below which the signal still "
                  "dominates at each σ, and the σ at which the sampler has settled half of each frequency. Right: "
                  "how much of each frequency of the final samples the model's estimate already holds at each step: "
                  "coarse (low) frequencies settle first.")


@section("sampling as a recurrent network", requires=(_reads_the_denoiser,))
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


def _render(ctx: Context, sections=None) -> tuple[list[str], list[str]]:
    """Each section's HTML (figure, reason or error, with the seconds it took) and the titles of the sections
    that failed (``sections``: a subset of :data:`SECTIONS`, default all)."""
    parts, failed = [], []
    for title, fn in SECTIONS if sections is None else sections:
        t0 = time.perf_counter()
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
        secs = f'<span class="t"> ({time.perf_counter() - t0:.1f} s)</span>'
        parts.append(f'<figure><h2>{html.escape(title)}</h2><img src="{html.escape(fig.file)}" '
                     f'alt="{html.escape(title)}"><figcaption>{html.escape(fig.caption)}{secs}</figcaption></figure>')
    return parts, failed


_STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
th{font-weight:600;color:#444}figure{margin:2em 0}img{max-width:100%}figcaption{color:#555;font-size:.92em}
code{background:#f4f4f4;padding:1px 4px}.na{color:#777}.err{color:#a00}
h2{font-size:1.1em;margin:0 0 .4em}.t{color:#999;font-size:.9em}"""


def _page(ctx: Context, parts: list[str]) -> str:
    run, esc = ctx.run_dir, html.escape
    rows = "\n".join(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td></tr>" for a, b in _rows(ctx.ev, ctx.cfg))
    body = "\n".join(parts)
    from ..run.students import own_sampling

    sampler = "" if own_sampling(ctx.denoiser) is not None else f" --sampler {esc(str(ctx.ev['sampler']))}"
    cmd = f"diffusionlens evaluate {esc(str(run))}{sampler} --steps {esc(str(ctx.ev['steps']))}"
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
    ev = read_json(run_dir / "evaluation.json", "evaluation", hint=": run `diffusionlens evaluate` on the run first")
    if ev.get("kind") == "discrete":  # discrete runs: their own page of the discrete sections
        from ..discrete.report import write_report as discrete_report

        return discrete_report(run_dir, ev)
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


from . import interpolants as _interpolant_sections  # noqa: E402,F401  (registers its sections)
