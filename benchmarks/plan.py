"""Sampling plans and the default last level: peers' best configuration vs ``sample()``'s untuned default
vs its tuned plan (:func:`diffusionlens.samplers.tune`), same noise, RMSE against the exact PF-ODE
solution (float64 oracle), on three mixtures not used anywhere else; and the default grid's last level
sigma_min for the default sampler, chosen on the standard cases and checked on the held-out ones.

Run from the repository root:  .venv/bin/python -m benchmarks.plan [--quick]
Writes benchmarks/results/plan.md. See benchmarks/samplers.md for the reading.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from diffusionlens.oracle import random_mixture, standard_cases
from diffusionlens.samplers import DEFAULT_SAMPLER, sample, tune

from ._write import write_results
from .samplers import configs, reference, rmse

NFES = [6, 8, 10, 12, 16, 24, 32]
STOP_NFES = [5, 6, 8, 10, 12, 16, 24, 32]
SIGMA_MINS = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1]


def held_out() -> dict:
    """Three mixtures no other benchmark or test uses (seeds 4040, 5050, 6060)."""
    return {"mix12_seed4040": random_mixture(12, 8, seed=4040),
            "mix24_seed5050": random_mixture(24, 10, seed=5050, std_range=(0.03, 0.8)),
            "mix6_seed6060": random_mixture(6, 16, seed=6060, spread=2.0)}


def noise_for(gm, n: int) -> torch.Tensor:
    return torch.randn(n, gm.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def plan_table(cases: dict, n: int) -> tuple[list, dict]:
    """Rows (case, nfe, best peer, its rmse, default rmse, tuned rmse, tuned start, rmse of the plan tuned by the
    unscreened search), and {case: (seconds of the screened tune, of the unscreened one)}."""
    peers = {k: v for lib, cf in configs(True).items() if lib != "ours" for k, v in cf.items()}
    rows, secs = [], {}
    for case, gm in cases.items():
        noise = noise_for(gm, n)
        t0 = time.perf_counter()
        plan = tune(gm, (gm.dim,), nfes=NFES, dtype=torch.float64)
        t1 = time.perf_counter()
        full = tune(gm, (gm.dim,), nfes=NFES, dtype=torch.float64, screen=None)
        secs[case] = (t1 - t0, time.perf_counter() - t1)
        ref80 = reference(case, gm, noise, 80.0)
        for nfe in NFES:
            best = (math.inf, "-")
            for name, run in peers.items():
                try:
                    x, _, s0 = run(gm, noise, nfe)
                    e = rmse(x, reference(case, gm, noise, s0))
                except Exception:  # a peer configuration that cannot run at this NFE
                    continue
                if math.isfinite(e) and e < best[0]:
                    best = (e, name)
            x_def, i_def = sample(gm, noise, nfe=nfe, return_info=True)
            x_tun, i_tun = sample(gm, noise, nfe=nfe, plan=plan, return_info=True)
            x_full = sample(gm, noise, nfe=nfe, plan=full)
            assert i_def.nfe <= nfe and i_tun.nfe <= nfe, (i_def.nfe, i_tun.nfe)
            rows.append((case, nfe, best[1], best[0], rmse(x_def, ref80), rmse(x_tun, ref80),
                         f"{plan.best_sampler(nfe)} {type(i_tun.start).__name__}", rmse(x_full, ref80)))
        print(f"{case}: plan table done", flush=True)
    return rows, secs


def stop_table(cases: dict, n: int) -> dict:
    """{(case, nfe): [rmse for each sigma_min]} of the default sampler on its default grid family."""
    out = {}
    for case, gm in cases.items():
        noise = noise_for(gm, n)
        ref = reference(case, gm, noise, 80.0)
        for nfe in STOP_NFES:
            out[(case, nfe)] = [rmse(sample(gm, noise, nfe=nfe, sigma_min=s), ref) for s in SIGMA_MINS]
        print(f"{case}: sigma_min table done", flush=True)
    return out


def fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.3g}"


def report(cmd: str, rows: list, tune_secs: dict, stops_std: dict, stops_held: dict, secs: float) -> str:
    L = ["# Sampling plans and the default last level", "", f"Command: `{cmd}` ({secs / 60:.1f} min, float64 "
         "oracle, one CPU thread). RMSE per coordinate against the exact PF-ODE solution from the same noise.", "",
         "## Peers' best vs our untuned default vs our tuned plan (held-out mixtures)", "",
         f"Default: `sample(gm, noise, nfe=k)` ({DEFAULT_SAMPLER}, its default grid). Tuned: `tune(gm, shape)` once, "
         "then `sample(gm, noise, nfe=k, plan=plan)` (the plan's sampler of lower pilot error). "
         "Peer: the lowest RMSE over every k-diffusion and "
         "diffusers configuration of the samplers benchmark at that NFE.", "",
         "Tuned, unscreened: the same with `tune(..., screen=None)`, every candidate measured on the whole pilot "
         "(the default screens them on 32 pilot samples and measures the 3 best on all 256).", "",
         "| mixture | NFE | best peer | peer RMSE | default | tuned | tuned sampler, start | default / peer "
         "| tuned / peer | tuned, unscreened | unscreened / peer |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, nfe, name, pe, de, te, st, fe in rows:
        L.append(f"| {case} | {nfe} | {name} | {fmt(pe)} | {fmt(de)} | {fmt(te)} | {st} | {fmt(de / pe)} | "
                 f"{fmt(te / pe)} | {fmt(fe)} | {fmt(fe / pe)} |")
    L += ["", "Seconds to tune each mixture's plan (2 samplers x 7 budgets), screened (default) / unscreened: "
          + ", ".join(f"{case} {a:.0f} / {b:.0f}" for case, (a, b) in tune_secs.items()) + "."]
    for title, tab in (("standard cases (choice)", stops_std), ("held-out mixtures (check)", stops_held)):
        L += ["", f"## Default sampler on its default grid: RMSE by last level sigma_min, {title}", "",
              "| mixture | NFE | " + " | ".join(f"{s:g}" for s in SIGMA_MINS) + " | best |",
              "|---|---|" + "---|" * (len(SIGMA_MINS) + 1)]
        for (case, nfe), vals in tab.items():
            b = min(range(len(vals)), key=lambda i: vals[i])
            L.append(f"| {case} | {nfe} | " + " | ".join(fmt(v) for v in vals) + f" | {SIGMA_MINS[b]:g} |")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run, not for the record)")
    ap.add_argument("--out", default="benchmarks/results/plan.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = 64 if args.quick else 128
    t0 = time.time()
    held = held_out()
    stops_std = stop_table(standard_cases(), n)
    stops_held = stop_table(held, n)
    rows, tune_secs = plan_table(held, n)
    cmd = ".venv/bin/python -m benchmarks.plan" + (" --quick" if args.quick else "")
    write_results(Path(args.out), report(cmd, rows, tune_secs, stops_std, stops_held, time.time() - t0))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
