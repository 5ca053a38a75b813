"""Distillation benchmark: few-step students of the main job's model against their teacher and the ODE samplers.

    python -m benchmarks.distillation                                 # ~35 CPU-minutes
    python -m benchmarks.distillation --teacher runs/main             # reuse a trained teacher
    python -m benchmarks.distillation --teacher-steps 60 --minutes 0.3 --ct-steps 60 --n 200 \\
        --out $WORK/d.md --work $WORK/dwork                              # smoke test

Teacher: the main job's configuration (``TrainConfig(dataset="digits")``, ``diffusionlens.run.MAIN_STEPS``
steps, seed 0), trained here unless ``--teacher`` names a run. Students, for each seed:

* progressive distillation (Salimans & Ho 2022) from the teacher's 8-step Euler/DDIM grid: 8 -> 4 -> 2 -> 1,
  ``--minutes`` of process CPU time for all rounds (:func:`diffusionlens.run.distill`);
* consistency distillation (Song et al. 2023) with the teacher's Heun step over 18 levels, ``--minutes``;
* consistency training from scratch (improved recipe, Song & Dhariwal 2023) for ``--ct-steps`` steps
  (default: the main job's step budget) through ``diffusionlens train --objective consistency-training``'s
  library call.

Scores: the classifier-feature Fréchet distance (:func:`diffusionlens.evaluate.headline_scorer`) of ``--n``
samples (default 1,497 = the train split, the main job's evaluation size) with the same initial noise
for every model. Ratios are to the teacher at its default sampler and 16 NFE, and to the best of the
project's ODE samplers on their recommended grids (euler, heun, dpmpp_2m, deis, unipc) at the student's
NFE, and to the best tuned configuration there (a sampling plan measured on the teacher, as
``diffusionlens tune`` stores it: the fitted grid with its tuned stop and start). CPU minutes are
``time.process_time()`` of this process (one torch thread); the machine's cores are shared, so wall
time is longer.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from benchmarks._write import write_results

ODE_SAMPLERS = ("euler", "heun", "dpmpp_2m", "deis", "unipc")
STUDENT_STEPS = {"progressive": (1, 2, 4), "consistency distillation": (1, 2, 4), "consistency training": (1, 2, 4)}


def _fd(den, cfg, n, steps, score, sampler=None, plan=None):
    from diffusionlens import run

    kw = {} if sampler is None else {"sampler": sampler}
    x, _, nfe = run.generate(den, cfg, n, steps=steps, seed=0, plan=plan, **kw)
    return score(x), nfe


def _teacher(args, res, save):
    from diffusionlens import run
    from diffusionlens.training import TrainConfig, train

    if args.teacher is not None:
        res["teacher"] = {"run": args.teacher, "cpu_min": None}
        return run.open_run(args.teacher, plan=False)
    path = Path(args.work) / "teacher"
    t0 = time.process_time()
    r = train(TrainConfig(dataset="digits", steps=args.teacher_steps, seed=0), path, progress=False)
    res["teacher"] = {"run": str(path), "steps": r.step, "cpu_min": (time.process_time() - t0) / 60}
    save()
    return run.open_run(path, plan=False)


def _baselines(teacher, n, score, res, save):
    from diffusionlens.samplers import DEFAULT_SAMPLER, SAMPLERS

    fd, nfe = _fd(teacher.denoiser, teacher.config, n, 16, score, DEFAULT_SAMPLER)
    res["teacher"].update(fd=fd, nfe=nfe, sampler=DEFAULT_SAMPLER)
    best = {}
    for k in (1, 2, 4):
        for name in ODE_SAMPLERS:
            spec = SAMPLERS[name].spec
            steps = spec.steps_for_nfe(k)
            if steps < 1 or spec.nfe(steps) > k:
                continue
            v, used = _fd(teacher.denoiser, teacher.config, n, steps, score, name)
            if k not in best or v < best[k]["fd"]:
                best[k] = {"sampler": name, "steps": steps, "nfe": used, "fd": v}
    res["ode"] = {str(k): v for k, v in best.items()}
    save()


def _tuned(teacher, n, score, res, save):
    """The project's best ODE configuration at each student NFE: a sampling plan (fitted grid, tuned stop and
    start) measured on the teacher, as ``diffusionlens tune`` stores it, for each tuned sampler."""
    from diffusionlens.run import sampling_range
    from diffusionlens.run.plan import TUNED_SAMPLERS
    from diffusionlens.samplers import tune

    smin, smax = sampling_range(teacher.config)
    # from NFE 2: a tuned start saves one evaluation, so one evaluation is no ODE solve at all
    budgets = tuple(int(k) for k in sorted({k for steps in STUDENT_STEPS.values() for k in steps}) if k >= 2)
    plan = tune(teacher.denoiser, (1, 8, 8), TUNED_SAMPLERS, budgets, sigma_min=smin, sigma_max=smax)
    best = {}
    for (name, k), t in sorted(plan.tuned.items()):
        v, used = _fd(teacher.denoiser, teacher.config, n, k, score, name, plan=plan)
        if k not in best or v < best[k]["fd"]:
            best[k] = {"sampler": name, "nfe": used, "fd": v, "start": str(t.start)}
    res["tuned"] = {str(k): v for k, v in best.items()}
    save()


def _students(method, seed, args, teacher, n, score):
    from diffusionlens import run
    from diffusionlens.training import TrainConfig, train

    path = Path(args.work) / f"{method.replace(' ', '-')}-s{seed}"
    t0 = time.process_time()
    done = (path / "result.json").is_file()  # trained earlier (e.g. in a parallel process with clock=process)
    if done:
        t0 -= json.loads((path / "result.json").read_text())["elapsed_s"]
    elif method == "progressive":
        run.distill(teacher.path, method="progressive", steps=8, minutes=args.minutes, seed=seed, run_dir=path,
                    progress=False)
    elif method == "consistency distillation":
        run.distill(teacher.path, method="consistency", minutes=args.minutes, seed=seed, run_dir=path,
                    progress=False)
    else:
        train(TrainConfig(dataset="digits", objective="consistency-training", steps=args.ct_steps, seed=seed,
                          clock="process"), path, progress=False)
    cpu = (time.process_time() - t0) / 60
    r = run.open_run(path, plan=False)
    fds = {str(k): _fd(r.denoiser, r.config, n, k, score)[0] for k in STUDENT_STEPS[method]}
    steps = json.loads((path / "result.json").read_text())["step"]
    return {"cpu_min": cpu, "train_steps": steps, "fd": fds}


def _spread(vals):
    m = sum(vals) / len(vals)
    return m, (max(vals) - min(vals)) / 2


def _markdown(res) -> str:
    t = res.get("teacher", {})
    lines = ["# Distillation benchmark: few-step students of the main job's model (digits)", "",
             f"Command: `{res['command']}`", "", f"Machine: {res['machine']}; {res['date']}; total wall time "
             f"{res.get('wall_min', float('nan')):.1f} min, CPU time {res.get('cpu_min', float('nan')):.1f} min.", "",
             f"Fréchet distance (FD) in the project's digits-classifier features, {res['n']} samples per model, same "
             "initial noise; lower is better. Ratios: student FD over the teacher's FD at its default sampler and 16 "
             "NFE, and over the best ODE sampler of the teacher at the student's NFE. Spread = half the range over "
             f"the seeds {res['seeds']}.", ""]
    if "fd" in t:
        cost = f", {t['cpu_min']:.1f} CPU-min" if t.get("cpu_min") else ""
        lines += [f"Teacher: {t['run']} ({t.get('steps', '?')} steps{cost}); FD at NFE {t['nfe']:g} with "
                  f"{t['sampler']}: **{t['fd']:.3f}**.", ""]
    if "ode" in res:
        lines += ["Best ODE sampler of the teacher at each NFE on its recommended grid: " + "; ".join(
            f"NFE {k}: {v['sampler']} {v['fd']:.2f}" for k, v in res["ode"].items()) + ".", ""]
    if "tuned" in res:
        lines += ["Best tuned configuration (sampling plan: fitted grid, tuned stop and start) at each NFE: " +
                  "; ".join(f"NFE {k}: {v['sampler']} ({v['start']} start) {v['fd']:.2f}"
                            for k, v in res["tuned"].items()) + ".", ""]
    lines += ["| student | CPU min (mean) | steps trained | NFE | FD mean ± spread | / teacher@16 | target | "
              "/ best ODE sampler at NFE | / tuned plan at NFE |", "|---|---|---|---|---|---|---|---|---|"]
    targets = {"1": 1.5, "2": 1.25, "4": 1.1}
    for method, runs in res.get("students", {}).items():
        if not runs:
            continue
        cpu = sum(r["cpu_min"] for r in runs) / len(runs)
        trained = "/".join(str(r["train_steps"]) for r in runs)
        for k in runs[0]["fd"]:
            m, s = _spread([r["fd"][k] for r in runs])
            rt = [r["fd"][k] / t["fd"] for r in runs]
            rm, rs = _spread(rt)
            ode = res.get("ode", {}).get(k)
            ro = "" if ode is None else "{:.2f} ± {:.2f}".format(*_spread([r["fd"][k] / ode["fd"] for r in runs]))
            tuned = res.get("tuned", {}).get(k)
            rp = "" if tuned is None else "{:.2f} ± {:.2f}".format(*_spread([r["fd"][k] / tuned["fd"] for r in runs]))
            ok = "met" if rm <= targets[k] else "missed"
            lines.append(f"| {method} | {cpu:.2f} | {trained} | {k} | {m:.2f} ± {s:.2f} | {rm:.2f} ± {rs:.2f} | "
                         f"<= {targets[k]} ({ok}) | {ro} | {rp} |")
    lines += ["", res.get("note") or "", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    from diffusionlens.evaluate import headline_scorer
    from diffusionlens.run import MAIN_STEPS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", help="a trained run to use as the teacher (default: train the main job's model)")
    p.add_argument("--teacher-steps", type=int, default=MAIN_STEPS)
    p.add_argument("--minutes", type=float, default=2.5, help="CPU minutes per distillation (default 2.5)")
    p.add_argument("--ct-steps", type=int, default=MAIN_STEPS, help="consistency-training steps (default: main's)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--n", type=int, default=1497)
    p.add_argument("--methods", default="progressive,consistency distillation,consistency training")
    p.add_argument("--work", default="runs/bench-distillation", help="directory for the runs (must not hold them)")
    p.add_argument("--out", default="benchmarks/results/distillation.md")
    p.add_argument("--merge", help="a results .json of an earlier invocation whose students are kept")
    p.add_argument("--note", default="", help="a line appended to the results (e.g. budget cuts)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    res = {"command": "python -m benchmarks.distillation " + " ".join(argv if argv is not None else
                                                                        __import__("sys").argv[1:]),
           "machine": f"{platform.machine()}, torch {torch.__version__}, 1 torch thread",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "n": args.n, "seeds": seeds, "students": {},
           "note": args.note}
    w0, c0 = time.perf_counter(), time.process_time()

    def save():
        res["wall_min"], res["cpu_min"] = (time.perf_counter() - w0) / 60, (time.process_time() - c0) / 60
        write_results(args.out, _markdown(res))
        write_results(Path(args.out).with_suffix(".json"), json.dumps(res, indent=1) + "\n")

    old = {}
    if args.merge:  # results of an earlier invocation (other methods), kept and extended
        old = json.loads(Path(args.merge).read_text())
        res["students"] = {**old.get("students", {}), **res["students"]}
        res["command"] = old["command"] + "; then " + res["command"]
    Path(args.work).mkdir(parents=True, exist_ok=True)
    teacher = _teacher(args, res, save)
    score = headline_scorer("digits", seed=0)
    if args.merge and "ode" in old and old.get("n") == args.n:  # the same teacher's baselines, measured then
        res["teacher"], res["ode"] = old["teacher"], old["ode"]
    else:
        _baselines(teacher, args.n, score, res, save)
    if args.merge and "tuned" in old and old.get("n") == args.n:
        res["tuned"] = old["tuned"]
    else:
        _tuned(teacher, args.n, score, res, save)
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        for seed in seeds:
            res["students"].setdefault(method, []).append(_students(method, seed, args, teacher, args.n, score))
            save()
            print(f"{method} seed {seed}: {res['students'][method][-1]}", flush=True)
    save()


if __name__ == "__main__":
    main()
