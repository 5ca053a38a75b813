"""The ``diffusionlens`` command line: train, sample, evaluate, likelihood, encode, report, main.

Thin by design: it parses arguments, maps strings to the library's objects here at the edge
(data set and process names through :class:`~diffusionlens.training.TrainConfig`, sampler names
through :data:`~diffusionlens.samplers.SAMPLERS`), calls the library and prints results. Every
command works on a *run directory* (``runs/<name>`` by default) that ``train`` creates::

    runs/<name>/config.json, checkpoints/, metrics.jsonl, result.json     (train)
    runs/<name>/samples-<sampler>-<steps>.safetensors + .png               (sample)
    runs/<name>/evaluation.json, samples.safetensors                       (evaluate)
    runs/<name>/likelihood.json                                            (likelihood)
    runs/<name>/latents.safetensors, encode.json                           (encode)
    runs/<name>/report.html + fig_*.png                                    (report)

Bad input (unknown name, out-of-range value, missing run, corrupt checkpoint) ends with exit code 2
and one line on stderr naming the bad value; a failure while computing (a NaN in training) with
exit code 1. Files are written atomically, so nothing half-written is left behind. Set
``DIFFUSIONLENS_DEBUG=1`` to see the full traceback instead.

Distributed training: ``torchrun --standalone --nproc_per_node=2 -m diffusionlens.cli train ...``
(see :mod:`diffusionlens.training`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import time
from pathlib import Path

__all__ = ["main", "build_parser"]

RUNS = Path("runs")
MAIN_MINUTES = 4.0  # the main job's default training budget (CPU); the whole job stays under ~8 minutes


class UsageError(ValueError):
    """Bad command-line input (reported as one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line naming the bad value (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _fmt(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=100)


# ----------------------------------------------------------------------------- argument helpers


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 4,8,16, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return vals


def _sampler_list(text: str) -> tuple[str, ...]:
    from .report.pipeline import sweep_entry

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    for n in names:
        try:
            sweep_entry(n)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return names


def _device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is checked by torch."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but no CUDA GPU is available")
    return name


def _run_dir(text: str, *, must_exist: bool = True) -> Path:
    """A run given as a path, or as a name under runs/."""
    p = Path(text)
    if p.is_dir() or not must_exist:
        return p
    if not p.is_absolute() and (RUNS / text).is_dir():
        return RUNS / text
    raise UsageError(f"run directory {text!r} not found (train one with `diffusionlens train --name ...`)")


def _need_checkpoint(run: Path) -> None:
    from .training.checkpoint import latest_checkpoint

    if latest_checkpoint(run) is None:
        raise UsageError(f"{str(run)!r} holds no checkpoint: it is not a trained run")


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


def _atomic_json(path: Path, obj) -> None:
    from .training.checkpoint import atomic_write

    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def _atomic_safetensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def _load(run: Path, device: str):
    from .training import load_denoiser

    _need_checkpoint(run)
    return load_denoiser(run, device=device)


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ----------------------------------------------------------------------------- train


TRAIN_FLAGS = {  # CLI flag -> TrainConfig field, for flags that override the config file
    "dataset": "dataset", "seed": "seed", "process": "process", "param": "param", "density": "density",
    "weighting": "weighting", "batch_size": "batch_size", "lr": "lr", "warmup_steps": "warmup_steps",
    "cooldown": "cooldown", "clock": "clock", "ema": "ema", "label_dropout": "label_dropout",
    "log_every": "log_every", "ckpt_every": "ckpt_every",
    "n_train": "n_train",
}


def _train_config(args):
    from .training import TrainConfig

    base: dict = {}
    if args.config is not None:
        path = Path(args.config)
        if not path.is_file():
            raise UsageError(f"config file {str(path)!r} not found")
        try:
            base = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"config file {str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(base, dict):
            raise UsageError(f"config file {str(path)!r} must hold a JSON object of TrainConfig fields")
    for flag, field in TRAIN_FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            base[field] = v
    if args.conditional:
        base["conditional"] = True
    if args.compile:
        base["compile"] = True
    if args.steps is not None or args.minutes is not None:  # an explicit budget replaces the file's
        base["steps"], base["minutes"] = args.steps, args.minutes
    base["device"] = _device(args.device)
    return TrainConfig.from_dict(base)


def _default_name(args, cfg) -> Path:
    if args.run_dir is not None:
        return Path(args.run_dir)
    return RUNS / (args.name or cfg.dataset)


def cmd_train(args) -> int:
    from .training import train

    cfg = _train_config(args)
    run = _default_name(args, cfg)
    if not args.resume and run.is_dir() and any(run.iterdir()):
        raise UsageError(f"{str(run)!r} already holds a run; pass --resume to continue it, or choose another --name")
    res = train(cfg, run, resume=args.resume, progress=_progress(args))
    if _is_main_rank():
        print(f"trained {res.step} steps in {res.elapsed_s / 60:.2f} min ({res.images_per_s:.0f} images/s, "
              f"stopped by {res.stopped_by}); final loss {res.loss:.4g}; {res.num_params:,} parameters")
        print(f"run directory: {run}  (next: diffusionlens sample {run})")
    return 0


# ----------------------------------------------------------------------------- sample


def _check_guidance(args, cfg, run: Path) -> None:
    if args.guidance != 1.0 and not cfg.conditional:
        raise UsageError(f"--guidance {args.guidance:g} needs a class-conditional run; {str(run)!r} is unconditional "
                         f"(train with --conditional)")


def cmd_sample(args) -> int:

    from .data import load_dataset
    from .report import figures
    from .report.pipeline import generate

    run = _run_dir(args.run)
    dev = _device(args.device)
    den, cfg = _load(run, dev)
    _check_guidance(args, cfg, run)
    if args.label is not None:
        if not cfg.conditional:
            raise UsageError(f"--label {args.label} needs a class-conditional run; {str(run)!r} is unconditional")
        if args.label >= 10:
            raise UsageError(f"--label must be a class index in [0, 9], got {args.label}")
    t0 = time.perf_counter()
    x, y, nfe = generate(den, cfg, args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                         guidance=args.guidance, grid=args.grid, label=args.label,
                         analytic_start=args.analytic_start, teleport=args.teleport, progress=_progress(args))
    secs = time.perf_counter() - t0
    stem = args.out or str(run / f"samples-{args.sampler}-{args.steps}")
    stem = stem.removesuffix(".safetensors").removesuffix(".png")
    tensors = {"x": x}
    if y is not None:
        tensors["y"] = y
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    _atomic_safetensors(Path(stem + ".safetensors"), tensors)
    test = load_dataset(cfg.dataset, "test", seed=cfg.seed)
    guided = f", guidance {args.guidance:g}" if cfg.conditional else ""
    figures.sample_figure(x, stem + ".png", reference=test.x, title=f"{args.sampler}, NFE {nfe:g}{guided}")
    print(f"{args.n} samples with {args.sampler} ({args.steps} steps): NFE {nfe:g} per sample, {secs:.1f} s")
    print(f"wrote {stem}.safetensors and {stem}.png")
    return 0


# ----------------------------------------------------------------------------- evaluate


def cmd_evaluate(args) -> int:
    from .report import evaluate_run

    run = _run_dir(args.run)
    dev = _device(args.device)
    _need_checkpoint(run)
    from .training import TrainConfig
    from .training.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run)
    try:
        stored = TrainConfig.from_dict(json.loads(ckpt.read_text())["config"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UsageError(f"checkpoint {ckpt} is not valid JSON (corrupt or truncated)") from None
    _check_guidance(args, stored, run)
    sweep = () if args.no_sweep else args.samplers
    ev = evaluate_run(run, n_samples=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, sweep=sweep,
                      nfes=args.nfe, bpd_n=args.bpd_n, guidance=args.guidance, device=dev, progress=_progress(args))
    print(_summary(ev))
    print(f"wrote {run / 'evaluation.json'}  (next: diffusionlens report {run})")
    return 0


def _summary(ev: dict) -> str:
    m = ev["metrics"]
    lines = [f"samples: {ev['n_samples']} with {ev['sampler']}, NFE {ev['nfe']:g}"]
    if "fd" in m:
        lines.append(f"Fréchet distance (classifier features): {m['fd']:.4g}   floor (train vs test): "
                     f"{m['fd_floor']:.4g}   ratio {m['fd'] / max(m['fd_floor'], 1e-12):.2f}   "
                     f"(classifier test accuracy {100 * m['classifier_test_accuracy']:.1f} %)")
    else:
        f = m["sw2_floor"]
        lines.append(f"sliced W2: {m['sw2']:.4g}   floor: {f['mean']:.4g} ± {f['std']:.2g}")
        f = m["mmd2_floor"]
        lines.append(f"MMD²: {m['mmd2']:.3g}   floor: {f['mean']:.2g} ± {f['std']:.2g}")
        if "true_loglik" in m and "mean" in m["true_loglik"]:
            lines.append(f"true log-density of samples: {m['true_loglik']['mean']:.4g} nats "
                         f"(exact samples {m['true_loglik_exact']['mean']:.4g})")
    if "bits_per_dim" in ev:
        b = ev["bits_per_dim"]
        lines.append(f"test bits/dim: {b['mean']:.4g} ± {b['stderr']:.2g} (n={b['n']})")
    if "test_loglik" in ev:
        t = ev["test_loglik"]
        lines.append(f"test log-likelihood: {t['mean']:.4g} ± {t['stderr']:.2g} nats" +
                     (f" (truth {t['true']:.4g})" if "true" in t else ""))
    if "expectation_gap" in ev:
        lines.append(f"expectation gap (mean relative to the irreducible MSE): {ev['expectation_gap']['summary']:.3g}")
    curves = ev.get("quality_vs_nfe", {})
    width = max((len(name) for name in curves), default=0)
    for name, pts in curves.items():
        lines.append(f"  {name:>{width}}: " + "  ".join(f"NFE {k:g}: {v:.4g}" for k, v in sorted(pts)))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- likelihood


def cmd_likelihood(args) -> int:
    import torch

    from .data import load_dataset
    from .evaluate import dataset_bits_per_dim, true_density
    from .guidance import ClassifierFree
    from .likelihood import evaluate, log_likelihood
    from .report.pipeline import LEVELS, sampling_range

    run = _run_dir(args.run)
    dev = _device(args.device)
    den, cfg = _load(run, dev)
    if cfg.conditional:  # the unconditional model p(x): the null-label branch
        den = ClassifierFree(den, 0.0)
    data = load_dataset(cfg.dataset, args.split, seed=cfg.seed)
    x = data.x[: args.n]
    smin, smax = sampling_range(cfg)
    g = torch.Generator().manual_seed(args.seed)
    out = {"dataset": cfg.dataset, "split": args.split, "sigma_min": smin, "sigma_max": smax, "rtol": args.rtol}
    if data.is_image:
        r = dataset_bits_per_dim(den, x, levels=LEVELS[cfg.dataset], sigma_min=smin, sigma_max=smax,
                                 probes=args.probes, rtol=args.rtol, atol=args.rtol, batch_size=args.batch_size,
                                 generator=g, progress=_progress(args))
        out["bits_per_dim"] = r
        print(f"{args.split} bits/dim: {r['mean']:.4f} ± {r['stderr']:.2g} (n={r['n']}, dequantized, "
              f"PF-ODE with {args.probes} Hutchinson probe(s), rtol {args.rtol:g})")
    else:
        div = "exact" if x[0].numel() <= 64 else "hutchinson"

        def per_batch(xb):
            return log_likelihood(den, xb.to(dev), sigma_min=smin, sigma_max=smax, divergence=div,
                                  probes=args.probes, rtol=args.rtol, atol=args.rtol, generator=g).cpu()

        s = evaluate(per_batch, x, batch_size=args.batch_size, progress=_progress(args), desc="log-likelihood")
        out["log_likelihood"] = {"mean": s.mean, "stderr": s.stderr, "n": s.n, "divergence": div}
        line = f"{args.split} log-likelihood: {s.mean:.4f} ± {s.stderr:.2g} nats per point (n={s.n}, {div} divergence)"
        gm = true_density(cfg.dataset)
        if gm is not None:
            true = float(gm.log_prob(x.double(), smin).mean())
            out["log_likelihood"]["true"] = true
            line += f"; the true density gives {true:.4f}"
        print(line)
    _atomic_json(run / "likelihood.json", out)
    print(f"wrote {run / 'likelihood.json'}")
    return 0


# ----------------------------------------------------------------------------- encode


def cmd_encode(args) -> int:
    import torch

    from .data import load_dataset
    from .guidance import ClassifierFree
    from .likelihood import decode, encode
    from .report.pipeline import sampling_range

    run = _run_dir(args.run)
    dev = _device(args.device)
    den, cfg = _load(run, dev)
    if cfg.conditional:
        den = ClassifierFree(den, 0.0)
    x = load_dataset(cfg.dataset, args.split, seed=cfg.seed).x[: args.n].to(dev)
    smin, smax = sampling_range(cfg)
    kw = {"rtol": args.rtol, "atol": args.rtol}
    grid = None
    if args.steps is not None:  # a fixed log-uniform grid with a deterministic sampler instead of the adaptive solver
        grid = torch.exp(torch.linspace(math.log(smin), math.log(smax), args.steps + 1, dtype=torch.float64))
        kw = {"sampler": args.sampler}
    t0 = time.perf_counter()
    if grid is None:
        z, info = encode(den, x, sigma_min=smin, sigma_max=smax, return_info=True, **kw)
        x_rec, info2 = decode(den, z, sigma_min=smin, sigma_max=smax, return_info=True, **kw)
    else:
        z, info = encode(den, x, sigmas=grid, return_info=True, **kw)
        x_rec, info2 = decode(den, z, sigmas=grid.flip(0), return_info=True, **kw)
    secs = time.perf_counter() - t0
    err = ((x_rec - x).flatten(1).double().norm(dim=1) / x.flatten(1).double().norm(dim=1).clamp_min(1e-12)).cpu()
    zs = (z / smax).flatten(1).double().cpu()
    out = {"n": int(x.shape[0]), "sigma_min": smin, "sigma_max": smax, "seconds": secs,
           "relative_error_mean": float(err.mean()), "relative_error_max": float(err.max()),
           "latent_std_over_sigma_max": float(zs.std()), "encode": _info_dict(info), "decode": _info_dict(info2)}
    _atomic_safetensors(run / "latents.safetensors", {"x": x, "z": z, "x_rec": x_rec})
    _atomic_json(run / "encode.json", out)
    print(f"encoded {out['n']} {args.split} points to latents at sigma_max={smax:.3g} and back in {secs:.1f} s")
    print(f"round-trip relative error ||x_rec - x|| / ||x||: mean {out['relative_error_mean']:.3g}, "
          f"max {out['relative_error_max']:.3g}; latent std / sigma_max = {out['latent_std_over_sigma_max']:.3f} "
          f"(1 for a Gaussian latent)")
    print(f"wrote {run / 'latents.safetensors'} (x, z, x_rec) and {run / 'encode.json'}")
    return 0


def _info_dict(info) -> dict:
    from dataclasses import asdict, is_dataclass

    if not is_dataclass(info):
        return {}
    d = asdict(info)
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in d.items() if not hasattr(v, "shape")
            or getattr(v, "ndim", 1) == 0}


# ----------------------------------------------------------------------------- report


def cmd_report(args) -> int:
    from .report import write_report

    run = _run_dir(args.run)
    _need_checkpoint(run)
    if not (run / "evaluation.json").is_file():
        raise UsageError(f"{str(run)!r} has no evaluation.json: run `diffusionlens evaluate {run}` first")
    path = write_report(run, progress=_progress(args))
    print(f"wrote {path} and its figures (open it in a browser)")
    return 0


# ----------------------------------------------------------------------------- main


def cmd_main(args) -> int:
    import shutil

    from .report import evaluate_run, write_report
    from .training import TrainConfig, train
    from .training.checkpoint import latest_checkpoint

    t0 = time.perf_counter()
    run = Path(args.run_dir) if args.run_dir else RUNS / args.name
    steps, minutes = args.steps, args.minutes
    if steps is None and minutes is None:
        minutes = MAIN_MINUTES
    cfg = TrainConfig(dataset=args.dataset, seed=args.seed, steps=steps, minutes=minutes, device=_device(args.device))
    if args.overwrite and run.exists():
        shutil.rmtree(run)
    resumed = run.exists() and latest_checkpoint(run) is not None
    if run.exists() and not resumed:
        left = {p.name for p in run.iterdir()}
        if left <= {"config.json", "metrics.jsonl", "checkpoints"} and not any((run / "checkpoints").glob("*")):
            shutil.rmtree(run)  # a start interrupted before its first checkpoint: nothing to keep
        else:
            raise UsageError(f"{str(run)!r} exists but holds no checkpoint; pass --overwrite or choose --name")
    budget = f"{minutes:g} min" if minutes is not None else ""
    budget += (" / " if budget and steps else "") + (f"{steps} steps" if steps else "")
    print(f"[1/3] training on {args.dataset} ({budget}) -> {run}" + (" (resuming the existing run)" if resumed else ""))
    res = train(cfg, run, resume=resumed, progress=_progress(args))
    print(f"      {res.step} steps, {res.elapsed_s / 60:.2f} min, {res.images_per_s:.0f} images/s, loss {res.loss:.4g}")
    print("[2/3] sampling and evaluating")
    ev = evaluate_run(run, n_samples=args.n_samples, sampler=args.sampler, steps=args.sampler_steps, seed=args.seed,
                      nfes=args.nfe, bpd_n=args.bpd_n, device=cfg.device, progress=_progress(args))
    print(_summary(ev))
    print("[3/3] writing the report")
    path = write_report(run, progress=_progress(args))
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min: open {path}")
    return 0


# ----------------------------------------------------------------------------- parser


EPILOG = """\
commands, in the order of a workflow:
  train       train a denoiser on a data set and write a run directory (runs/<name>)
  sample      draw samples from a trained run with any sampler, write .safetensors + .png
  evaluate    sample and score a run against held-out data (metric next to its floor), quality vs NFE
  likelihood  test-set bits/dim (images) or log-likelihood in nats (2-D) through the PF-ODE
  encode      map test data to latent noise through the PF-ODE and back; report the round-trip error
  report      draw the figures and write report.html for an evaluated run
  main        the whole job: train on digits for a few minutes, evaluate, write runs/main/report.html

quick start:
  diffusionlens main --minutes 1                 # a quick end-to-end run, then open runs/main/report.html
  diffusionlens train --dataset moons --steps 2000 --name moons
  diffusionlens sample moons --sampler dpmpp_2m --steps 10
"""


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .losses import Density, Weighting
    from .parameterization import Param
    from .report.pipeline import DEFAULT_NFE, DEFAULT_SWEEP
    from .samplers import DEFAULT_SAMPLER, DETERMINISTIC, SAMPLERS
    from .training import PROCESSES, TrainConfig

    D = TrainConfig()  # the defaults shown in --help are the library's own

    samplers = list(SAMPLERS)
    p = _Parser(prog="diffusionlens", formatter_class=_fmt, epilog=EPILOG,
                description="Diffusion models as one system seen from every angle: train one denoiser, then sample "
                            "it, score it, compute its likelihood and encode data with it.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def common(q, device=True):
        if device:
            q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU if there is one; "
                                                            "default)")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    def run_arg(q):
        q.add_argument("run", help="run directory, or a run name under runs/ (e.g. main)")

    # train
    q = sub.add_parser("train", formatter_class=_fmt, help="train a denoiser (writes a run directory)",
                       description="Train a denoiser D(x_t/s, sigma) ~ E[x0|x_t] on a data set. Writes runs/<name>/: "
                                   "config.json, checkpoints/ (safetensors + JSON, atomically), metrics.jsonl (loss "
                                   "and throughput) and result.json. Budget: --steps and/or --minutes (whichever "
                                   "comes first). Other settings come from the defaults (the EDM recipe), from "
                                   "--config, and from the flags below, in that order of precedence.",
                       epilog="examples:\n"
                              "  diffusionlens train --dataset digits --minutes 3\n"
                              "  diffusionlens train --dataset moons --steps 2000 --name moons\n"
                              "  diffusionlens train --dataset digits --conditional --process vp --param v\n"
                              "  diffusionlens train --config my.json --name exp1 --resume\n"
                              "  torchrun --standalone --nproc_per_node=2 -m diffusionlens.cli train --dataset mnist")
    q.add_argument("--dataset", choices=DATASETS, metavar="NAME",
                   help=f"data set: {', '.join(DATASETS)} (default digits; all ship with the package or are "
                        "generated, nothing is downloaded)")
    q.add_argument("--name", help="run name: the run directory is runs/<name> (default: the data set's name)")
    q.add_argument("--run-dir", help="explicit run directory (overrides --name)")
    q.add_argument("--steps", type=_positive_int, help=f"step budget (default {D.steps} unless --minutes is given)")
    q.add_argument("--minutes", type=_positive_float, help="time budget in minutes (wall clock unless --clock process)")
    q.add_argument("--clock", choices=["wall", "process"],
                   help=f"what --minutes measures: wall time or this process's CPU time (default {D.clock})")
    q.add_argument("--process", choices=list(PROCESSES), help=f"noise process (default {D.process})")
    q.add_argument("--param", choices=[v.value for v in Param],
                   help=f"what the network predicts (default {D.param}; edm = preconditioned)")
    q.add_argument("--density", choices=[v.value for v in Density],
                   help=f"distribution of training noise levels (default {D.density})")
    q.add_argument("--weighting", choices=[v.value for v in Weighting],
                   help=f"loss weighting over noise levels (default {D.weighting})")
    q.add_argument("--batch-size", type=_positive_int, help=f"global batch size (default {D.batch_size})")
    q.add_argument("--lr", type=_positive_float, help=f"AdamW learning rate (default {D.lr:g})")
    q.add_argument("--warmup-steps", type=_nonneg_int,
                   help=f"linear learning-rate warm-up steps (default {D.warmup_steps})")
    q.add_argument("--cooldown", type=_nonneg_float,
                   help=f"fraction of the budget at the end over which the learning rate falls linearly to 0 "
                        f"(default {D.cooldown:g}; 0 = constant)")
    q.add_argument("--ema", choices=["power", "exp", "none"],
                   help=f"EMA of the weights (default {D.ema}; power = EDM2's)")
    q.add_argument("--conditional", action="store_true", help="class-conditional (digits, mnist) with label "
                                                              "dropout, for classifier-free guidance")
    q.add_argument("--label-dropout", type=_nonneg_float,
                   help=f"probability of dropping the label (default {D.label_dropout:g})")
    q.add_argument("--n-train", type=_positive_int, help="use only the first N training examples")
    q.add_argument("--seed", type=_nonneg_int, help="seed of every random choice (default 0)")
    q.add_argument("--log-every", type=_positive_int, help="steps between metrics.jsonl lines")
    q.add_argument("--ckpt-every", type=_nonneg_int, help="steps between checkpoints (0: only at the end)")
    q.add_argument("--config", help="JSON file of TrainConfig fields (flags given here override it)")
    q.add_argument("--resume", action="store_true", help="continue the run in the run directory exactly where "
                                                         "its last checkpoint left off")
    q.add_argument("--compile", action="store_true", help="torch.compile the network (opt-in; slow to start)")
    common(q)
    q.set_defaults(func=cmd_train)

    # sample
    q = sub.add_parser("sample", formatter_class=_fmt, help="draw samples from a trained run",
                       description="Draw samples from a trained run's EMA denoiser with any sampler and step count. "
                                   "Writes <run>/samples-<sampler>-<steps>.safetensors (tensor 'x', and labels 'y' "
                                   "for conditional runs) and a .png beside it (an image grid next to real test "
                                   "images, or a scatter plot over held-out points for 2-D data). Prints the NFE "
                                   "(denoiser evaluations per sample).",
                       epilog="examples:\n"
                              "  diffusionlens sample main --sampler dpmpp_2m --steps 10 --n 100\n"
                              "  diffusionlens sample runs/cond --guidance 2 --label 3\n"
                              f"samplers: {', '.join(samplers)}")
    run_arg(q)
    q.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=samplers, metavar="NAME",
                   help=f"sampler (default {DEFAULT_SAMPLER}; list below)")
    q.add_argument("--steps", type=_positive_int, default=16, help="grid intervals (default 16)")
    q.add_argument("--grid", default=None, choices=["logsnr", "karras", "time", "fitted", "fitted-stop"],
                   help="noise-level grid: logsnr (uniform in log sigma), karras (rho = 7), time (uniform in the "
                        "process time), fitted (steps placed where a pilot solve of 64 samples measures the "
                        "error; see diffusionlens.samplers.fitted_grid) or fitted-stop (the fitted grid ending at "
                        "the last noise level that brings this sampler closest to the pilot's exact-flow end "
                        "points; see diffusionlens.samplers.stop_grid); default: the "
                        "sampler's recommended grid")
    q.add_argument("--analytic-start", action="store_true",
                   help="replace the first evaluation, at sigma_max, by the data mean measured on a pilot (the "
                        "large-noise limit of the denoiser): one NFE fewer for the same grid; see "
                        "diffusionlens.samplers.AnalyticStart")
    q.add_argument("--teleport", action="store_true",
                   help="with --grid fitted-stop, unconditional runs: start below sigma_max, carried there by the "
                        "exact flow of the Gaussian with the data's mean and covariance measured on the model; the "
                        "start is chosen on the pilot with the stop; see diffusionlens.samplers.gaussian")
    q.add_argument("--n", type=_positive_int, default=100, help="number of samples (default 100)")
    q.add_argument("--guidance", type=_nonneg_float, default=1.0,
                   help="classifier-free guidance weight for conditional runs (1 = conditional, 0 = unconditional)")
    q.add_argument("--label", type=_nonneg_int, help="class of every sample (conditional runs; default: cycle 0-9)")
    q.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the initial noise (default 0)")
    q.add_argument("--out", help="output path without extension (default <run>/samples-<sampler>-<steps>)")
    common(q)
    q.set_defaults(func=cmd_sample)

    # evaluate
    q = sub.add_parser("evaluate", formatter_class=_fmt, help="score a run: metric vs floor, quality vs NFE",
                       description="Sample a trained run and score the samples against the held-out split, each "
                                   "metric next to its noise floor (the same metric between exact samples). "
                                   "Images: Fréchet distance in the features of the project's digits classifier, "
                                   "floor = train split vs test split, and test bits/dim. 2-D and oracle data: "
                                   "sliced W2 and MMD with floors, the true log-density of the samples, the PF-ODE "
                                   "log-likelihood of test points, and (oracle, ring8) the gap to the exact "
                                   "E[x0|x_t]. Also sweeps several samplers over NFE budgets. Writes "
                                   "<run>/evaluation.json and samples.safetensors.",
                       epilog="examples:\n"
                              "  diffusionlens evaluate main\n"
                              "  diffusionlens evaluate runs/moons --samplers euler,heun --nfe 4,8,16\n"
                              "  diffusionlens evaluate main --no-sweep --bpd-n 0      # quick: headline only")
    run_arg(q)
    q.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=samplers, metavar="NAME",
                   help=f"headline sampler (default {DEFAULT_SAMPLER})")
    q.add_argument("--steps", type=_positive_int, default=16, help="headline sampler's steps (default 16)")
    q.add_argument("--n", type=_positive_int, help="samples to score (default: the train split's size for images, "
                                                   "5000 otherwise)")
    q.add_argument("--samplers", type=_sampler_list, default=DEFAULT_SWEEP,
                   help="comma-separated entries of the quality-vs-NFE sweep, each a sampler or sampler@grid "
                        f"(default {','.join(DEFAULT_SWEEP)})")
    q.add_argument("--nfe", type=_int_list, default=DEFAULT_NFE,
                   help=f"NFE budgets of the sweep (default {','.join(map(str, DEFAULT_NFE))})")
    q.add_argument("--no-sweep", action="store_true", help="skip the quality-vs-NFE sweep")
    q.add_argument("--bpd-n", type=_nonneg_int, default=100, help="test points for bits/dim or log-likelihood "
                                                                   "(0 skips; default 100)")
    q.add_argument("--guidance", type=_nonneg_float, default=1.0, help="guidance weight (conditional runs)")
    q.add_argument("--seed", type=_nonneg_int, default=0, help="seed (default 0)")
    common(q)
    q.set_defaults(func=cmd_evaluate)

    # likelihood
    q = sub.add_parser("likelihood", formatter_class=_fmt, help="test bits/dim or log-likelihood (PF-ODE)",
                       description="Exact log-likelihood of held-out data through the probability-flow ODE, with "
                                   "mean ± standard error over the points. Images: uniformly dequantized bits per "
                                   "dimension (an upper bound on the discrete NLL; Hutchinson trace). 2-D data: nats "
                                   "per point (exact divergence), next to the true density where it is known. "
                                   "Conditional runs are scored unconditionally (null label). Writes "
                                   "<run>/likelihood.json.",
                       epilog="examples:\n"
                              "  diffusionlens likelihood main --n 300\n"
                              "  diffusionlens likelihood runs/moons --n 1000")
    run_arg(q)
    q.add_argument("--n", type=_positive_int, default=100, help="test points (default 100)")
    q.add_argument("--split", default="test", choices=["test", "train"], help="data split (default test)")
    q.add_argument("--probes", type=_positive_int, default=1, help="Hutchinson probes per point (images)")
    q.add_argument("--rtol", type=_positive_float, default=1e-4, help="ODE solver tolerance (default 1e-4)")
    q.add_argument("--batch-size", type=_positive_int, default=100, help="points per solver batch")
    q.add_argument("--seed", type=_nonneg_int, default=0, help="seed of dequantization and probes")
    common(q)
    q.set_defaults(func=cmd_likelihood)

    # encode
    q = sub.add_parser("encode", formatter_class=_fmt, help="data -> latent noise -> data; round-trip error",
                       description="Encode held-out data into the model's latent noise by integrating the "
                                   "probability-flow ODE from sigma_min to sigma_max, decode it back, and report the "
                                   "round-trip error ||x_rec - x|| / ||x|| (the ODE is a bijection: the error is the "
                                   "solver's). Writes <run>/latents.safetensors (x, z, x_rec) and encode.json.",
                       epilog="examples:\n"
                              "  diffusionlens encode main --n 16                       # adaptive solver\n"
                              "  diffusionlens encode main --steps 20 --sampler heun    # fixed grid")
    run_arg(q)
    q.add_argument("--n", type=_positive_int, default=16, help="points to encode (default 16)")
    q.add_argument("--split", default="test", choices=["test", "train"], help="data split (default test)")
    q.add_argument("--rtol", type=_positive_float, default=1e-5, help="adaptive solver tolerance (default 1e-5)")
    q.add_argument("--steps", type=_positive_int, help="use a fixed grid of this many steps instead")
    q.add_argument("--sampler", default="heun", choices=sorted(DETERMINISTIC - {"adaptive"}),
                   help="deterministic sampler for --steps (default heun)")
    common(q)
    q.set_defaults(func=cmd_encode)

    # report
    q = sub.add_parser("report", formatter_class=_fmt, help="write report.html with figures for an evaluated run",
                       description="Draw the figures (samples next to real data, loss curve, quality vs NFE with "
                                   "the floor, denoising at several noise levels, implied loss weighting, and the "
                                   "expectation gap for oracle data) and write <run>/report.html beside them. "
                                   "Needs `diffusionlens evaluate` first.",
                       epilog="example:\n  diffusionlens report main && xdg-open runs/main/report.html")
    run_arg(q)
    common(q, device=False)
    q.set_defaults(func=cmd_report)

    # main
    q = sub.add_parser("main", formatter_class=_fmt, help="the whole job: train, sample, evaluate, report",
                       description="The README's main job: train the default model on the 8x8 digits for a few "
                                   f"minutes (default {MAIN_MINUTES:g}), sample it with a fast sampler, evaluate it "
                                   "(Fréchet distance vs the train-vs-test floor, test bits/dim, quality vs NFE for "
                                   "several samplers) and write runs/main/report.html with PNG figures. About 8 "
                                   "minutes on 2 CPU cores. Running it again resumes runs/main (extends training to "
                                   "a larger budget, or only re-evaluates); --overwrite starts afresh.",
                       epilog="examples:\n"
                              "  diffusionlens main\n"
                              "  diffusionlens main --minutes 1 --name quick\n"
                              "  diffusionlens main --dataset mnist --minutes 20 --device cuda")
    q.add_argument("--dataset", default="digits", choices=DATASETS, metavar="NAME",
                   help=f"data set: {', '.join(DATASETS)} (default digits)")
    q.add_argument("--minutes", type=_positive_float, help=f"training budget in minutes (default {MAIN_MINUTES:g})")
    q.add_argument("--steps", type=_positive_int, help="training budget in steps (instead of, or with, --minutes)")
    q.add_argument("--name", default="main", help="run name: runs/<name> (default main)")
    q.add_argument("--run-dir", help="explicit run directory (overrides --name)")
    q.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    q.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=samplers, metavar="NAME",
                   help=f"headline sampler (default {DEFAULT_SAMPLER})")
    q.add_argument("--sampler-steps", type=_positive_int, default=16, help="headline sampler steps (default 16)")
    q.add_argument("--nfe", type=_int_list, default=DEFAULT_NFE,
                   help=f"NFE budgets of the sweep (default {','.join(map(str, DEFAULT_NFE))})")
    q.add_argument("--n-samples", type=_positive_int, help="samples per evaluation (default: the train split's "
                                                           "size, 1497 for the digits)")
    q.add_argument("--bpd-n", type=_nonneg_int, default=100, help="test images for bits/dim (default 100)")
    q.add_argument("--seed", type=_nonneg_int, default=0, help="seed (default 0)")
    common(q)
    q.set_defaults(func=cmd_main)
    for q in (p, *sub.choices.values()):  # the descriptions are prose: wrap them (the epilogs stay as written)
        q.description = textwrap.fill(q.description, 98)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffusionlens`` command. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"diffusionlens {args.command}"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError) as e:
        if os.environ.get("DIFFUSIONLENS_DEBUG"):
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (FloatingPointError, RuntimeError, OSError) as e:
        if os.environ.get("DIFFUSIONLENS_DEBUG"):
            raise
        print(f"{prog}: failed: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    text = str(e) if not isinstance(e, KeyError) else repr(e.args[0])
    return " ".join(text.split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
