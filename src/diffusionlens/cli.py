"""The ``diffusionlens`` command line: train, sample, evaluate, likelihood, encode, report, main.

Thin by design: each command parses its arguments, rejects combinations that cannot apply, calls
one function of the library (:mod:`diffusionlens.run` for everything on a run directory,
:func:`diffusionlens.training.train` for training) and prints the result. The choices offered are
the library's own (data sets, processes, samplers, grids). The argument definitions live in
:mod:`diffusionlens._cli_args`.

Bad input (unknown name, out-of-range value, missing run, corrupt checkpoint, an option that does not
apply) ends with exit code 2 and one line on stderr naming it; a failure while computing (a NaN in
training) with exit code 1. Files are written atomically, so nothing half-written is left behind. Set
``DIFFUSIONLENS_DEBUG=1`` to see the full traceback instead.

Distributed training: ``torchrun --standalone --nproc_per_node=2 -m diffusionlens.cli train ...``
(see :mod:`diffusionlens.training`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from ._cli_args import MAIN_STEPS, TRAIN_FLAGS, UsageError, build_parser, device
from ._util import read_json

__all__ = ["main", "build_parser"]

RUNS = Path("runs")


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _open(args):
    from . import run

    return run.open_run(args.run, device=device(args.device), plan=getattr(args, "plan", "auto") != "none")


def _conflicts(pairs) -> None:
    """Raise a UsageError naming the first (condition, message) that holds."""
    for cond, message in pairs:
        if cond:
            raise UsageError(message)


# ----------------------------------------------------------------------------- train


def _train_config(args, resume_from: Path | None = None):
    """The TrainConfig of a command: the run's own stored configuration (``--resume``), then ``--config``,
    then the flags given, in increasing precedence."""
    from .training import TrainConfig

    base: dict = read_json(resume_from / "config.json", "stored configuration") if resume_from else {}
    if getattr(args, "config", None) is not None:
        base.update(read_json(Path(args.config), "config file"))
    for flag, field in TRAIN_FLAGS.items():
        if getattr(args, flag, None) is not None:
            base[field] = getattr(args, flag)
    for flag in ("conditional", "compile"):
        if getattr(args, flag, False):
            base[flag] = True
    if args.steps is not None or args.minutes is not None:  # an explicit budget replaces the stored one
        base["steps"], base["minutes"] = args.steps, args.minutes
    base["device"] = device(args.device)
    _interpolant_flags(args, base, resuming=resume_from is not None)
    cfg = TrainConfig.from_dict(base)
    if cfg.objective == "analog-bits" and "net" not in base:  # a new analog-bits run: bits as channels
        from .discrete import analog

        cfg = analog.config(cfg).replace(**{k: base[k] for k in ("sigma_data",) if k in base})
    return cfg


def _interpolant_flags(args, base: dict, resuming: bool) -> None:
    """--source / --coupling: the interpolant objective's options (they imply --objective interpolant); a new
    interpolant run trains the flow process's velocity unless --process / --param say otherwise."""
    from .interpolants.objective import ALIASES

    source, coupling = getattr(args, "source", None), getattr(args, "coupling", None)
    if source is not None or coupling is not None:
        if getattr(args, "objective", None) is None and base.get("objective", "denoising") == "denoising":
            base["objective"] = "interpolant"
        if base["objective"] not in ("interpolant", *ALIASES):
            raise UsageError(f"--source/--coupling apply to --objective interpolant, not {base['objective']!r}")
        opts = dict(base.get("objective_options") or {})
        opts.update({k: v for k, v in (("source", source), ("coupling", coupling)) if v is not None})
        base["objective_options"] = opts
    if base.get("objective") in ("interpolant", "reflow", *ALIASES) and not resuming:
        base.setdefault("process", "flow")
        base.setdefault("param", "velocity")


def _run_path(args, dataset: str | None) -> Path:
    if args.run_dir is not None:
        return Path(args.run_dir)
    return RUNS / (args.name or dataset or "digits")


def cmd_train(args) -> int:
    from .training import train
    from .training.checkpoint import latest_checkpoint

    run = _run_path(args, args.dataset)
    _conflicts([(args.resume and args.overwrite, "--resume and --overwrite exclude each other: continue the run "
                                                 "or start it over")])
    if args.resume and latest_checkpoint(run) is None:
        raise UsageError(f"--resume: {str(run)!r} holds no checkpoint to resume; drop --resume to start a new run")
    if not (args.resume or args.overwrite) and run.is_dir() and any(run.iterdir()):
        raise UsageError(f"{str(run)!r} already holds a run; pass --resume to continue it, --overwrite to start "
                         f"over, or choose another --name")
    cfg = _train_config(args, resume_from=run if args.resume else None)
    if args.self_condition or args.experts or args.expert_boundaries or args.base:
        return _train_rnn(args, cfg, run)
    res = train(cfg, run, resume=args.resume, overwrite=args.overwrite, progress=_progress(args))
    if _is_main_rank():
        print(f"trained {res.step} steps in {res.elapsed_s / 60:.2f} min ({res.images_per_s:.0f} images/s, "
              f"stopped by {res.stopped_by}); final loss {res.loss:.4g}; {res.num_params:,} parameters")
        print(f"run directory: {run}  (next: diffusionlens sample {run})")
    return 0


def _train_rnn(args, cfg, run: Path) -> int:
    """train --self-condition / --experts / --expert-boundaries (diffusionlens.run.rnn)."""
    from .run import find_run as run_path
    from .run import rnn
    from .training import train

    experts = args.experts is not None or args.expert_boundaries is not None
    _conflicts([(args.resume and experts, "--resume does not apply to --experts (experts train into a new directory)"),
                (args.overwrite and experts, "--overwrite does not apply to --experts (experts train into a new "
                                             "directory)"),
                (args.experts == 1, "--experts needs K >= 2 (one expert is an ordinary run)"),
                (args.base is not None and not experts, "--base applies to --experts (each expert starts from it)")])
    if args.self_condition and not (args.resume and cfg.objective == "self-conditioning"):
        cfg = rnn.self_conditioned(cfg)
    if not experts:
        res = train(cfg, run, resume=args.resume, overwrite=args.overwrite, progress=_progress(args))
        print(f"trained {res.step} steps with self-conditioning in {res.elapsed_s / 60:.2f} min; final loss "
              f"{res.loss:.4g}; {res.num_params:,} parameters")
    else:
        base = None if args.base is None else run_path(args.base)
        results = rnn.train_experts(cfg, run, experts=args.experts, boundaries=args.expert_boundaries, base=base,
                                    progress=_progress(args))
        bounds = ", ".join(f"{b:.4g}" for b in rnn.load(run)[0].boundaries)
        print(f"trained {len(results)} experts split at sigma = {bounds}: "
              + ", ".join(f"{r.step} steps" for r in results))
    print(f"run directory: {run}  (next: diffusionlens sample {run})")
    return 0


# ----------------------------------------------------------------------------- sample


def _check_conditions(args, cfg, run) -> None:
    uncond = not cfg.conditional
    _conflicts([
        (args.guidance != 1.0 and uncond, f"--guidance {args.guidance:g} needs a class-conditional run; "
                                          f"{str(run)!r} is unconditional (train with --conditional)"),
        (getattr(args, "label", None) is not None and uncond,
         f"--label {getattr(args, 'label', None)} needs a class-conditional run; {str(run)!r} is unconditional"),
        (getattr(args, "label", None) is not None and (args.label or 0) >= 10,
         f"--label must be a class index in [0, 9], got {getattr(args, 'label', None)}"),
        (getattr(args, "teleport", False) and not uncond, "--teleport needs an unconditional run (one Gaussian "
                                                          f"model of the data); {str(run)!r} is conditional"),
    ])


def _check_sampling(args) -> None:
    adaptive = args.sampler == "adaptive"
    _conflicts([
        (adaptive and args.steps is not None, f"--steps {args.steps} does not apply to --sampler adaptive "
                                              "(it chooses its own steps; drop --steps or pick a fixed-grid sampler)"),
        (adaptive and args.grid is not None, f"--grid {args.grid} does not apply to --sampler adaptive "
                                             "(it chooses its own steps)"),
        (adaptive and args.analytic_start, "--analytic-start does not apply to --sampler adaptive"),
        (args.teleport and args.grid != "fitted-stop",
         f"--teleport needs --grid fitted-stop (it chooses the start with the stop), got --grid {args.grid}"),
    ])


def cmd_sample(args) -> int:
    _check_sampling(args)
    r = _open(args)
    _check_conditions(args, r.config, r.path)
    from . import run

    steps = run.default_steps(r.denoiser) if args.steps is None else args.steps
    res = run.sample_to_files(r, args.n, out=args.out, progress=_progress(args), sampler=args.sampler, steps=steps,
                              seed=args.seed, guidance=args.guidance, grid=args.grid, label=args.label,
                              analytic_start=args.analytic_start, teleport=args.teleport)
    what = "adaptive steps" if args.sampler == "adaptive" else f"{steps} steps"
    how = f"its {r.denoiser.kind} sampling" if hasattr(r.denoiser, "kind") else args.sampler  # a distilled run
    print(f"{args.n} samples with {how} ({what}): NFE {res['nfe']:g} per sample, {res['seconds']:.1f} s")
    print(f"wrote {res['stem']}.safetensors and {res['stem']}.png")
    return 0


# ----------------------------------------------------------------------------- evaluate


def cmd_evaluate(args) -> int:
    from . import run

    _conflicts([
        (args.no_sweep and args.samplers is not None, "--samplers does not apply with --no-sweep"),
        (args.no_sweep and args.nfe is not None, "--nfe does not apply with --no-sweep"),
        (args.no_sweep and args.sweep_samples is not None, "--sweep-samples does not apply with --no-sweep"),
    ])
    r = _open(args)
    _check_conditions(args, r.config, r.path)
    sweep = () if args.no_sweep else (args.samplers or run.DEFAULT_SWEEP)
    ev = run.evaluate(r, n_samples=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, sweep=sweep,
                      nfes=args.nfe or run.DEFAULT_NFE, sweep_samples=args.sweep_samples, bpd_n=args.bpd_n,
                      guidance=args.guidance, progress=_progress(args))
    print(_summary(ev))
    print(f"wrote {r.path / 'evaluation.json'}  (next: diffusionlens report {r.path})")
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


# ----------------------------------------------------------------------------- tune, likelihood, encode


def cmd_tune(args) -> int:
    from .run.plan import tune

    r = _open(args)
    t0 = time.perf_counter()
    plan = tune(r, samplers=args.samplers, nfes=args.nfe, progress=_progress(args))
    print(f"tuned {len(plan.tuned)} configurations in {time.perf_counter() - t0:.1f} s:")
    for (name, nfe), t in sorted(plan.tuned.items()):
        print(f"  {name:>8} NFE {nfe:>3}: {t.steps} steps, {t.start} start, pilot RMSE {t.pilot_rmse:.3g}")
    print(f"wrote {r.path / 'plan.json'} and plan.safetensors  (sample and evaluate use it; --plan none turns it "
          "off)")
    return 0



def _cap_notice(args, r) -> None:
    from . import run

    held = run.split_size(r, args.split)
    if args.n > held:
        print(f"diffusionlens {args.command}: note: the {args.split} split holds {held} points; using all {held} "
              f"(--n {args.n})", file=sys.stderr)


def cmd_likelihood(args) -> int:
    from . import run

    r = _open(args)
    _cap_notice(args, r)
    out = run.likelihood(r, n=args.n, split=args.split, probes=args.probes, rtol=args.rtol,
                         batch_size=args.batch_size, seed=args.seed, progress=_progress(args))
    if "bits_per_dim" in out:
        b = out["bits_per_dim"]
        print(f"{args.split} bits/dim: {b['mean']:.4f} ± {b['stderr']:.2g} (n={b['n']}, dequantized, "
              f"PF-ODE with {args.probes} Hutchinson probe(s), rtol {args.rtol:g})")
    else:
        s = out["log_likelihood"]
        line = (f"{args.split} log-likelihood: {s['mean']:.4f} ± {s['stderr']:.2g} nats per point (n={s['n']}, "
                f"{s['divergence']} divergence)")
        if "true" in s:
            line += f"; the true density gives {s['true']:.4f}"
        print(line)
    print(f"wrote {r.path / 'likelihood.json'}")
    return 0


def cmd_discrete(args) -> int:
    from .data import decode_text
    from .discrete import run as drun

    r = drun.open_run(args.run, device=device(args.device))
    opts = {"schedule": args.schedule, "temperature": args.temperature} if args.sampler == "maskgit" else {}
    if args.sampler == "maskgit":
        opts["choice_temperature"] = math.inf if args.random_order else args.choice_temperature
    ev = drun.evaluate(r, n_test=args.n_test, n_samples=args.n, sampler=args.sampler, steps=args.steps,
                       seed=args.seed, progress=_progress(args), **opts)
    print(f"test negative ELBO: {ev['test_bpd']:.4f} ± {ev['test_bpd_stderr']:.2g} bits/token (n={ev['n_test']}, "
          f"{ev['objective']})")
    if r.config.dataset == "text":
        from safetensors.torch import load_file

        for line in decode_text(load_file(str(r.path / "samples.safetensors"))["tokens"][:4]):
            print(repr(line))
    from .discrete.report import write_report

    page = write_report(r.path, ev)
    print(f"wrote {r.path / 'evaluation.json'}, {r.path / 'samples.safetensors'} ({args.n} samples, "
          f"{args.sampler}, {args.steps} steps) and {page}")
    return 0


def cmd_encode(args) -> int:
    from . import run

    _conflicts([
        (args.sampler is not None and args.steps is None,
         f"--sampler {args.sampler} needs --steps (without it the adaptive solver runs)"),
        (args.rtol is not None and args.steps is not None,
         f"--rtol {args.rtol} applies to the adaptive solver; it does not apply with --steps"),
    ])
    r = _open(args)
    _cap_notice(args, r)
    out = run.round_trip(r, n=args.n, split=args.split, rtol=1e-5 if args.rtol is None else args.rtol,
                         steps=args.steps, sampler=args.sampler or "heun", progress=_progress(args))
    print(f"encoded {out['n']} {args.split} points to latents at sigma_max={out['sigma_max']:.3g} and back in "
          f"{out['seconds']:.1f} s")
    print(f"round-trip relative error ||x_rec - x|| / ||x||: mean {out['relative_error_mean']:.3g}, "
          f"max {out['relative_error_max']:.3g}; latent std / sigma_max = {out['latent_std_over_sigma_max']:.3f} "
          f"(1 for a Gaussian latent)")
    print(f"wrote {r.path / 'latents.safetensors'} (x, z, x_rec) and {r.path / 'encode.json'}")
    return 0


# ----------------------------------------------------------------------------- report, main


def cmd_report(args) -> int:
    from .report import write_report
    from .run import find_run
    from .run.rnn import is_experts
    from .training.checkpoint import latest_checkpoint

    run = find_run(args.run)
    if latest_checkpoint(run) is None and not is_experts(run):
        raise UsageError(f"{str(run)!r} holds no checkpoint: it is not a trained run")
    if not (run / "evaluation.json").is_file():
        raise UsageError(f"{str(run)!r} has no evaluation.json: run `diffusionlens evaluate {run}` first")
    path = write_report(run, progress=_progress(args), device=device(args.device))
    print(f"wrote {path} and its figures (open it in a browser)")
    return 0


def _fresh_or_resumed(run: Path, overwrite: bool) -> tuple[bool, bool]:
    """(resume, overwrite) for the main job's ``train`` call: resume a run that has a checkpoint; start over
    (removing only a run's own files, never anything else) when asked, or when a start was interrupted before
    its first checkpoint (nothing to keep)."""
    from .training.checkpoint import latest_checkpoint

    if overwrite or not run.exists():
        return False, overwrite and run.exists()
    if latest_checkpoint(run) is not None:
        return True, False
    left = {p.name for p in run.iterdir()}
    if left <= {"config.json", "metrics.jsonl", "checkpoints", ".lock"} and not any((run / "checkpoints").glob("*")):
        return False, True
    raise UsageError(f"{str(run)!r} exists but holds no checkpoint; pass --overwrite or choose --name")


def cmd_main(args) -> int:
    from . import run as runs
    from .report import write_report
    from .run import plan as tuning
    from .training import train

    t0 = time.perf_counter()
    run = _run_path(args, None) if args.run_dir else RUNS / args.name
    if args.steps is None and args.minutes is None:
        args.steps = MAIN_STEPS
    cfg = _train_config(args)
    resumed, start_over = _fresh_or_resumed(run, args.overwrite)
    budget = " / ".join(b for b in (f"{args.minutes:g} min" if args.minutes else "",
                                    f"{args.steps} steps" if args.steps else "") if b)
    print(f"[1/3] training on {args.dataset} ({budget}) -> {run}" + (" (resuming the existing run)" if resumed else ""))
    res = train(cfg, run, resume=resumed, overwrite=start_over, progress=_progress(args))
    rate = res.step * cfg.batch_size / res.elapsed_s if res.elapsed_s > 0 else float("nan")
    print(f"      {res.step} steps, {res.elapsed_s / 60:.2f} min, {rate:.0f} examples/s on average, "
          f"loss {res.loss:.4g}")
    if res.stopped_by == "minutes" and res.step < MAIN_STEPS:
        print(f"      note: the time budget ended at {res.step} of the {MAIN_STEPS} steps the README's figures come "
              f"from; expect a higher Fréchet distance (run without --minutes for the reference result)")
    use_plan = args.plan != "none"
    if use_plan:
        print("      tuning the sampling plan")
        tuning.tune_for_evaluation(runs.open_run(run, device=cfg.device, plan=False), sampler=args.sampler,
                                   steps=args.sampler_steps, sweep=runs.DEFAULT_SWEEP, nfes=args.nfe,
                                   progress=_progress(args))
    print("[2/3] sampling and evaluating")
    ev = runs.evaluate(runs.open_run(run, device=cfg.device, plan=use_plan), n_samples=args.n_samples,
                       sampler=args.sampler, steps=args.sampler_steps, seed=args.seed, nfes=args.nfe,
                       sweep_samples=args.sweep_samples, bpd_n=args.bpd_n, progress=_progress(args))
    print(_summary(ev))
    print("[3/3] writing the report")
    path = write_report(run, progress=_progress(args), device=cfg.device)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min: open {path}")
    return 0


# ----------------------------------------------------------------------------- views


def _figure(args, r, name: str) -> Path:
    from . import run

    stem = run.output_stem(args.out, (r.path if r is not None else Path(".")) / name)
    return stem.with_name(stem.name + ".png")


def cmd_elbo(args) -> int:
    from .run import views

    _conflicts([(args.samples % 2 == 1, f"--samples {args.samples} must be even (antithetic noise pairs)")])
    r = _open(args)
    res = views.elbo(r, n=args.n, steps=args.steps, samples=args.samples, target=args.target, pf=args.pf,
                     seed=args.seed)
    from .report import figures

    figures.elbo_figure(res, r.path / "fig_elbo.png")
    u, dd, c = res["unit"], res["ddpm"], res["continuous"]
    print(f"{res['n']} test points, {u}:")
    print(f"  DDPM bound, {dd['steps']} levels:  {dd['total']:.4f} ± {dd['stderr']:.2g}   (prior "
          f"{dd['terms'][-1]:.3g}, decoder {dd['terms'][0]:.3g}, KL terms {sum(dd['terms'][1:-1]):.4g})")
    print(f"  continuous-time bound:   {c['total']:.4f} ± {c['stderr']:.2g}   (prior {c['prior']:.3g}, diffusion "
          f"{c['diffusion']:.4g}, decoder {c['decoder']:.3g})")
    print(f"    Monte-Carlo standard error per point: {c['mc_stderr_nats_per_dim']:.3g} nats/dim ({c['draws']} draws "
          f"per point; target {args.target:g})")
    pf = res["pf"]
    if pf is not None:
        where = "the same points" if pf["same_points"] else f"the evaluation's {pf['n']} points"
        print(f"  probability flow:        {pf['mean']:.4f} ± {pf['stderr']:.2g}   (on {where})")
    else:
        print("  probability flow: not evaluated (run `diffusionlens evaluate` first, or pass --pf)")
    if "true_nll" in res:
        print(f"  true -log p (exact density): {res['true_nll']:.4f}")
    print(f"wrote {r.path / 'fig_elbo.png'}")
    return 0


def cmd_denoise(args) -> int:
    from .run import views

    r = _open(args)
    path = _figure(args, r, "fig_denoise")
    res = views.denoise(r, args.sigma, n=args.n, show=args.show, seed=args.seed, figure=path)
    print(f"MSE per dimension of E[x0|x_t] on {res['n']} test points (data variance {res['data_var']:.4g}):")
    for row in res["levels"]:
        exact = f"   exact posterior mean {row['exact_mse']:.4g}" if "exact_mse" in row else ""
        print(f"  sigma {row['sigma']:<8g} model {row['mse']:.4g}{exact}")
    print(f"wrote {path}")
    return 0


def cmd_weighting(args) -> int:
    from .run import views

    path = _figure(args, None, "weighting")
    res = views.weighting(process=args.process, param=args.param, density=args.density, weighting=args.weighting,
                          sigma_data=args.sigma_data, points=args.points, figure=path)
    print(f"implied weighting w(lambda) of {res['loss']} (eps form, max 1):")
    for lam, w in zip(res["logsnr"], res["weight"]):
        print(f"  lambda {lam:>7.2f}  sigma {math.exp(-lam / 2):>9.4g}  w {w:.4f}  {'#' * round(40 * w)}")
    print(f"peak at lambda = {res['peak_logsnr']:.2f}; "
          + ("monotone (non-increasing in lambda): an ELBO of noise-augmented data (Kingma & Gao 2023)"
             if res["monotone"] else "not monotone in lambda"))
    print(f"wrote {path}")
    return 0


def cmd_interpolate(args) -> int:
    from .run import views

    _conflicts([(args.frames < 3, f"--frames {args.frames}: need at least 3 (the two ends and one between)")])
    r = _open(args)
    path = _figure(args, r, "fig_interpolate")
    res = views.interpolate(r, pairs=args.pairs, frames=args.frames, steps=args.steps, figure=path)
    print(f"{res['pairs']} pairs encoded at sigma_max and decoded ({res['nfe_each_way']} evaluations each way); "
          f"{res['frames']} slerp frames per pair")
    print(f"round-trip relative error of the ends: mean {res['round_trip_error_mean']:.3g}, max "
          f"{res['round_trip_error_max']:.3g}; latent std / sigma_max = {res['latent_std_over_sigma_max']:.3f}")
    print(f"wrote {path}")
    return 0


def cmd_distill(args) -> int:
    from . import run

    res = run.distill(args.run, method=args.method, minutes=args.minutes, name=args.name, steps=args.steps,
                      seed=args.seed, device=device(args.device), progress=_progress(args))
    print(f"distilled in {res.step} steps, {res.elapsed_s / 60:.2f} min; final loss {res.loss:.4g}")
    print(f"run directory: {res.run_dir}  (next: diffusionlens sample {args.name} --steps 1)")
    return 0


def cmd_spectrum(args) -> int:
    from .frequency.measure import print_summary, spectrum, write_spectrum

    r = spectrum(args.source, n=args.n, sigmas=args.sigmas, settle=not args.no_settling, device=device(args.device))
    paths = write_spectrum(r, args.out if args.out else r["default_stem"])
    print_summary(r)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def cmd_finetune(args) -> int:
    from .run import rnn

    r = _open(args)
    steps = args.steps if args.steps is not None or args.minutes is not None else 200
    info = rnn.finetune(r, Path(args.out), k=args.unroll, sampler=args.sampler, target=args.target, steps=steps,
                        minutes=args.minutes, batch_size=args.batch_size, lr=args.lr, grid_steps=args.grid_steps,
                        solve_steps=args.solve_steps, seed=args.seed, progress=_progress(args))
    print(f"fine-tuned through {info['k']} {info['sampler']} steps against the {info['target']}: {info['steps']} "
          f"updates in {info['cpu_seconds'] / 60:.2f} CPU min, loss {info['loss_first'][0]:.4g} -> "
          f"{info['loss_last'][0]:.4g}")
    print(f"run directory: {args.out}  (next: diffusionlens evaluate {args.out})")
    return 0


def cmd_import_diffusers(args) -> int:
    from .interop import import_diffusers

    run = Path(args.run_dir) if args.run_dir else RUNS / (args.name or Path(args.path).resolve().name)
    import_diffusers(args.path, run, dataset=args.dataset, overwrite=args.overwrite)
    print(f"imported {args.path} -> {run}  (next: diffusionlens evaluate {run})")
    return 0


def cmd_export_diffusers(args) -> int:
    from . import run as runs
    from .interop import export_diffusers

    out = export_diffusers(runs.find_run(args.run), args.out)
    print(f"wrote {out}/unet and {out}/scheduler (diffusers save_pretrained layout)")
    return 0


def cmd_restore(args) -> int:
    from .run import interpolants

    r = _open(args)
    res = interpolants.restore(r, steps=args.steps, split=args.split, input=args.input, n=args.n, seed=args.seed,
                               out=args.out, progress=_progress(args))
    head = f"restored {res['n']} images ({res['inputs']})"
    if "psnr_degraded" in res:
        head += f"; PSNR of the degraded images {res['psnr_degraded']['mean']:.2f} dB"
    print(head)
    for k, row in res["steps"].items():
        print(f"  {k:>4} InDI steps" + (f": PSNR {row['psnr']['mean']:.2f} ± {row['psnr']['stderr']:.2f} dB"
                                         if "psnr" in row else ""))
    print(f"wrote {res['stem']}.safetensors, .json and .png")
    return 0


def cmd_reflow(args) -> int:
    from .run import interpolants

    _conflicts([(args.name is None and args.run_dir is None, "reflow writes a new run: give --name NEW")])
    out = Path(args.run_dir) if args.run_dir else RUNS / args.name
    res = interpolants.reflow(args.run, run_dir=out, pairs=args.pairs, solve_steps=args.solve_steps,
                              minutes=args.minutes, steps=args.steps, seed=args.seed, lr=args.lr,
                              device=device(args.device), progress=_progress(args))
    print(f"reflowed on {args.pairs} pairs: {res.step} steps in {res.elapsed_s / 60:.2f} min; final loss "
          f"{res.loss:.4g}")
    print(f"run directory: {out}  (next: diffusionlens sample {out} --steps 1)")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "tune": cmd_tune,
            "likelihood": cmd_likelihood,
            "encode": cmd_encode, "report": cmd_report, "main": cmd_main,
            "elbo": cmd_elbo, "denoise": cmd_denoise, "weighting": cmd_weighting, "interpolate": cmd_interpolate,
            "distill": cmd_distill, "discrete": cmd_discrete,
            "spectrum": cmd_spectrum, "finetune": cmd_finetune,
            "import-diffusers": cmd_import_diffusers, "export-diffusers": cmd_export_diffusers,
            "restore": cmd_restore, "reflow": cmd_reflow}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffusionlens`` command. Returns the exit code."""
    args = build_parser().parse_args(argv)
    prog = f"diffusionlens {args.command}"
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
            PermissionError) as e:
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
    """The message on one line, in the command line's own words (flags, not keyword arguments)."""
    text = str(e) if not isinstance(e, KeyError) else repr(e.args[0])
    return " ".join(text.replace("resume=True", "--resume").split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
