"""Figures of the report (matplotlib, Agg backend, PNG). Each function draws one figure and writes it.

Shapes: images (N, C, H, W) in [-1, 1]; points (N, 2) (higher-dimensional points are shown by
their first two coordinates).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from .._util import read_jsonl

__all__ = ["image_grid", "sample_figure", "loss_curve", "quality_vs_nfe", "denoising_figure",
           "weighting_figure", "gap_figure", "recurrence_figure"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    tmp.replace(path)
    return path


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


def image_grid(x: Tensor, nrow: int, pad: float = 1.0) -> Tensor:
    """(N, C, H, W) in [-1, 1] -> (rows*(H+1)-1, nrow*(W+1)-1, C) in [0, 1], one-pixel gaps of value ``pad``."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    N, C, H, W = x.shape
    rows = math.ceil(N / nrow)
    out = torch.full((rows * (H + 1) - 1, nrow * (W + 1) - 1, C), float(pad))
    for i in range(N):
        r, c = divmod(i, nrow)
        out[r * (H + 1):r * (H + 1) + H, c * (W + 1):c * (W + 1) + W] = x[i].permute(1, 2, 0)
    return out


def _show_images(ax, x: Tensor, nrow: int, title: str) -> None:
    # one channel: ink dark on white (gray_r maps the background -1 to white), gaps light gray
    mono = x.shape[1] == 1
    g = image_grid(x, nrow, pad=0.25 if mono else 1.0).numpy()
    ax.imshow(g[..., 0] if mono else g, cmap="gray_r" if mono else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def sample_figure(samples: Tensor, path, *, reference: Tensor | None = None, title: str = "samples",
                  nrow: int = 10) -> Path:
    """Grid of image samples (beside real test images), or a scatter of 2-D samples over the reference."""
    plt = _plt()
    if samples.ndim == 4:
        k = min(samples.shape[0], nrow * nrow)
        panels = 2 if reference is not None else 1
        fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.4), squeeze=False)
        _show_images(axes[0, 0], samples[:k], nrow, title)
        if reference is not None:
            _show_images(axes[0, 1], reference[:k], nrow, "real test images")
        return _save(fig, path)
    s = samples.detach().reshape(samples.shape[0], -1)[:, :2].float().cpu().numpy()
    if reference is None:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.5, c="tab:blue")
        ax.set_aspect("equal")
        ax.set_title(title)
        return _save(fig, path)
    # side by side on shared axes: overlaid, whichever cloud is drawn last hides the other
    r = reference.detach().reshape(reference.shape[0], -1)[:, :2].float().cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), sharex=True, sharey=True)
    axes[0].scatter(s[:, 0], s[:, 1], s=2, alpha=0.5, c="tab:blue")
    axes[0].set_title(title, fontsize=10)
    axes[1].scatter(r[:, 0], r[:, 1], s=2, alpha=0.5, c="tab:gray")
    axes[1].set_title(f"held-out data ({len(r)} points)", fontsize=10)
    for ax in axes:
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    return _save(fig, path)


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
            _show_images(ax, x, 1, "")
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
                _show_images(axes[2 * i, j], shown[j, i:i + 1], 1, f"σ={sigmas[j]:.2g}" if i == 0 else "")
                if j < steps:
                    _show_images(axes[2 * i + 1, j], estimate[j, i:i + 1], 1, "")
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
