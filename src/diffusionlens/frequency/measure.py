"""What the ``spectrum`` command and the report's frequency section show, computed once.

:func:`data_view` gives a set of images' spectrum, its power-law fit and the hinge at the noise
levels :data:`HINGE_SIGMAS`; :func:`model_settling` runs a model's sampler (the blurring sampler for a
blurring run) and measures the coarse-to-fine order; :func:`spectrum` puts both together for a data
set name or a run, and :func:`write_spectrum` writes the figure and the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .spectra import fit_power_law, hinge, power_spectrum, settling

__all__ = ["HINGE_SIGMAS", "data_view", "model_settling", "spectrum", "write_spectrum", "print_summary",
           "report_view"]

HINGE_SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Noise levels at which the hinge is reported."""


def data_view(x, *, sigmas=HINGE_SIGMAS) -> dict:
    """{"spectrum", "fit", "hinge": {"sigma", "freq", "fit_freq"}} of images x (N, [C,] H, W); the hinge
    measured on the spectrum and, beside it, where the fitted law meets sigma^2."""
    spec = power_spectrum(x)
    fit = fit_power_law(spec)
    s = np.asarray(sigmas, dtype=np.float64)
    return {"spectrum": spec.to_dict(), "fit": fit.to_dict(),
            "hinge": {"sigma": s.tolist(), "freq": hinge(spec, s).tolist(), "fit_freq": fit.hinge(s).tolist()}}


def model_settling(denoiser, cfg, *, n: int = 32, nfe: int = 16, sampler: str | None = None, seed: int = 0,
                   plan=None, device=None) -> dict:
    """The coarse-to-fine order of a trained model: :func:`~.spectra.settling` of ``n`` samples at budget
    ``nfe`` with ``sampler`` (None: the plan's best at that budget, else the default sampler); a blurring
    run is sampled by its own sampler (its DDIM step on the Karras grid, ``nfe`` steps)."""
    from ..data import load_dataset
    from ..processes import karras_grid
    from ..run import sampling_range
    from ..samplers import DEFAULT_SAMPLER, randn

    shape = load_dataset(cfg.dataset, "test", seed=cfg.seed, n=2).data_shape
    if len(shape) != 3:
        raise ValueError(f"the frequency view needs image data (C, H, W), got data shape {shape} ({cfg.dataset})")
    smin, smax = sampling_range(cfg)
    noise = randn((n,) + tuple(shape), torch.Generator().manual_seed(seed), device=device)
    if getattr(cfg, "objective", "denoising") == "blurring":
        from .blurring import Blur, blurring_sample

        grid = karras_grid(nfe, smin, smax)
        st = settling(denoiser, noise, solve=lambda cb: blurring_sample(denoiser, noise, grid, Blur(), callback=cb))
        name = "blurring DDIM"
    else:
        if sampler is None:
            sampler = plan.best_sampler(nfe) if plan is not None and hasattr(plan, "best_sampler") else None
            sampler = sampler or DEFAULT_SAMPLER
        st = settling(denoiser, noise, sampler=sampler, steps=None, nfe=nfe, sigma_min=smin, sigma_max=smax)
        name = sampler
    return {"sampler": name, "nfe": nfe, "n": n, **st.to_dict()}


def spectrum(source: str, *, n: int = 2000, sigmas=None, settle: bool = True, device=None, seed: int = 0) -> dict:
    """The frequency view of a data set name (its train split, first ``n`` images or ``n`` generated ones)
    or of a run (its data set, plus the settling of its model if ``settle``). ``sigmas``: the hinge's
    noise levels (default :data:`HINGE_SIGMAS`; a run's must lie in its sampling range). The result's
    ``default_stem`` is where the CLI writes it: ``<run>/spectrum`` or ``spectrum-<dataset>``."""
    from ..data import DATASETS, load_dataset

    if source in DATASETS:
        data, run = load_dataset(source, "train", seed=seed, n=n), None
    else:
        from .. import run as runs

        run = runs.open_run(source, device=device or "cpu")
        data = load_dataset(run.config.dataset, "train", seed=run.config.seed, n=n)
    if not data.is_image:
        raise ValueError(f"the frequency view needs an image data set; {data.name!r} has data shape {data.data_shape}")
    if sigmas is None:
        sigmas = HINGE_SIGMAS if run is None else tuple(s for s in HINGE_SIGMAS if _inside(s, run.config))
    elif run is not None:
        from ..run import sampling_range

        lo, hi = sampling_range(run.config)
        for s in sigmas:
            if not _inside(s, run.config):
                raise ValueError(f"sigma {s:g} is outside the run's noise range [{lo:g}, {hi:g}]")
    out = {"source": str(source if run is None else run.path), "dataset": data.name,
           "shape": list(data.data_shape), "n": len(data), **data_view(data.x, sigmas=sigmas),
           "default_stem": str(run.path / "spectrum" if run is not None else Path(f"spectrum-{data.name}"))}
    if run is not None and settle:
        out["settling"] = model_settling(run.denoiser, run.config, plan=getattr(run, "plan", None),
                                         device=device)
    return out


def report_view(denoiser, cfg, images, *, sampler: str | None = None, n: int = 16, nfe: int = 16) -> dict:
    """The report's frequency numbers, kept to a few seconds: the spectrum, fit and hinge of ``images``
    (the held-out split) at the run's noise levels, and the settling of ``n`` samples at ``nfe``."""
    sigmas = tuple(s for s in HINGE_SIGMAS if _inside(s, cfg))
    return {"source": "report", "dataset": cfg.dataset, "shape": list(images.shape[1:]), "n": int(images.shape[0]),
            **data_view(images, sigmas=sigmas),
            "settling": model_settling(denoiser, cfg, n=n, nfe=nfe, sampler=sampler)}


def _inside(s: float, cfg) -> bool:
    from ..run import sampling_range

    lo, hi = sampling_range(cfg)
    return lo <= s <= hi


def print_summary(r: dict) -> None:
    """The numbers of a :func:`spectrum` result, a few lines for the terminal."""
    fit, h = r["fit"], r["hinge"]
    lo, hi = fit["ci"]
    print(f"{r['dataset']} {tuple(r['shape'])}, {r['n']} images: power ~ f^{fit['exponent']:.3f} "
          f"({100 * fit['level']:g}% interval [{lo:.3f}, {hi:.3f}], f in [{fit['fmin']:.3g}, {fit['fmax']:.3g}])")
    print("hinge (frequency below which the signal dominates, cycles/pixel):")
    print("  " + "  ".join(f"σ={s:g}: {f:.3g}" for s, f in zip(h["sigma"], h["freq"])))
    if "settling" in r:
        st = r["settling"]
        half = np.asarray(st["half_sigma"], dtype=np.float64)
        f = np.asarray(st["freq"])
        q = [int(i) for i in np.linspace(0, len(f) - 1, 5).round()]
        print(f"half settled ({st['sampler']}, NFE {st['nfe']}, {st['n']} samples), σ at frequency:")
        print("  " + "  ".join(f"f={f[i]:.2f}: σ={half[i]:.3g}" for i in q))


def write_spectrum(result: dict, stem) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (the numbers) and ``<stem>.png`` (the figure) atomically; returns both paths."""
    from ..run import check_writable, save_json
    from .figures import frequency_figure

    stem = Path(stem)
    check_writable(stem.parent)
    save_json(stem.with_suffix(".json"), result)
    frequency_figure(result, stem.with_suffix(".png"))
    return stem.with_suffix(".json"), stem.with_suffix(".png")
