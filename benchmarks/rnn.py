"""The RNN perspective on the digits: self-conditioning, two experts, and fine-tuning through unrolled steps.

    .venv/bin/python -m benchmarks.rnn --seeds 0 1 --minutes 1.5 --extra 0.5 --jobs 6   # ~20 CPU-minutes
    .venv/bin/python -m benchmarks.rnn --toy --seeds 0 1 2                              # ~4 CPU-minutes

Every training run is one single-thread process with a budget of CPU minutes of its own process
(``clock="process"``, so that other jobs on a shared machine do not change the budget), the default
digits recipe otherwise; one run per seed and arm. Scores: Fréchet distance (FD) in the digits
classifier's features to the test split, 1,000 samples from noise seed 0, EMA weights.

* self-conditioning: the default UNet with and without (``rnn.self_conditioned``), equal CPU minutes,
  at NFE 8 and 16 of the default sampler;
* experts: one default UNet (the plain runs above) against two experts of about half its parameters
  each (``channels=22``), split at the median of the training density, each trained for half the
  minutes; FD and the test denoising error per noise level (where the gain or loss comes from);
* training through steps: from each plain run, (a) fine-tuning through k = 4 unrolled dpmpp_2m steps
  against an 8-step Heun solve (15 NFE) of the run itself, for ``--extra`` CPU minutes; (b) the same extra
  minutes of ordinary training (the run resumed with a longer budget); FD at NFE 4 and 8 of dpmpp_2m;
* ``--toy``: the same comparison on the exact ring mixture with the default MLP, scored by SW2 and the
  exact log-likelihood of the samples (seconds of training, so three seeds fit on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusionlens import run as runs
from diffusionlens.evaluate import evaluate_samples
from diffusionlens.samplers import DEFAULT_SAMPLER, SAMPLERS
from diffusionlens.training import TrainConfig, resume_config, train

from ._jobs import Job, run_jobs
from ._write import write_results

N_SAMPLES = 1000
HALF_NET = {"kind": "unet", "in_channels": 1, "image_size": 8, "channels": 22}
LEVELS = (0.02, 0.1, 0.3, 1.0, 3.0, 10.0)


def _cfg(seed: int, minutes: float) -> TrainConfig:
    return TrainConfig(dataset="digits", seed=seed, steps=None, minutes=minutes, clock="process", ckpt_every=0,
                       log_every=100)


def _fd(path, sampler: str, nfes) -> dict:
    r = runs.open_run(path, plan=False)
    out = {}
    for nfe in nfes:
        steps = SAMPLERS[sampler].spec.steps_for_nfe(nfe)
        x, _, _ = runs.generate(r.denoiser, r.config, N_SAMPLES, sampler=sampler, steps=steps, seed=0)
        out[str(nfe)] = evaluate_samples(x, "digits", seed=0)["fd"]
    return out


def _level_errors(path) -> list[float]:
    """Test-split denoising error E||D(x0 + sigma n, sigma) - x0||^2 / d at each of LEVELS."""
    from diffusionlens.data import load_dataset

    r = runs.open_run(path, plan=False)
    x0 = load_dataset("digits", "test").x
    g = torch.Generator().manual_seed(0)
    errs = []
    with torch.no_grad():
        for s in LEVELS:
            n = torch.randn(x0.shape, generator=g)
            errs.append(float((r.denoiser(x0 + s * n, s) - x0).pow(2).mean()))
    return errs


def _steps(path) -> int:
    return sum(json.loads(p.read_text())["step"] for p in Path(path).glob("**/result.json"))


def job(kind: str, seed: int, minutes: float, extra: float, work: Path) -> dict:
    torch.set_num_threads(1)
    from diffusionlens.run import rnn

    if kind in ("plain", "selfcond"):
        path = work / f"{kind}-{seed}"
        shutil.rmtree(path, ignore_errors=True)
        cfg = _cfg(seed, minutes)
        train(rnn.self_conditioned(cfg) if kind == "selfcond" else cfg, path, progress=False)
        out = {"fd": _fd(path, DEFAULT_SAMPLER, (8, 16)), "levels": _level_errors(path)}
    elif kind == "experts":
        path = work / f"experts-{seed}"
        shutil.rmtree(path, ignore_errors=True)
        rnn.train_experts(_cfg(seed, minutes).replace(net=HALF_NET), path, experts=2, progress=False)
        out = {"fd": _fd(path, DEFAULT_SAMPLER, (8, 16)), "levels": _level_errors(path),
               "boundary": runs.open_run(path, plan=False).denoiser.boundaries}
    elif kind == "unrolled":
        path = work / f"unrolled-{seed}"
        shutil.rmtree(path, ignore_errors=True)
        rnn.finetune(runs.open_run(work / f"plain-{seed}", plan=False), path, k=4, sampler="dpmpp_2m",
                     target="solve", steps=None, minutes=extra, batch_size=32, lr=2e-4, solve_steps=8,
                     seed=seed, progress=False)
        out = {"fd": _fd(path, "dpmpp_2m", (4, 8)), "finetune": json.loads((path / "finetune.json").read_text())}
        out["base_fd"] = _fd(work / f"plain-{seed}", "dpmpp_2m", (4, 8))
    elif kind == "longer":
        path = work / f"longer-{seed}"
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(work / f"plain-{seed}", path)
        train(resume_config(path, minutes=minutes + extra), path, resume=True, progress=False)
        out = {"fd": _fd(path, "dpmpp_2m", (4, 8))}
    elif kind == "toy":
        return _toy(seed, work)
    else:
        raise ValueError(kind)
    out.update(kind=kind, seed=seed, steps=_steps(path))
    return out


TOY = "oracle-ring"
TOY_MINUTES, TOY_EXTRA = 0.3, 0.15


def _toy_scores(path, nfes=(4, 8)) -> dict:
    r = runs.open_run(path, plan=False)
    out = {}
    for nfe in nfes:
        x, _, _ = runs.generate(r.denoiser, r.config, 2000, sampler="dpmpp_2m", steps=nfe, seed=0)
        ev = evaluate_samples(x, TOY, seed=0, repeats=2)
        out[str(nfe)] = {"sw2": ev["sw2"], "loglik": ev["true_loglik"]}  # loglik: {"mean", "stderr"}
    return out


def _toy(seed: int, work: Path) -> dict:
    """Training through steps on the exact ring mixture: the base run, k = 4 unrolled dpmpp_2m steps against a
    32-step Heun solve for TOY_EXTRA CPU minutes, and the same extra minutes of ordinary training."""
    from diffusionlens.run import rnn

    base, ft, longer = (work / f"toy-{n}-{seed}" for n in ("base", "unrolled", "longer"))
    for p in (base, ft, longer):
        shutil.rmtree(p, ignore_errors=True)
    train(TrainConfig(dataset=TOY, seed=seed, steps=None, minutes=TOY_MINUTES, clock="process", ckpt_every=0,
                      log_every=100), base, progress=False)
    shutil.copytree(base, longer)
    train(resume_config(longer, minutes=TOY_MINUTES + TOY_EXTRA), longer, resume=True, progress=False)
    info = rnn.finetune(runs.open_run(base, plan=False), ft, k=4, sampler="dpmpp_2m", target="solve", steps=None,
                        minutes=TOY_EXTRA, batch_size=128, lr=2e-4, solve_steps=32, seed=seed, progress=False)
    return {"kind": "toy", "seed": seed, "base": _toy_scores(base), "unrolled": _toy_scores(ft),
            "longer": _toy_scores(longer), "finetune_steps": info["steps"], "longer_steps": _steps(longer)}


def _toy_table(results) -> list[str]:
    rs = [r for r in results if r["kind"] == "toy"]
    if not rs:
        return []
    L = [f"## Training through steps on the exact ring mixture ({TOY}, tiny budgets)", "",
         f"Default MLP, {TOY_MINUTES:g} CPU min of training; then {TOY_EXTRA:g} CPU min of fine-tuning through 4 "
         "unrolled dpmpp_2m steps against a 32-step Heun solve of the run, or of ordinary training. 2,000 samples "
         "from noise seed 0, dpmpp_2m; SW2 (sliced Wasserstein-2 to the test split, lower is better) and the "
         "exact mean log-likelihood of the samples under the true mixture (higher is better: samples on the "
         f"ring). Mean ± sd over {len(rs)} seeds; fine-tuning made "
         f"{_spread([r['finetune_steps'] for r in rs])} updates, ordinary training reached "
         f"{_spread([r['longer_steps'] for r in rs])} steps in all.", "",
         "| arm | SW2 NFE 4 | SW2 NFE 8 | log-lik NFE 4 | log-lik NFE 8 |", "|---|---:|---:|---:|---:|"]
    for arm, label in (("base", "base run"), ("unrolled", "fine-tuned through 4 steps"),
                       ("longer", "ordinary training")):
        L.append(f"| {label} | " + " | ".join(
            _spread([r[arm][n]["sw2"] if m == "sw2" else r[arm][n][m]["mean"] for r in rs], 4 if m == "sw2" else 2)
            for m in ("sw2", "loglik") for n in ("4", "8")) + " |")
    return L + [""]


def _pool(jobs: list[tuple], args, results: list, name: str = "results.json") -> None:
    def done(job, result):
        results.append(result)
        print(json.dumps(result), flush=True)
        (args.work / name).write_text(json.dumps(results, indent=1))

    run_jobs([Job([sys.executable, "-m", "benchmarks.rnn", "--one", kind, str(seed), "--minutes", str(args.minutes),
                   "--extra", str(args.extra), "--work", str(args.work)]) for kind, seed in jobs],
             args.jobs, done, keep_going=True)


def _spread(v: list[float], digits: int = 2) -> str:
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def _table(results, kinds, key, cols, title) -> list[str]:
    if not any(r["kind"] == kind for kind, _, _ in kinds for r in results):
        return [title, "", "(not run)", ""]
    L = [title, "", "| arm | " + " | ".join(f"NFE {c}" for c in cols) + " | training steps (sum) | seeds |",
         "|---|" + "---:|" * (len(cols) + 2)]
    for kind, label, field in kinds:
        rs = [r for r in results if r["kind"] == kind]
        L.append(f"| {label} | " + " | ".join(_spread([r[field][c] for r in rs]) for c in cols)
                 + f" | {_spread([r['steps'] for r in rs]) if field == 'fd' else '-'} | {len(rs)} |")
    return L + [""]


def report(results, args, wall: float) -> str:
    L = ["# The RNN perspective on the digits: self-conditioning, experts, training through steps", "",
         f"Command: `.venv/bin/python -m benchmarks.rnn --seeds {' '.join(map(str, args.seeds))} --minutes "
         f"{args.minutes:g} --extra {args.extra:g}`. Machine: {platform.machine()}, {args.jobs} single-thread "
         f"processes (2 cores shared with other jobs); torch {torch.__version__}; wall time {wall / 60:.1f} min. "
         "Method: `benchmarks/rnn.py`. Budgets are CPU minutes of each run's own process.", "",
         f"FD: Fréchet distance in the digits classifier's features to the test split, {N_SAMPLES} samples, "
         "mean ± standard deviation over the seeds (one training run per seed). Lower is better; the floor "
         "(train vs test split) is 1.29.", ""]
    L += _table(results, [("plain", "default UNet", "fd"), ("selfcond", "self-conditioned UNet", "fd")], "fd",
                ["8", "16"], f"## Self-conditioning at equal CPU minutes ({args.minutes:g} min, {DEFAULT_SAMPLER})")
    ex = [r for r in results if r["kind"] == "experts"]
    L += _table(results, [("plain", "one UNet (1.17M parameters)", "fd"),
                          ("experts", "two experts, channels=22 (2 x 0.55M)", "fd")], "fd", ["8", "16"],
                f"## Two experts against one model, equal parameters and CPU minutes ({args.minutes:g} min in all)")
    if ex:
        L += [f"Boundary (median of the training density): sigma = {ex[0]['boundary'][0]:.3f}.", "",
              "Test denoising error E||D(x0 + sigma n) - x0||^2 / d per noise level (mean over seeds):", "",
              "| arm | " + " | ".join(f"σ={s:g}" for s in LEVELS) + " |", "|---|" + "---:|" * len(LEVELS)]
        for kind in ("plain", "experts", "selfcond"):
            rs = [r for r in results if r["kind"] == kind]
            if rs:
                L.append(f"| {kind} | " + " | ".join(
                    f"{statistics.mean(r['levels'][i] for r in rs):.4f}" for i in range(len(LEVELS))) + " |")
        L.append("")
    L += _table(results, [("unrolled", "base run (before)", "base_fd"),
                          ("unrolled", f"fine-tuned through 4 dpmpp_2m steps (+{args.extra:g} min)", "fd"),
                          ("longer", f"ordinary training (+{args.extra:g} min)", "fd")], "fd", ["4", "8"],
                "## Training through sampling steps against the same extra minutes of training (dpmpp_2m)")
    L += _toy_table(results)
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--extra", type=float, default=0.5)
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dl-bench-rnn")
    ap.add_argument("--out", default="benchmarks/results/rnn.md")
    ap.add_argument("--only-report", action="store_true", help="rewrite the table from WORK/results*.json")
    ap.add_argument("--toy", action="store_true", help="only the ring-mixture runs (WORK/results_toy.json)")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(job(args.one[0], int(args.one[1]), args.minutes, args.extra, args.work)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results: list = []
    if args.only_report:
        for name in ("results.json", "results_toy.json"):
            if (args.work / name).is_file():
                results += json.loads((args.work / name).read_text())
    elif args.toy:
        _pool([("toy", s) for s in args.seeds], args, results, "results_toy.json")
        return
    else:
        first = [(k, s) for s in args.seeds for k in ("plain", "selfcond", "experts")]
        _pool(first, args, results)
        write_results(args.out, report(results, args, time.time() - t0))
        _pool([(k, s) for s in args.seeds for k in ("unrolled", "longer")], args, results)
    write_results(args.out, report(results, args, time.time() - t0))


if __name__ == "__main__":
    main()
