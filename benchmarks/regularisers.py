"""The consistency regularisers on the oracle ring: residuals of exact, perturbed and trained denoisers.

    .venv/bin/python -m benchmarks.regularisers              # ~10 min on 2 busy cores

Residuals (:mod:`diffusionlens.distill.regularisers`), all per dimension and per unit ln sigma, with
Monte-Carlo standard errors: the score Fokker–Planck residual E|r_FP|^2 at x_t = x0 + sigma n, the
consistent-diffusion residual |E[D(x_s)|x_t] - D(x_t)|^2 / h^2 over reverse paths from sigma to
sigma e^{-h} (h = 0.25; 256 starts x 8 paths of 16 steps), and Lai et al.'s relation: the consistency
residual against the FP residual integrated along the same paths (h = 0.5, 16 steps) and the residual
of their difference.
Denoisers: the exact mixture denoiser, two perturbations that keep the score conservative (0.9 D;
D at 1.3 sigma), and small MLPs (width 64, depth 2) trained for ``--steps`` steps on ``oracle-ring``
with ``denoising``, ``denoising+consistency`` and ``denoising+fokker-planck`` (weight 1), two seeds
each (the spread is half the difference between the seeds); their fit is the gap
E|D - D_exact|^2 / d to the exact posterior mean.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from diffusionlens.data import oracle_for
from diffusionlens.distill.regularisers import consistency_fp_relation, consistency_residual, fokker_planck_residual
from diffusionlens.report.figures import regularisers_figure
from diffusionlens.training import TrainConfig, load_denoiser, train

from ._write import write_results

GM = oracle_for("oracle-ring")
LEVELS = [0.05, 0.2, 0.5, 1.0]
NET = {"kind": "mlp", "data_shape": [2], "width": 64, "depth": 2, "emb_dim": 32}
OBJECTIVES = ("denoising", "denoising+consistency", "denoising+fokker-planck")


def _data(dtype):
    return lambda n, g: GM.sample(n, g, dtype=dtype)


def residuals(den, dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    fp = fokker_planck_residual(den, _data(dtype), LEVELS, n=1024, generator=g)
    c = consistency_residual(den, _data(dtype), LEVELS, n=256, paths=8, steps=16, generator=g)
    x = GM.sample(2048, g, dtype=dtype)
    gap = []
    for s in LEVELS:
        xt = x + s * torch.randn(x.shape, generator=g, dtype=dtype)
        with torch.no_grad():
            gap.append(float(((den(xt, torch.full((len(x),), s, dtype=dtype)) - GM(xt.double(), s).to(dtype)) ** 2)
                             .mean()))
    return {"fp": fp, "c": c, "gap": gap}


def relation(den, dtype) -> dict:
    return consistency_fp_relation(den, _data(dtype), [0.2, 0.5, 1.0], span=0.5, steps=16, n=64, paths=16,
                                   generator=torch.Generator().manual_seed(1))


def trained(objective: str, seed: int, steps: int, root: Path):
    cfg = TrainConfig(dataset="oracle-ring", n_train=4096, batch_size=128, steps=steps, net=NET, objective=objective,
                      warmup_steps=20, ckpt_every=0, log_every=100, seed=seed)
    t0 = time.process_time()
    train(cfg, root / f"{objective}-{seed}", progress=False)
    cpu = time.process_time() - t0
    den, _ = load_denoiser(root / f"{objective}-{seed}")
    return den, cpu


def _pm(v, e) -> str:
    return f"{float(v):.3g} ± {float(e):.1g}"


def _row(name, res) -> list[str]:
    fp, c = res["fp"], res["c"]
    return [f"| {name} | FP | " + " | ".join(_pm(v, e) for v, e in zip(fp["value"], fp["stderr"])) + " |",
            f"| {name} | consistency | " + " | ".join(_pm(v, e) for v, e in zip(c["value"], c["stderr"])) + " |"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="benchmarks/results/regularisers.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.time()
    refs = {"exact": GM, "0.9 D (scaled)": lambda x, s: 0.9 * GM(x, s),
            "D at 1.3σ (shifted)": lambda x, s: GM(x, 1.3 * s)}
    ref_res = {k: residuals(d, torch.float64) for k, d in refs.items()}
    rel = {k: relation(d, torch.float64) for k, d in refs.items()}
    runs: dict[str, list] = {o: [] for o in OBJECTIVES}
    with tempfile.TemporaryDirectory(prefix="dl-reg-") as tmp:
        for seed in args.seeds:
            for obj in OBJECTIVES:
                den, cpu = trained(obj, seed, args.steps, Path(tmp))
                runs[obj].append((residuals(den, torch.float32), cpu))
                if seed == args.seeds[0]:
                    rel[f"trained: {obj}"] = relation(den, torch.float32)
                print(f"{obj} seed {seed}: {cpu:.0f} CPU s", flush=True)
    fig = Path(args.out).with_suffix(".png")
    regularisers_figure({k: rel[k] for k in ("exact", "D at 1.3σ (shifted)", "trained: denoising",
                                             "trained: denoising+fokker-planck")}, fig)
    head = " | ".join(f"σ={s:g}" for s in LEVELS)
    lines = ["# Consistency regularisers on the oracle ring", "",
             f"Command: `.venv/bin/python -m benchmarks.regularisers --steps {args.steps} --seeds "
             f"{' '.join(map(str, args.seeds))}`. Machine: {platform.machine()}, one thread (shared, busy); "
             f"torch {torch.__version__}; wall time {(time.time() - t_start) / 60:.1f} min. Method: "
             "`benchmarks/regularisers.py`. Figure: `regularisers.png` (exact, shifted, and the seed-0 models).", "",
             "## Residuals of exact and perturbed denoisers (mean ± standard error; per dimension, per unit ln σ)", "",
             f"| denoiser | residual | {head} |", "|---|---|" + "---:|" * len(LEVELS)]
    for k, r in ref_res.items():
        lines += _row(k, r)
    lines += ["", "## The relation (Lai et al. 2023): consistency vs the FP residual integrated along the same paths",
              "", "|E ΔD|², |E I|² and |E (ΔD − I)|² per dimension / h², h = 0.5, 16 Euler–Maruyama steps, "
              "64 starts × 16 paths. Equal for a conservative score (exact and perturbed oracles); a trained "
              "MLP's score is not conservative, and the gap between its two columns measures that.", "",
              "| denoiser | σ | consistency | FP integrated | difference |", "|---|---:|---:|---:|---:|"]
    for k, r in rel.items():
        for i, s in enumerate(r["consistency"]["sigma"].tolist()):
            cells = [_pm(r[q]["value"][i], r[q]["stderr"][i]) for q in ("consistency", "fokker-planck", "difference")]
            lines.append(f"| {k} | {s:g} | " + " | ".join(cells) + " |")
    lines += ["", f"## Trained models ({args.steps} steps, batch 128; mean over seeds ± half their difference)", "",
              "Sum over σ ∈ {" + ", ".join(f"{s:g}" for s in LEVELS) + "} of each residual, the gap to the exact "
              "posterior mean E|D − D_exact|²/d (summed likewise), and the training CPU time.", "",
              "| objective | FP residual | consistency residual | gap to exact D | CPU s |",
              "|---|---:|---:|---:|---:|"]
    for obj, rs in runs.items():
        cols = []
        for get in (lambda r: float(r["fp"]["value"].sum()), lambda r: float(r["c"]["value"].sum()),
                    lambda r: sum(r["gap"])):
            v = [get(r) for r, _ in rs]
            cols.append(f"{sum(v) / len(v):.3g} ± {(max(v) - min(v)) / 2:.1g}")
        cpu = [c for _, c in rs]
        cols.append(f"{sum(cpu) / len(cpu):.0f}")
        lines.append(f"| {obj} | " + " | ".join(cols) + " |")
    write_results(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
