"""Spectra benchmark: the power-law exponent of natural photographs, and the frequency view's closed forms.

    python -m benchmarks.spectra                     # ~1 CPU-minute
    python -m benchmarks.spectra --n 500 --out $WORK/s.md

1. **Exponent.** For each of ``--seeds`` patch seeds, ``--n`` 32x32 grayscale patches of the two
   photographs shipped with scikit-learn (data set ``photos``, train split), the radially averaged DCT
   power spectrum and its power-law fit (:func:`diffusionlens.frequency.fit_power_law`, 16 log bins,
   f in [1/64, 1/2] cycles per pixel, 95% t-interval). The literature's value for natural images is
   about -2 (Field 1987; van der Schaaf & van Hateren 1996 report -1.88 with a spread of 0.43 over
   images, i.e. amplitude ~ 1/f). The same fit on the digits and MNIST (not natural images) for contrast,
   and on the photographs with f <= 1/4 (JPEG compression acts on the highest frequencies).
2. **Hinge.** On the spectral oracle (:class:`diffusionlens.frequency.PowerLawGaussian`) the hinge
   measured on its exact spectrum by :func:`diffusionlens.frequency.hinge` against the closed form
   (sigma^2 / A)^(1/exponent), over 81 noise levels from 1e-3 to 10, for several sizes and exponents
   (largest relative error); and measured on ``--n`` oracle samples (Monte-Carlo error).
3. **Settling.** The sigma at which the exact denoiser's probability-flow solve (Heun, 48 steps) has
   settled half of each frequency, against the closed form sqrt(3 v(f)).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np
import torch

from diffusionlens.data import load_dataset
from diffusionlens.frequency import PowerLawGaussian, fit_power_law, hinge, power_spectrum, settling

from ._write import write_results

SIGMAS = np.logspace(-3, 1, 81)


def exponents(seeds, n) -> list[str]:
    rows, exps, exps_low = [], [], []
    for seed in seeds:
        spec = power_spectrum(load_dataset("photos", "train", seed=seed, n=n).x)
        fit, low = fit_power_law(spec), fit_power_law(spec, fmax=0.25)
        exps.append(fit.exponent)
        exps_low.append(low.exponent)
        rows.append(f"| photos, seed {seed} | {n} | {fit.exponent:.3f} | [{fit.ci[0]:.3f}, {fit.ci[1]:.3f}] | "
                    f"{low.exponent:.3f} | [{low.ci[0]:.3f}, {low.ci[1]:.3f}] |")
    rows.append(f"| **photos, mean ± std over {len(seeds)} seeds** | | **{statistics.mean(exps):.3f} ± "
                f"{statistics.stdev(exps):.3f}** | | **{statistics.mean(exps_low):.3f} ± "
                f"{statistics.stdev(exps_low):.3f}** | |")
    for name in ("digits", "mnist"):
        x = load_dataset(name, "train", n=n).x
        spec = power_spectrum(x)
        fit, low = fit_power_law(spec), fit_power_law(spec, fmax=0.25)
        rows.append(f"| {name} (not natural images) | {len(x)} | {fit.exponent:.3f} | [{fit.ci[0]:.3f}, "
                    f"{fit.ci[1]:.3f}] | {low.exponent:.3f} | [{low.ci[0]:.3f}, {low.ci[1]:.3f}] |")
    head = ["| images | n | exponent (f <= 1/2) | 95% interval | exponent (f <= 1/4) | 95% interval |",
            "|---|---:|---:|---|---:|---|"]
    return head + rows


def hinges(n: int) -> list[str]:
    rows = ["| oracle shape | exponent | hinge from exact spectrum: max relative error | from samples "
            "(n): max relative error |", "|---|---:|---:|---:|"]
    for shape, e in (((8, 8), -2.0), ((1, 28, 28), -2.0), ((1, 32, 32), -2.5), ((1, 16, 24), -1.5)):
        o = PowerLawGaussian(shape, exponent=e)
        want = o.hinge(SIGMAS)
        inside = (want > 0) & (want < o.spectrum().freq[-1])
        exact = np.abs(hinge(o.spectrum(), SIGMAS)[inside] / want[inside] - 1).max()
        meas = hinge(power_spectrum(o.sample(n, torch.Generator().manual_seed(0))), SIGMAS)
        ok = inside & (meas > 0)
        rows.append(f"| {shape} | {e:g} | {exact:.1e} | {np.abs(meas[ok] / want[ok] - 1).max():.3f} ({n}) |")
    return rows


def settlings() -> list[str]:
    rows = ["| oracle shape | sampler | half-settled sigma: max relative error vs sqrt(3 v(f)) | monotone in f |",
            "|---|---|---:|---|"]
    for shape in ((8, 8), (1, 16, 16)):
        o = PowerLawGaussian(shape)
        noise = torch.randn((8, 1) + tuple(shape[-2:]), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        st = settling(o, noise, sampler="heun", steps=48, mean=0.0)
        half = st.half_sigma()
        rows.append(f"| {shape} | heun, 48 steps | {np.nanmax(np.abs(half / o.half_settled_sigma() - 1)):.2e} | "
                    f"{bool(np.all(np.diff(half) < 0))} |")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", default="benchmarks/results/spectra.md")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    c0 = time.process_time()
    parts = ["## 1. Power-law exponent", *exponents(a.seeds, a.n), "", "## 2. Hinge on the spectral oracle",
             *hinges(a.n), "", "## 3. Coarse-to-fine settling of the exact flow", *settlings()]
    text = (f"# Spectra: natural-image exponent, hinge and settling against closed forms\n\n"
            f"Command: `python -m benchmarks.spectra {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
            f"torch {torch.__version__}, {platform.machine()}, 1 thread; {time.process_time() - c0:.0f} CPU-s.\n\n"
            + "\n".join(parts) + "\n")
    write_results(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
