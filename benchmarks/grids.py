"""Grids on a trained model: the recommended grids against the fitted grid and the fitted grid with its
measured stop, scored by the Fréchet distance.

    bash scripts/main.sh                                   # trains runs/main (the main job)
    .venv/bin/python -m benchmarks.grids --run runs/main   # ~10 min on one thread

The oracle benchmark (``benchmarks.samplers``) measures sampler error against the exact flow; this one
asks whether :func:`diffusionlens.samplers.fitted_grid` also helps a learned denoiser, whose flow is not
known. For each sampler and NFE it draws ``--samples`` images from the run's EMA model with the
sampler's recommended grid (``sample(grid=None)``), with the fitted grid (one pilot of 64 samples per
(sampler, NFE), not counted in the NFE) and with the fitted grid ending where :func:`stop_grid` puts its
last level (``grid="fitted-stop"``: the same pilot, 19 more sampler runs on it), from the same initial
noise, and scores each by the Fréchet distance in the features of the project's digits classifier
against the test split. The stop is chosen by distance to the pilot's exact-flow end points, not by FD,
so this is where an early jump's posterior-mean softening would show. The last column adds the analytic
start (the first evaluation replaced by the pilot's data mean, so the grid has one step more for the same
NFE). The recommended
grid is also run from a second noise seed: the difference between the two seeds is the scale below
which FD differences are noise.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from diffusionlens.evaluate import evaluate_samples
from diffusionlens.report.pipeline import generate
from diffusionlens.training import load_denoiser

from ._write import write_results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/main", help="a trained digits run directory (default runs/main)")
    ap.add_argument("--samplers", nargs="+", default=["deis", "unipc", "lms"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 6, 8, 12, 16])
    ap.add_argument("--samples", type=int, default=1497)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/grids.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    den, cfg = load_denoiser(args.run)
    t0 = time.time()

    pilot_cache: dict = {}  # one pilot for every fitted grid below (they are deterministic)

    def fd(sampler, nfe, grid, seed, analytic_start=False):
        x, _, used = generate(den, cfg, args.samples, sampler=sampler, steps=nfe + analytic_start, seed=seed,
                              grid=grid, analytic_start=analytic_start, pilot_cache=pilot_cache)
        assert abs(used - nfe) < 1e-9, (sampler, nfe, used)
        return evaluate_samples(x, cfg.dataset, seed=0)["fd"]

    rows = []
    for sampler in args.samplers:
        for nfe in args.nfe:
            r = (sampler, nfe, fd(sampler, nfe, None, 0), fd(sampler, nfe, None, 1), fd(sampler, nfe, "fitted", 0),
                 fd(sampler, nfe, "fitted-stop", 0), fd(sampler, nfe, "fitted-stop", 0, True))
            print(f"{sampler} NFE {nfe}: recommended {r[2]:.3f} (seed 1: {r[3]:.3f}), fitted {r[4]:.3f}, "
                  f"fitted-stop {r[5]:.3f}, with analytic start {r[6]:.3f}", flush=True)
            rows.append(r)
    L = [
        "# Grids on a trained digits model: recommended, fitted, fitted with its measured stop (and analytic start)",
        "",
        f"Command: `.venv/bin/python -m benchmarks.grids --run {args.run}` after `bash scripts/main.sh`. "
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; "
        f"{args.samples} samples per cell; wall time {(time.time() - t0) / 60:.1f} min. Method: `benchmarks/grids.py`.",
        "",
        "Fréchet distance (classifier features) to the test split; lower is better. `seed 1`: the recommended",
        "grid from other initial noise (the run-to-run scale of FD differences).",
        "",
        "| sampler | NFE | recommended grid | recommended, seed 1 | fitted grid | fitted / recommended "
        "| fitted-stop | fitted-stop / recommended | fitted-stop + analytic start | its ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, n, a, b, f, fs, fa in rows:
        L.append(f"| {s} | {n} | {a:.3f} | {b:.3f} | {f:.3f} | {f / a:.2f} | {fs:.3f} | {fs / a:.2f} | {fa:.3f} "
                 f"| {fa / a:.2f} |")
    L.append("")
    write_results(args.out, "\n".join(L))
    print("\n".join(L))


if __name__ == "__main__":
    main()
