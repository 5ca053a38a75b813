"""The main job's figures, as the README states them: time per phase, Fréchet distance against its floor,
quality against NFE and bits/dim, over the seeds run, from the files the main job writes.

Run the main job first (from a fresh clone, on an otherwise idle machine, for the times to mean anything):

    /usr/bin/time -f "%e s" bash scripts/main.sh
    SKIP_SETUP=1 bash scripts/main.sh --seed 1 --name main-s1

then, from the repository root:

    .venv/bin/python -m benchmarks.main_job --runs runs/main runs/main-s1 [--total-seconds 585 472]

``--total-seconds``: the wall times the shell measured for each command (set-up included for the first),
which the run directories do not hold. Writes benchmarks/results/main.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ._write import write_results


def load(run: Path) -> dict:
    ev = json.loads((run / "evaluation.json").read_text())
    res = json.loads((run / "result.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    return {"run": run.name, "seed": cfg["seed"], "steps": res["step"], "train_s": res["elapsed_s"],
            "images_per_s": res["step"] * cfg["batch_size"] / res["elapsed_s"], "ev": ev}  # as the summary says


def spread(values: list[float]) -> str:
    """mean ± half the range over the seeds (two seeds: the distance of each from the mean)."""
    m = statistics.fmean(values)
    return f"{m:.3g} ± {(max(values) - min(values)) / 2:.2g}" if len(values) > 1 else f"{m:.3g}"


def report(runs: list[dict], totals: list[float] | None, cmd: str) -> str:
    L = ["# The main job", "", f"Command: `{cmd}`, after the main job's runs (see the module docstring of "
         "`benchmarks/main_job.py`). Each seed trains the default digits model for its step budget, tunes the "
         "sampling plan, evaluates and writes the report. The first command includes the set-up of `.venv` "
         "(`scripts/setup.sh` in a fresh clone); the others reuse it (`SKIP_SETUP=1`).", "",
         "| run | seed | steps | training (min) | training examples/s | everything else (min) | "
         "whole command (min) |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs):
        sec = r["ev"].get("seconds", {})
        evaluation = sum(sec.values())
        total = totals[i] / 60 if totals else None
        rest = f"{total - r['train_s'] / 60:.2f}" if total else f"evaluation {evaluation / 60:.2f}"
        L.append(f"| {r['run']} | {r['seed']} | {r['steps']} | {r['train_s'] / 60:.2f} | {r['images_per_s']:.0f} | "
                 f"{rest} | {f'{total:.2f}' if total else '—'} |")
    ev = [r["ev"] for r in runs]
    m = [e["metrics"] for e in ev]
    L += ["", "Headline: the run's sampler at its NFE on all samples, Fréchet distance in the digits classifier's "
          "features to the test split; floor = the same distance from an equally large subset of the train split.",
          "", "| quantity | " + " | ".join(f"seed {r['seed']}" for r in runs) + " | mean ± half range |",
          "|---|" + "---|" * (len(runs) + 1)]

    def row(name, values, fmt="{:.3f}"):
        L.append(f"| {name} | " + " | ".join(fmt.format(v) for v in values) + f" | {spread(values)} |")

    row(f"FD, {ev[0]['sampler']} at NFE {ev[0]['nfe']:g}, {ev[0]['n_samples']} samples", [x["fd"] for x in m])
    row("floor (train vs test)", [x["fd_floor"] for x in m])
    row("FD / floor", [x["fd"] / x["fd_floor"] for x in m])
    if all("bits_per_dim" in e for e in ev):
        row(f"test bits/dim ({ev[0]['bits_per_dim']['n']} images)", [e["bits_per_dim"]["mean"] for e in ev])
    k = ev[0].get("quality_vs_nfe_samples")
    floors = [e.get("quality_vs_nfe_floor") for e in ev]
    L += ["", f"Quality against NFE ({k} samples per point, FD; floor at that size "
          f"{spread([f for f in floors if f is not None])}):", "",
          "| entry | NFE | " + " | ".join(f"seed {r['seed']}" for r in runs) + " | mean ± half range |",
          "|---|---|" + "---|" * (len(runs) + 1)]
    for entry, curve in ev[0]["quality_vs_nfe"].items():
        for j, (nfe, _) in enumerate(curve):
            vals = [e["quality_vs_nfe"][entry][j][1] for e in ev]
            L.append(f"| {entry} | {nfe:g} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {spread(vals)} |")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", type=Path, default=[Path("runs/main"), Path("runs/main-s1")])
    ap.add_argument("--total-seconds", nargs="+", type=float, help="wall seconds of each run's command")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/main.md"))
    args = ap.parse_args()
    if args.total_seconds is not None and len(args.total_seconds) != len(args.runs):
        ap.error(f"--total-seconds needs one value per run ({len(args.runs)}), got {len(args.total_seconds)}")
    runs = [load(r) for r in args.runs]
    cmd = ".venv/bin/python -m benchmarks.main_job --runs " + " ".join(map(str, args.runs))
    if args.total_seconds:
        cmd += " --total-seconds " + " ".join(f"{t:g}" for t in args.total_seconds)
    text = report(runs, args.total_seconds, cmd)
    write_results(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
