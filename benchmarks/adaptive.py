"""Adaptive PF-ODE samplers against k-diffusion's ``dpm_adaptive`` on held-out Gaussian mixtures.

    PYTHONPATH=src python -m benchmarks.adaptive            # a few minutes on one thread

Three random mixtures not used by any other benchmark or test (d = 8, 16, 32; seeds 404, 505, 606,
the last with a wider range of component scales). From the same float64 noise at sigma_max = 80,
each solver integrates the probability-flow ODE to sigma_min = 0.002 (no final denoising step, as
``sample_dpm_adaptive`` ends there) at rtol = atol = tol. The reference is the exact flow: the
project's Dormand-Prince solver at rtol = atol = 1e-11 in float64. Reported per tolerance: NFE
(ours: mean per sample, each sample has its own steps; k-diffusion: denoiser calls, one step size
for the whole batch, counted by a wrapper) and the RMSE of x(sigma_min) against the reference over
all samples and coordinates.

Tolerances mean different things to different error estimates, so solvers are compared as
error-vs-NFE curves: for each of our points inside the range of k-diffusion's errors, the NFE
``dpm_adaptive`` needs for the same RMSE (log-log interpolation between its measured points), and the
ratio of ours to it (< 1: fewer evaluations for the same error).

Solvers: ``pc`` (the adaptive sampler's default, exponential predictor-corrector), ``dpm3`` (the
exponential RK 3(2) pair, the default before ``pc``, unchanged since commit d7f135d) and k-diffusion's
``sample_dpm_adaptive`` with its defaults (order 3, PI coefficients, accept safety 0.81).
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from diffusionlens.ode import solve
from diffusionlens.oracle import random_mixture
from diffusionlens.samplers.adaptive import solve_exp_pc, solve_exp_rk32

from ._write import write_results
from .peers import k_sampling

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
TOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5)


def held_out() -> dict:
    """The three mixtures (seeds and sizes used nowhere else in the project)."""
    return {"mix8_seed404": random_mixture(8, 6, seed=404), "mix16_seed505": random_mixture(16, 10, seed=505),
            "mix32_wide_seed606": random_mixture(32, 12, seed=606, std_range=(0.02, 1.0))}


def exact_flow(gm, x: torch.Tensor) -> torch.Tensor:
    def f(t, y, idx):
        return y - gm(y, torch.exp(t))

    return solve(f, x, math.log(SIGMA_MAX), math.log(SIGMA_MIN), rtol=1e-11, atol=1e-11)[0]


def run_ours(solver, gm, x, tol) -> tuple[float, torch.Tensor]:
    y, nfe = solver(gm, x, SIGMA_MAX, SIGMA_MIN, rtol=tol, atol=tol)
    return nfe.double().mean().item(), y


def run_k(gm, x, tol) -> tuple[float, torch.Tensor]:
    calls = [0]

    def model(y, sigma):
        calls[0] += 1
        return gm(y, sigma)

    y = k_sampling().sample_dpm_adaptive(model, x, SIGMA_MIN, SIGMA_MAX, rtol=tol, atol=tol, disable=True)
    return float(calls[0]), y


def nfe_at_equal_error(curve, err: float) -> float | None:
    """NFE of ``curve`` [(nfe, rmse)] at RMSE ``err`` (log-log interpolation), None outside its range."""
    pts = sorted((math.log(e), math.log(n)) for n, e in curve)
    for (e0, n0), (e1, n1) in zip(pts, pts[1:]):
        if e0 <= math.log(err) <= e1:
            w = 0.0 if e1 == e0 else (math.log(err) - e0) / (e1 - e0)
            return math.exp(n0 + w * (n1 - n0))
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/adaptive.md")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    t_start = time.time()
    solvers = {"pc": lambda gm, x, tol: run_ours(solve_exp_pc, gm, x, tol),
               "dpm3": lambda gm, x, tol: run_ours(solve_exp_rk32, gm, x, tol), "k dpm_adaptive": run_k}
    L = ["# Adaptive samplers vs k-diffusion's dpm_adaptive (held-out mixtures, float64)", "",
         f"Command: `PYTHONPATH=src python -m benchmarks.adaptive --samples {args.samples}`", "",
         f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s). "
         "NFE: ours mean per sample, k-diffusion denoiser calls. RMSE: x(sigma_min) against the exact flow. "
         "k NFE @ err: NFE dpm_adaptive needs for the same RMSE (log-log interpolation; - outside its range).", ""]
    summary = []
    for case, gm in held_out().items():
        x = torch.randn(args.samples, gm.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x = x * SIGMA_MAX
        ref = exact_flow(gm, x)
        curves = {}
        for name, fn in solvers.items():
            curves[name] = []
            for tol in TOLS:
                nfe, y = fn(gm, x, tol)
                curves[name].append((nfe, (y - ref).pow(2).mean().sqrt().item()))
        print(f"{case}: done ({time.time() - t_start:.0f} s)", flush=True)
        L += [f"## {case}", "", "| tol | solver | NFE | RMSE | k NFE @ err | NFE ratio |", "|---|---|---|---|---|---|"]
        for i, tol in enumerate(TOLS):
            for name, curve in curves.items():
                nfe, err = curve[i]
                kn = None if name.startswith("k ") else nfe_at_equal_error(curves["k dpm_adaptive"], err)
                ratio = "-" if kn is None else f"{nfe / kn:.2f}"
                if kn is not None:
                    summary.append((case, name, nfe / kn))
                kcol = "-" if kn is None else f"{kn:.1f}"
                L.append(f"| {tol:.0e} | {name} | {nfe:.1f} | {err:.2e} | {kcol} | {ratio} |")
        L.append("")
    L += ["## NFE ratio at equal error (ours / dpm_adaptive), all comparable points", "",
          "| mixture | solver | min | median | max | points |", "|---|---|---|---|---|---|"]
    for case in held_out():
        for name in ("pc", "dpm3"):
            r = sorted(v for c, n, v in summary if c == case and n == name)
            if r:
                L.append(f"| {case} | {name} | {r[0]:.2f} | {r[len(r) // 2]:.2f} | {r[-1]:.2f} | {len(r)} |")
    L += ["", f"Wall time {time.time() - t_start:.0f} s."]
    write_results(args.out, "\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
