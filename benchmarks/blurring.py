"""Blurring diffusion against Gaussian diffusion on the digits, at equal CPU minutes.

    python -m benchmarks.blurring                                 # 1 CPU-minute per run, seeds 0 1 2 (~10 CPU-min)
    python -m benchmarks.blurring --minutes 0.2 --seeds 0 --samples 200 --out $WORK/b.md     # smoke test
    # runs in parallel processes (CPU budgets are per process), then one table:
    for s in 0 1 2; do for o in denoising blurring; do
        python -m benchmarks.blurring --seeds $s --objectives $o --rows $WORK/b$s$o.json & done; done; wait
    python -m benchmarks.blurring --merge $WORK/b*.json

Each seed trains two runs with the library's default recipe (``TrainConfig(dataset="digits")``:
EDM process, preconditioning, log-normal noise levels, EDM weighting, the default UNet), one with
``objective="denoising"`` and one with ``objective="blurring"`` (the same loss on
x_hat = B(sigma) x0 + sigma n, :class:`diffusionlens.frequency.Blur` defaults), each for the same
budget of **CPU time of this process** (``clock="process"``: the machine's cores are shared).

Scoring: ``--samples`` images from the EMA weights, from the same initial noise for both, in the
run's sigma range; deterministic at NFE ``--nfe`` (Gaussian: the default sampler; blurring: its DDIM
step) and stochastic at twice that (Gaussian: DDPM ancestral; blurring: the exact-posterior ancestral
step of Hoogeboom & Salimans), all on the Karras grid, clamped to [-1, 1], scored by the Fréchet
distance in the digits classifier's features against the test split
(:func:`diffusionlens.evaluate.image_frechet`). The floor is as many train images against the test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusionlens.data import load_dataset
from diffusionlens.evaluate import image_frechet
from diffusionlens.features import load_classifier
from diffusionlens.frequency import Blur, blurring_sample
from diffusionlens.processes import karras_grid
from diffusionlens.run import sampling_range
from diffusionlens.samplers import DEFAULT_SAMPLER, randn, sample
from diffusionlens.training import TrainConfig, load_denoiser, train

from ._write import write_results


def _samples(den, cfg, objective: str, n: int, nfe: int, seed: int) -> dict[str, torch.Tensor]:
    smin, smax = sampling_range(cfg)
    g = torch.Generator().manual_seed(10_000 + seed)
    noise = randn((n, 1, 8, 8), g)
    seeds = torch.randint(0, 2**62, (n,), generator=g)
    with torch.no_grad():
        if objective == "blurring":
            det = blurring_sample(den, noise, karras_grid(nfe, smin, smax), Blur())
            sto = blurring_sample(den, noise, karras_grid(2 * nfe, smin, smax), Blur(), stochastic=True,
                                  generator=seeds)
            return {f"ddim-{nfe}": det, f"ancestral-{2 * nfe}": sto}
        det = sample(den, noise, sampler=DEFAULT_SAMPLER, nfe=nfe, sigma_min=smin, sigma_max=smax)
        sto = sample(den, noise, sampler="ddpm", steps=2 * nfe, sigma_min=smin, sigma_max=smax, grid="karras",
                     generator=seeds)
        return {f"{DEFAULT_SAMPLER}-{nfe}": det, f"ddpm-{2 * nfe}": sto}


def run_one(objective: str, seed: int, minutes: float, n: int, nfe: int, clf, test, train_x) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(dataset="digits", seed=seed, objective=objective, steps=None, minutes=minutes,
                          clock="process")
        c0 = time.process_time()
        res = train(cfg, Path(tmp) / objective, progress=False)
        cpu = time.process_time() - c0
        den, rcfg = load_denoiser(Path(tmp) / objective)
    rows = []
    for name, x in _samples(den, rcfg, objective, n, nfe, seed).items():
        fd = image_frechet(x.clamp(-1, 1), test, classifier=clf, floor_samples=train_x)
        rows.append({"objective": objective, "seed": seed, "sampler": name, "steps": res.step, "cpu_s": cpu,
                     "fd": fd["fd"], "floor": fd["fd_floor"]})
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| objective | sampler | seed | training steps | training CPU-s | FD | floor |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['objective']} | {r['sampler']} | {r['seed']} | {r['steps']} | {r['cpu_s']:.0f} | "
                   f"{r['fd']:.2f} | {r['floor']:.2f} |")
    out += ["", "| objective | sampler | seeds | FD mean | FD std | min | max |", "|---|---|---:|---:|---:|---:|---:|"]
    for key in dict.fromkeys((r["objective"], r["sampler"]) for r in rows):
        fds = [r["fd"] for r in rows if (r["objective"], r["sampler"]) == key]
        sd = statistics.stdev(fds) if len(fds) > 1 else float("nan")
        out.append(f"| {key[0]} | {key[1]} | {len(fds)} | {statistics.mean(fds):.2f} | {sd:.2f} | {min(fds):.2f} | "
                   f"{max(fds):.2f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=1.0, help="CPU-minutes of training per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--objectives", nargs="+", default=["denoising", "blurring"], choices=["denoising", "blurring"])
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--rows", help="write the rows as JSON here instead of the table (one part of a parallel run)")
    p.add_argument("--merge", nargs="+", help="JSON row files of parallel parts: write their table")
    p.add_argument("--nfe", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/blurring.md")
    a = p.parse_args(argv)
    if a.merge:
        parts = [json.loads(Path(f).read_text()) for f in a.merge]
        rows = sorted((r for part in parts for r in part["rows"]), key=lambda r: (r["objective"] != "denoising",
                                                                                  r["sampler"], r["seed"]))
        cmd = " ".join(part["command"] for part in parts)
        write_results(a.out, f"# Blurring diffusion vs Gaussian diffusion (digits, equal CPU minutes)\n\n"
                             f"Commands (parallel parts, then `--merge`): {cmd}\n\n{parts[0]['setup']}\n\n"
                             f"{table(rows)}\n")
        print(Path(a.out).read_text())
        return
    torch.set_num_threads(a.threads)
    clf = load_classifier("digits")
    test = load_dataset("digits", "test").x
    train_x = load_dataset("digits", "train").x[: a.samples]
    t0, c0 = time.perf_counter(), time.process_time()
    rows = []
    for seed in a.seeds:
        for objective in a.objectives:
            rows += run_one(objective, seed, a.minutes, a.samples, a.nfe, clf, test, train_x)
    command = f"`python -m benchmarks.blurring {' '.join(sys.argv[1:] if argv is None else argv)}`"
    setup = (f"{a.minutes:g} CPU-minutes of training per run, {a.samples} samples (floor: as many train images), "
             f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, {platform.machine()}; "
             f"{time.process_time() - c0:.0f} CPU-s, {time.perf_counter() - t0:.0f} s wall per part.")
    if a.rows:
        write_results(a.rows, json.dumps({"command": command, "setup": setup, "rows": rows}))
        return
    text = (f"# Blurring diffusion vs Gaussian diffusion (digits, equal CPU minutes)\n\nCommand: {command}\n\n"
            f"{setup}\n\n{table(rows)}\n")
    write_results(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
