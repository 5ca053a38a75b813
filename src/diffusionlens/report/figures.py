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
           "weighting_figure", "gap_figure"]


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
