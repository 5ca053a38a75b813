"""Figures of the report (matplotlib, Agg backend, PNG). Each function draws one figure and writes it.

Shapes: images (N, C, H, W) in [-1, 1]; points (N, 2) (higher-dimensional points are shown by
their first two coordinates).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from .._plot import image_grid, sample_figure, show_images
from .._plot import pyplot as _plt
from .._plot import save_figure as _save
from .._util import read_jsonl

__all__ = ["image_grid", "sample_figure", "loss_curve", "quality_vs_nfe", "denoising_figure",
           "weighting_figure", "gap_figure", "elbo_figure", "langevin_figure", "sde_figure", "interpolation_figure",
           "target_variance_figure", "recurrence_figure"]


def _plain_ticks(ax) -> None:
    """Log axes labelled 30 and 8, not 3x10^1 and 2^3."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_formatter(fmt)
            # labelled minor ticks at 2 and 5 x 10^k: a range inside one decade still gets numbers
            axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
            axis.set_minor_formatter(fmt)


def loss_curve(metrics_path, path) -> Path:
    """Training loss (log scale) against the step, from ``metrics.jsonl`` (a torn last line is skipped)."""
    plt = _plt()
    steps, loss = [], []
    for rec in read_jsonl(metrics_path):
        if rec.get("loss") is not None:
            steps.append(rec["step"])
            loss.append(rec["loss"])
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(steps, loss, lw=1, color="tab:blue")
    if len(loss) >= 8:  # a running mean reads better than the noisy per-window losses
        k = max(3, len(loss) // 20)
        sm = torch.tensor(loss).unfold(0, k, 1).mean(1)
        c = (k - 1) // 2  # centred, so the mean does not lag behind the curve
        ax.plot(steps[c:c + len(sm)], sm.tolist(), lw=2, color="tab:orange", label=f"running mean ({k} logs)")
        ax.legend()
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (weighted MSE)")
    ax.set_title("training loss per logged window")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def quality_vs_nfe(curves: dict[str, list[tuple[float, float]]], path, *, metric: str, floor: float | None = None,
                   floor_std: float | None = None, floor_label: str = "floor (exact vs exact)") -> Path:
    """One line per sampler: metric against NFE (log x), with the metric's floor (real against real
    data) as a dashed line and, given ``floor_std``, a band."""
    from matplotlib.ticker import NullLocator

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, pts in curves.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label=floor_label)
        if floor_std:
            ax.axhspan(floor - floor_std, floor + floor_std, color="k", alpha=0.08)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    nfes = sorted({p[0] for pts in curves.values() for p in pts})
    _plain_ticks(ax)
    ax.set_xticks(nfes, [f"{v:g}" for v in nfes])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("NFE (denoiser evaluations per sample)")
    ax.set_ylabel(metric)
    ax.set_title(f"sample quality vs NFE ({metric}, lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


@torch.no_grad()
def denoising_figure(denoiser, x0: Tensor, sigmas: list[float], path, *, generator: torch.Generator | None = None,
                     exact=None) -> Path:
    """x_hat = x0 + sigma n next to the model's E[x0 | x_hat] at several noise levels.

    Images: one column pair per sigma (noisy / denoised), one row per image, and the clean x0 first.
    Points: per sigma a panel with the noisy points, the model's estimates and (if ``exact`` is an
    oracle) the exact posterior means.
    """
    from .._util import device_of

    plt = _plt()
    dev = device_of(denoiser)
    x0 = x0.float().cpu()
    noise = torch.randn(x0.shape, generator=generator)
    if x0.ndim == 4:
        cols = [("clean x0", x0)]
        for s in sigmas:
            xh = x0 + s * noise
            cols.append((f"x_t, σ={s:g}", xh / math.sqrt(1 + s * s)))  # shown at the VP scale, to stay in range
            cols.append((f"E[x0|x_t], σ={s:g}", denoiser(xh.to(dev), s).cpu()))
        fig, axes = plt.subplots(1, len(cols), figsize=(1.25 * len(cols), 0.9 * x0.shape[0] + 0.6), squeeze=False)
        for ax, (title, x) in zip(axes[0], cols):
            show_images(ax, x, 1, "")
            ax.set_title(title, fontsize=7)
        fig.suptitle("denoising: noisy input (scaled by 1/sqrt(1+σ²)) and the model's E[x0|x_t]", fontsize=9)
        return _save(fig, path)
    fig, axes = plt.subplots(1, len(sigmas), figsize=(3.3 * len(sigmas), 3.5), squeeze=False)
    for ax, s in zip(axes[0], sigmas):
        xh = x0 + s * noise
        d = denoiser(xh.to(dev), s).detach().float().cpu().numpy()
        x = x0.cpu().numpy()
        ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:gray", alpha=0.3, label="x0")
        ax.scatter(d[:, 0], d[:, 1], s=3, c="tab:blue", alpha=0.6, label="model E[x0|x_t]")
        if exact is not None:
            e = exact.denoise(xh.double(), s).cpu().numpy()
            ax.scatter(e[:, 0], e[:, 1], s=3, c="tab:red", alpha=0.4, marker="x", label="exact E[x0|x_t]")
        ax.set_title(f"σ = {s:g}", fontsize=10)
        ax.set_aspect("equal")
    axes[0, 0].legend(fontsize=7, markerscale=3)
    return _save(fig, path)


def weighting_figure(losses: dict, path, *, trained: str | None = None) -> Path:
    """Implied weighting w(lambda) over log-SNR (Kingma & Gao 2023) of several losses, each normalised to max 1
    over the plotted window lambda in [-15, 15]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, loss in losses.items():
        lo, hi = loss.t_min, loss.t_max
        t = torch.linspace(lo, hi, 4000, dtype=torch.float64)
        lam = loss.process.logsnr(t)
        w = loss.implied_weighting(t)
        # normalised to max 1 inside the plotted window: some weightings (flow matching's e^{-lambda/2})
        # grow without bound towards the window's edge
        keep = (lam >= -15) & (lam <= 15)
        lam, w = lam[keep], w[keep]
        w = w / w.max()
        ax.plot(lam.tolist(), w.tolist(), lw=2.5 if name == trained else 1.2, zorder=3 if name == trained else 2,
                label=name)
    ax.set_xlim(-15, 15)
    ax.set_xlabel("log-SNR λ = -2 log σ")
    ax.set_ylabel("w(λ) = p(λ) · weight on eps-MSE (max 1)")
    ax.set_title("implied loss weighting over noise levels (Kingma & Gao 2023)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def gap_figure(curve, path) -> Path:
    """The expectation gap: model MSE, irreducible MSE and their gap per sigma (per dimension)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(curve.sigmas, curve.mse_model, marker="o", label="model: E||D - x0||²/d")
    ax.plot(curve.sigmas, curve.irreducible, marker="s", label="irreducible: E tr Cov[x0|x_t]/d")
    ax.plot(curve.sigmas, curve.gap, marker="^", label="gap: E||D - E[x0|x_t]||²/d")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_xlabel("σ")
    ax.set_ylabel("MSE per dimension")
    ax.set_title(f"what MSE training estimates: mean relative gap {curve.summary:.3g}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def token_figure(samples: Tensor, path, *, vocab: int, reference: Tensor | None = None, text: bool = False,
                 title: str = "samples") -> Path:
    """Token samples: 2-D token grids drawn as images (token v at intensity v / (V - 1)), beside real
    test data; character sequences (``text``, strings) written out in a monospace panel."""
    if not text:
        def img(x):
            return x[:, None].float() * (2 / (vocab - 1)) - 1

        return sample_figure(img(samples), path, reference=None if reference is None else img(reference),
                             title=title)
    plt = _plt()
    lines = [repr(s)[1:-1] for s in samples][:12]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(lines) + 0.8))
    ax.text(0, 1, "\n".join(lines), family="monospace", fontsize=8, va="top")
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    return _save(fig, path)


def bound_figure(t: list[float], nats: list[float], path, *, title: str = "") -> Path:
    """The negative ELBO's density over diffusion time (nats per token); its integral is the bound."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(t, nats, "o-", ms=3)
    ax.set_xlabel("t (0 = clean, 1 = fully corrupted)")
    ax.set_ylabel("bound density (nats per token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def regularisers_figure(curves: dict[str, dict], path) -> Path:
    """The consistency regularisers per noise level, and their equivalence.

    ``curves``: {denoiser name: :func:`diffusionlens.distill.regularisers.consistency_fp_relation`
    output}. Left: |E[D(x_s)|x_t] - D(x_t)|^2 (markers, with two standard errors) and the score-FPE
    residual integrated along the same reverse paths (lines), per unit ln sigma, on a symmetric-log axis
    linear within the Monte-Carlo resolution (an exact denoiser's estimates scatter about 0). Right: one
    against the other, with y = x.
    """
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    top, floor = 0.0, math.inf
    for k, (name, rel) in enumerate(curves.items()):
        c, f = rel["consistency"], rel["fokker-planck"]
        col = f"C{k}"
        ax.errorbar(c["sigma"], c["value"], yerr=2 * c["stderr"], fmt="o", color=col, ms=4, capsize=2,
                    label=f"{name}: consistency")
        ax.plot(f["sigma"], f["value"], "-", color=col, alpha=0.7, label=f"{name}: Fokker–Planck (integrated)")
        bx.errorbar(f["value"], c["value"], xerr=2 * f["stderr"], yerr=2 * c["stderr"], fmt="o", color=col, ms=4,
                    capsize=2, label=name)
        top = max(top, float(c["value"].max()), float(f["value"].max()))
        if bool((c["stderr"] > 0).any()):
            floor = min(floor, float(c["stderr"][c["stderr"] > 0].min()))
    from matplotlib.ticker import FuncFormatter

    # linear within the finest Monte-Carlo resolution of the consistency estimates: "0 within noise"
    lin = max(floor if math.isfinite(floor) else 0.0, 1e-3 * top) or 1e-12
    ax.set_xscale("log")
    _plain_ticks(ax)
    bx.set_xscale("symlog", linthresh=lin)
    plain = FuncFormatter(lambda v, _: f"{v:.0e}" if v else "0")  # not the mathtext labels symlog draws by default
    for a in (ax, bx):
        a.set_yscale("symlog", linthresh=lin)
        a.yaxis.set_major_formatter(plain)
        a.grid(alpha=0.3, which="both")
    bx.xaxis.set_major_formatter(plain)
    ax.set_xlabel("σ (start of the reverse path)")
    ax.set_ylabel("residual² per dimension, per unit ln σ")
    ax.set_title("consistent diffusion vs score Fokker–Planck")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.16), ncol=2)  # below: the points stay visible
    bx.plot([0, top * 1.1], [0, top * 1.1], "k--", lw=0.8, label="y = x (Lai et al. 2023)")
    bx.set_xlabel("Fokker–Planck residual integrated along the paths")
    bx.set_ylabel("consistency residual")
    bx.set_title("equivalence: E[ΔD | x_t] = −E∫ r_FP d ln σ")
    bx.legend(fontsize=7)
    return _save(fig, path)


# ----------------------------------------------------------------------------- perspectives


def _panel(ax, x: Tensor, title: str, *, nrow: int, reference: Tensor | None = None) -> None:
    """Images as a grid, or points as a scatter over the reference cloud (first two coordinates)."""
    if x.ndim == 4:
        show_images(ax, x, nrow, title)
        return
    if reference is not None:
        r = reference.detach().reshape(reference.shape[0], -1)[:, :2].float().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, alpha=0.25, c="tab:gray")
    p = x.detach().reshape(x.shape[0], -1)[:, :2].float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=4, alpha=0.7, c="tab:blue")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)


def elbo_figure(res: dict, path) -> Path:
    """The DDPM bound term by term over its noise levels, with the totals of both bounds and the PF value."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.8, 4))
    dd, unit = res["ddpm"], res["unit"]
    terms, sig = dd["terms"], dd["sigmas"]
    ax.plot(sig[1:], terms[1:-1], marker=".", label="KL terms L_{k-1} (per step)")
    ax.scatter([sig[-1]], [terms[-1]], marker="^", c="tab:green", zorder=3, label="prior KL L_T")
    ax.set_xscale("log")
    ax.set_yscale("log")  # the KL terms are positive; the decoder term (a density, any sign) is in the box
    ax.set_xlabel("σ_k")
    ax.set_ylabel(f"term ({unit})")
    c, pf = res["continuous"], res.get("pf")
    text = (f"decoder -log p(x0|x_1): {terms[0]:.3g}\n"
            f"DDPM ({dd['steps']} levels): {dd['total']:.3f} ± {dd['stderr']:.2g}\n"
            f"continuous time: {c['total']:.3f} ± {c['stderr']:.2g}")
    if pf is not None:
        text += f"\nprobability flow: {pf['mean']:.3f} ± {pf['stderr']:.2g}"
    ax.text(0.02, 0.04, text, transform=ax.transAxes, fontsize=8, va="bottom",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "#ccc"})
    ax.set_title(f"the variational bound term by term ({unit}, mean over {res['n']} test points)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def langevin_figure(x: Tensor, denoised: Tensor, path, *, sigma: float, reference: Tensor | None = None) -> Path:
    """Annealed Langevin samples at their last noise level, and the same after one Tweedie step."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), squeeze=False)
    nrow = 8
    _panel(axes[0, 0], x, f"annealed Langevin, stopped at σ={sigma:.3g}", nrow=nrow, reference=reference)
    _panel(axes[0, 1], denoised, "after one Tweedie step D(x, σ)", nrow=nrow, reference=reference)
    return _save(fig, path)


def sde_figure(samples: dict, rows: dict, path, *, metric: str, reference: Tensor | None = None) -> Path:
    """Samples of each sampler (same initial noise, equal NFE) with its score."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(samples), figsize=(3.6 * len(samples), 3.9), squeeze=False)
    for ax, (name, x) in zip(axes[0], samples.items()):
        r = rows[name]
        _panel(ax, x[:64], f"{name}: NFE {r['nfe']:g}, {metric} {r['score']:.3g}", nrow=8, reference=reference)
    return _save(fig, path)


def interpolation_figure(x: Tensor, decoded: Tensor, path, *, reference: Tensor | None = None) -> Path:
    """Decoded slerp paths between pairs of encoded points: one row of frames per pair (images), or the
    paths drawn over the data (points)."""
    plt = _plt()
    pairs, frames = decoded.shape[:2]
    if decoded.ndim == 5:  # (pairs, frames, C, H, W)
        fig, ax = plt.subplots(figsize=(0.9 * frames + 0.4, 0.9 * pairs + 0.5))
        show_images(ax, decoded.flatten(0, 1), frames, "decoded slerp between encoded test images (ends: round trip)")
        return _save(fig, path)
    fig, ax = plt.subplots(figsize=(5, 5))
    if reference is not None:
        r = reference.reshape(reference.shape[0], -1)[:, :2].float().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, alpha=0.25, c="tab:gray")
    for p in decoded.reshape(pairs, frames, -1)[..., :2].float().numpy():
        ax.plot(p[:, 0], p[:, 1], marker="o", ms=3, lw=1)
    e = x.reshape(x.shape[0], -1)[:, :2].float().numpy()
    ax.scatter(e[:, 0], e[:, 1], marker="x", c="k", s=30, zorder=3, label="encoded test points")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("decoded slerp paths in the probability-flow latent", fontsize=10)
    return _save(fig, path)


def target_variance_figure(res: dict, path) -> Path:
    """Per noise level, the variance of the regression target x0 about the model's E[x0|x_t] (per dimension)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.errorbar(res["sigma"], res["value"], yerr=[2 * s for s in res["stderr"]], marker="o", capsize=2,
                label="E||x0 - D(x_t)||²/d (target variance)")
    ax.axhline(res["data_var"], ls="--", c="gray", label="data variance per dimension")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_xlabel("σ")
    ax.set_ylabel("per dimension")
    ax.set_title("the expectation MSE training estimates: the target's variance per level", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def recurrence_figure(sigmas: list[float], canvas: Tensor, estimate: Tensor, path) -> Path:
    """Sampling as a recurrent network: per step, the canvas x_hat and the model's estimate of x0.

    canvas: (steps + 1, n, ...) the state before each step and the result; estimate: (steps, n, ...) the
    denoised estimate each step made. Images: for each sample a row of canvases (scaled by 1/sqrt(1+σ²))
    above a row of estimates; points: the paths of the canvas and of the estimate in the plane.
    """
    plt = _plt()
    steps = estimate.shape[0]
    if canvas.ndim == 5:
        n = canvas.shape[1]
        scale = torch.tensor([1 / math.sqrt(1 + s * s) for s in sigmas])
        shown = canvas * scale.reshape(-1, 1, 1, 1, 1)
        fig, axes = plt.subplots(2 * n, steps + 1, figsize=(0.75 * (steps + 1), 0.8 * 2 * n + 0.4), squeeze=False)
        for i in range(n):
            for j in range(steps + 1):
                show_images(axes[2 * i, j], shown[j, i:i + 1], 1, f"σ={sigmas[j]:.2g}" if i == 0 else "")
                if j < steps:
                    show_images(axes[2 * i + 1, j], estimate[j, i:i + 1], 1, "")
                else:
                    axes[2 * i + 1, j].axis("off")
            axes[2 * i, 0].set_ylabel("canvas", fontsize=6)
        for ax in axes.flat:
            ax.title.set_fontsize(6)
        fig.suptitle("each sample: canvas x_t (top) and the model's estimate of x0 (bottom) per step", fontsize=8)
        return _save(fig, path)
    c = canvas.reshape(canvas.shape[0], canvas.shape[1], -1)[..., :2].float().cpu().numpy()
    e = estimate.reshape(estimate.shape[0], estimate.shape[1], -1)[..., :2].float().cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), sharex=True, sharey=True)
    for ax, v, title in ((axes[0], c, "canvas x_t per step"), (axes[1], e, "estimate of x0 per step")):
        for i in range(v.shape[1]):
            ax.plot(v[:, i, 0], v[:, i, 1], lw=0.6, alpha=0.5, c="tab:gray")
        pts = ax.scatter(v[..., 0].ravel(), v[..., 1].ravel(), s=5,
                         c=[j for j in range(v.shape[0]) for _ in range(v.shape[1])], cmap="viridis")
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
    fig.colorbar(pts, ax=axes, label="step", shrink=0.8)
    axes[0].set_xlim(*(1.2 * c[-1, :, 0].min() - 0.5, 1.2 * c[-1, :, 0].max() + 0.5))
    axes[0].set_ylim(*(1.2 * c[-1, :, 1].min() - 0.5, 1.2 * c[-1, :, 1].max() + 0.5))
    return _save(fig, path)
