"""Report sections of interpolant runs (``--objective interpolant``, ``reflow``) and their figures: the
paths from the source with their straightness, and for paired (InDI) runs degraded | restored at
several step counts | clean. Registered by importing this module at the end of :mod:`.html`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .._plot import pyplot, save_figure, show_images
from .html import Context, Figure, NotApplicable, _run, section

__all__ = ["paths_figure", "restore_figure"]

_FRAMES = 9


def restore_figure(tensors: dict[str, Tensor], steps: tuple[int, ...], path, *, k: int = 16) -> Path:
    """Columns degraded | restored in n steps for each n | clean (when present), ``k`` images each."""
    cols = ["degraded", *(f"restored-{n}" for n in steps), *(["clean"] if "clean" in tensors else [])]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(cols), figsize=(1.7 * len(cols), 2.0), squeeze=False)
    for ax, name in zip(axes[0], cols):
        show_images(ax, tensors[name][:k], 4, name.replace("restored-", "n = "))
    return save_figure(fig, path)


def paths_figure(path: Tensor, one: Tensor, target: Tensor, out, *, paired: bool = False) -> Path:
    """Paths of the velocity ODE from the source (``path`` (steps + 1, B, ...), source first): 2-D data as
    trajectories over the target's points with the one-step ends; images as the canvas over t (rows:
    samples; columns: t from 1 to 0, then the one-step end, then the clean image for paired runs)."""
    plt = pyplot()
    if path.ndim == 3 and path.shape[-1] == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(*target[:, :2].T.numpy(), s=6, c="0.75", label="target (test)")
        for i in range(min(path.shape[1], 32)):
            ax.plot(*path[:, i].T.numpy(), lw=0.8, c="C0", alpha=0.7)
        ax.scatter(*path[0, :32].T.numpy(), s=8, c="C1", label="source")
        ax.scatter(*path[-1, :32].T.numpy(), s=8, c="C0", label="end of the path")
        ax.scatter(*one[:32].T.numpy(), s=8, c="C3", marker="x", label="one Euler step")
        ax.legend(fontsize=7)
        ax.set_aspect("equal")
        return save_figure(fig, out)
    rows = min(path.shape[1], 6)
    idx = torch.linspace(0, path.shape[0] - 1, _FRAMES).round().long()
    frames = [path[i, :rows] for i in idx] + [one[:rows]] + ([target[:rows]] if paired else [])
    grid = torch.stack(frames, 1).reshape(-1, *path.shape[2:])  # row-major: sample by sample
    fig, ax = plt.subplots(figsize=(0.75 * len(frames) + 0.5, 0.8 * rows + 0.6))
    labels = [f"t={1 - float(i) / (path.shape[0] - 1):.2g}" for i in idx] + ["1 step"] + (["clean"] if paired else [])
    show_images(ax, grid, len(frames), "  |  ".join(labels))
    ax.title.set_fontsize(6)
    return save_figure(fig, out)


def _interpolant_run(ctx: Context) -> None:
    from ..run.interpolants import source_spec

    if source_spec(ctx.cfg) is None:
        raise NotApplicable("not an interpolant run (train with --objective interpolant, or reflow a run)")


@section("interpolant paths", requires=(_interpolant_run,))
def _paths(ctx: Context) -> Figure:
    from ..run.interpolants import paths_view

    res = paths_view(_run(ctx), figure=ctx.path("fig_interpolant_paths.png"))
    s = res["straightness"]
    return Figure("fig_interpolant_paths.png",
                  f"The interpolant view: paths of the learned velocity ODE from the source ({res['source']}) to the "
                  f"target, {res['steps']} Euler steps from t = 1 to 0, beside the end of a single Euler step. "
                  f"Straightness (the path average of |v - chord|^2, 0 for straight paths that one step solves "
                  f"exactly): {s['mean']:.3g} ± {s['stderr']:.2g} over {res['n']} paths.")


def _paired_run(ctx: Context) -> None:
    from ..run.interpolants import source_spec

    if not (source_spec(ctx.cfg) or "").startswith("degraded:"):
        raise NotApplicable("not a restoration run (train with --source degraded:KIND --coupling paired)")


@section("InDI restoration", requires=(_paired_run,))
def _restoration(ctx: Context) -> Figure:
    from ..run.interpolants import degradation, restorations

    run = _run(ctx)
    clean = ctx.test.x[:64].float()
    y = degradation(run)(clean, torch.Generator().manual_seed(0))
    steps = (1, 2, 4, 16)
    tensors, res = restorations(run, y, clean, steps)
    restore_figure(tensors, steps, ctx.path("fig_restoration.png"))
    psnr = ", ".join(f"n = {k}: {res['steps'][str(k)]['psnr']['mean']:.1f} dB" for k in steps)
    return Figure("fig_restoration.png",
                  f"InDI (Delbracio & Milanfar 2023): test images degraded as in training "
                  f"({ctx.cfg.objective_options['source']}), restored in n small steps x <- x - d v(x, t) from t = 1 "
                  f"to 0. One step is the MMSE regressor E[x0 | y], smooth; more steps follow the flow to sharper "
                  f"images further from the truth in squared error (the perception-distortion trade). PSNR on "
                  f"{res['n']} images: degraded {res['psnr_degraded']['mean']:.1f} dB; {psnr}.")
