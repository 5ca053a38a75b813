"""Figures the run layer writes beside its outputs and the report reuses (matplotlib, Agg backend, PNG):
the lowest layer that draws, so ``run`` never imports ``report``.

Shapes: images (N, C, H, W) in [-1, 1]; points (N, 2) (higher-dimensional points are shown by their
first two coordinates).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["image_grid", "show_images", "sample_figure", "pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Write ``fig`` to ``path`` as PNG (through a temporary name, so a reader never sees half a file), close it."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    tmp.replace(path)
    return path


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


def show_images(ax, x: Tensor, nrow: int, title: str) -> None:
    """Draw images (N, C, H, W) in [-1, 1] as a grid of ``nrow`` columns on ``ax``."""
    # one channel: ink dark on white (gray_r maps the background -1 to white), gaps light gray
    mono = x.shape[1] == 1
    g = image_grid(x, nrow, pad=0.25 if mono else 1.0).numpy()
    ax.imshow(g[..., 0] if mono else g, cmap="gray_r" if mono else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def sample_figure(samples: Tensor, path, *, reference: Tensor | None = None, title: str = "samples",
                  nrow: int = 10) -> Path:
    """Grid of image samples (beside real test images), or a scatter of 2-D samples over the reference."""
    plt = pyplot()
    if samples.ndim == 4:
        k = min(samples.shape[0], nrow * nrow)
        panels = 2 if reference is not None else 1
        fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.4), squeeze=False)
        show_images(axes[0, 0], samples[:k], nrow, title)
        if reference is not None:
            show_images(axes[0, 1], reference[:k], nrow, "real test images")
        return save_figure(fig, path)
    s = samples.detach().reshape(samples.shape[0], -1)[:, :2].float().cpu().numpy()
    if reference is None:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.5, c="tab:blue")
        ax.set_aspect("equal")
        ax.set_title(title)
        return save_figure(fig, path)
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
    return save_figure(fig, path)
