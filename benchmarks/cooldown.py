"""Learning-rate cool-down on the digits: the default recipe with and without it, at equal step budgets.

    .venv/bin/python -m benchmarks.cooldown                   # 1,235 and 1,500 steps, ~15 min on 2 cores

Each (steps, cooldown) pair is one training run of ``TrainConfig(dataset="digits")`` with a step budget
(deterministic: the same updates and data order in both arms up to the cool-down), in its own process
with one thread; the EMA weights are scored by the Fréchet distance in the digits classifier's features
against the test split, at NFE 16 with the default sampler, from two sets of initial noise. The step
counts are those that the main command's 4 wall-minutes gave in two runs on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusionlens.evaluate import evaluate_samples
from diffusionlens.report.pipeline import generate
from diffusionlens.samplers import DEFAULT_SAMPLER
from diffusionlens.training import TrainConfig, load_denoiser, train

from ._jobs import Job, run_jobs
from ._write import write_results


def run_one(steps: int, cooldown: float) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="dl-cooldown-") as tmp:
        train(TrainConfig(dataset="digits", steps=steps, cooldown=cooldown, ckpt_every=0, log_every=100),
              Path(tmp) / "r", progress=False)
        den, cfg = load_denoiser(Path(tmp) / "r")
        fds = []
        for seed in (0, 1):
            x, _, _ = generate(den, cfg, 1497, sampler=DEFAULT_SAMPLER, steps=16, seed=seed)
            fds.append(evaluate_samples(x, "digits", seed=0)["fd"])
    return {"steps": steps, "cooldown": cooldown, "fd": fds}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[1235, 1500])
    ap.add_argument("--cooldown", type=float, nargs="+", default=[0.0, 0.4])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/cooldown.md")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), float(args.one[1]))))
        return
    t0 = time.time()
    results = []

    def done(job, result):
        results.append(result)
        print(result, flush=True)

    run_jobs([Job([sys.executable, "-m", "benchmarks.cooldown", "--one", str(s), str(c)])
              for s in args.steps for c in args.cooldown], args.jobs, done)
    results.sort(key=lambda r: (r["steps"], r["cooldown"]))
    L = ["# Learning-rate cool-down on the digits", "",
         f"Command: `.venv/bin/python -m benchmarks.cooldown`. Machine: {platform.machine()}, {args.jobs} parallel "
         f"single-thread processes; torch {torch.__version__}; wall time {(time.time() - t0) / 60:.1f} min. "
         "Method: `benchmarks/cooldown.py`.", "",
         f"Fréchet distance (classifier features) to the test split, {DEFAULT_SAMPLER} at NFE 16, 1,497 samples from "
         "two noise seeds (seed 0 / seed 1); floor (train vs test split) 1.29. Lower is better.", "",
         "| steps | cooldown (fraction of the budget) | FD seed 0 | FD seed 1 | mean |", "|---:|---:|---:|---:|---:|"]
    for r in results:
        a, b = r["fd"]
        L.append(f"| {r['steps']} | {r['cooldown']:g} | {a:.3f} | {b:.3f} | {(a + b) / 2:.3f} |")
    L.append("")
    write_results(args.out, "\n".join(L))
    print("\n".join(L))


if __name__ == "__main__":
    main()
