"""The frequency figure: spectrum with its fit and noise levels, the hinge per sigma, and settling."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..report.figures import _plain_ticks, _plt, _save

__all__ = ["frequency_figure"]


def _spectrum_panel(ax, r: dict) -> None:
    spec, fit, h = r["spectrum"], r["fit"], r["hinge"]
    f, p = np.asarray(spec["freq"]), np.asarray(spec["power"])
    ax.loglog(f, p, ".", ms=3, color="C0", label=f"data ({r['dataset']}, n={r['n']})")
    ff = np.geomspace(fit["fmin"], fit["fmax"], 50)
    lo, hi = fit["ci"]
    ax.loglog(ff, fit["amplitude"] * ff ** fit["exponent"], "-", color="C1",
              label=f"fit f^{fit['exponent']:.2f} [{lo:.2f}, {hi:.2f}]")
    for s, fh in zip(h["sigma"], h["freq"]):
        if not p.min() / 10 <= s**2 <= p.max() * 10:  # only the levels that meet the data
            continue
        ax.axhline(s**2, color="0.6", lw=0.6, ls="--")
        ax.annotate(f"σ={s:g}", (f[-1], s**2), fontsize=7, color="0.4", ha="right", va="bottom")
        if 0 < fh < f[-1]:
            ax.plot([fh], [s**2], "o", ms=4, color="C3")
    ax.set_xlabel("radial frequency (cycles / pixel)")
    ax.set_ylabel("power per DCT coefficient")
    ax.set_title("spectrum; noise σ² (dashed), hinge (red)")
    ax.legend(fontsize=7, loc="lower left")
    _plain_ticks(ax)


def _hinge_panel(ax, r: dict) -> None:
    h = r["hinge"]
    s, fh, ffit = np.asarray(h["sigma"]), np.asarray(h["freq"]), np.asarray(h["fit_freq"])
    top = r["spectrum"]["freq"][-1]
    ok = fh > 0
    ax.loglog(s[ok], fh[ok], "o-", color="C3", label="measured")
    ax.loglog(s, np.clip(ffit, r["spectrum"]["freq"][0] / 2, top), ":", color="C1", label="from the fit (clipped)")
    ax.axhline(top, color="0.6", lw=0.6)
    if "settling" in r:
        st = r["settling"]
        half = np.asarray(st["half_sigma"], dtype=np.float64)
        good = np.isfinite(half)
        ax.loglog(half[good], np.asarray(st["freq"])[good], ".", ms=3, color="C2",
                  label=f"half settled ({st['sampler']}, NFE {st['nfe']})")
    ax.set_xlabel("σ")
    ax.set_ylabel("frequency (cycles / pixel)")
    ax.set_title("the hinge: signal dominates below it")
    ax.legend(fontsize=7)
    _plain_ticks(ax)


def _settling_panel(ax, st: dict) -> None:
    settled = np.asarray(st["settled"])
    sig, f = np.asarray(st["sigmas"]), np.asarray(st["freq"])
    im = ax.imshow(np.clip(settled.T, 0, 1), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
                   extent=(-0.5, len(sig) - 0.5, -0.5, len(f) - 0.5))
    ticks = np.linspace(0, len(sig) - 1, min(6, len(sig))).round().astype(int)
    ax.set_xticks(ticks, [f"{sig[i]:.2g}" for i in ticks])
    fticks = np.linspace(0, len(f) - 1, 5).round().astype(int)
    ax.set_yticks(fticks, [f"{f[i]:.2f}" for i in fticks])
    ax.set_xlabel("σ of the step (sampling runs left to right)")
    ax.set_ylabel("frequency (cycles / pixel)")
    ax.set_title("settled fraction of the final sample")
    ax.figure.colorbar(im, ax=ax, fraction=0.05)


def frequency_figure(result: dict, path) -> Path:
    """Two panels (spectrum, hinge) for a data set; a third (settling per step and frequency) for a run."""
    plt = _plt()
    k = 3 if "settling" in result else 2
    fig, axes = plt.subplots(1, k, figsize=(5.2 * k, 4.2))
    _spectrum_panel(axes[0], result)
    _hinge_panel(axes[1], result)
    if k == 3:
        _settling_panel(axes[2], result["settling"])
    fig.tight_layout()
    return _save(fig, path)
