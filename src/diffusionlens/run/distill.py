"""Distilling a run into a few-step student: an ordinary run directory, trained by the generic loop.

    from diffusionlens import run
    res = run.distill("main", method="progressive", minutes=10, name="main-pd")     # 16 -> 8 -> 4 -> 2 -> 1
    r = run.open_run("runs/main-pd")                     # samples with its students: steps 1, 2, 4, 8
    x, _, nfe = run.generate(r.denoiser, r.config, 100, steps=1)

The student's config is the teacher's (same network, which starts from the teacher's weights) with the
distillation objective and its settings (:mod:`diffusionlens.distill.objectives`), so checkpoints,
exact resume (``diffusionlens train --name NEW --resume``), progress and signals are the training
loop's. A time budget is turned into a step budget by timing a few steps first (process CPU time),
so the rounds of progressive distillation and the resumed run are laid out over a fixed number of steps.
Everything is checked before anything is written: a refused request leaves no directory behind.
"""

from __future__ import annotations

import time
from pathlib import Path

from ._core import RUNS, find_run

METHODS = {"progressive": "progressive-distillation", "consistency": "consistency-distillation"}
"""Distillation methods: CLI name -> training objective."""
MIN_ROUND_STEPS = 20
"""The fewest training steps of one progressive round (or of a whole consistency distillation)."""
PROBE_STEPS = 6


def _teacher(teacher, dataset: str | None):
    """(option value, teacher TrainConfig or None for the oracle) after every check on the teacher."""
    from ..training import load_denoiser
    from ..training.checkpoint import LOCK, _alive, _holder, latest_checkpoint

    if isinstance(teacher, str) and teacher == "oracle":
        if dataset is None:
            raise ValueError("teacher 'oracle' needs dataset= (an oracle data set such as 'oracle-ring')")
        return "oracle", None
    path = find_run(teacher)
    holder = _holder(path / LOCK) if (path / LOCK).exists() else None
    if holder is not None and _alive(holder[0]):
        raise ValueError(f"teacher run {str(path)!r} is still training (pid {holder[0]} holds {path / LOCK}); "
                         "distil it once it has finished")
    if latest_checkpoint(path) is None:
        raise ValueError(f"teacher {str(path)!r} holds no checkpoint: it is not a trained run")
    _, tcfg = load_denoiser(path)
    if dataset is not None and dataset != tcfg.dataset:
        raise ValueError(f"dataset {dataset!r} differs from the teacher's {tcfg.dataset!r}")
    return str(path.resolve()), tcfg


def _student_config(method: str, teacher: str, tcfg, *, steps: int | None, dataset: str | None, seed: int,
                    device: str, lr: float | None, batch_size: int | None, net: dict | None):
    from ..data import load_dataset
    from ..distill import halvable_grid
    from ..training import TrainConfig
    from ..training.config import default_net

    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; choose one of: {', '.join(METHODS)}")
    if tcfg is None:
        data = load_dataset(dataset, "train", seed=seed)
        base = TrainConfig(dataset=dataset).to_dict()
        base.update(sigma_data=round(data.sigma_data, 6), net=net or default_net(data, False))
    elif net is not None:
        raise ValueError("net= applies to the oracle teacher only: a run's student has its teacher's network")
    else:
        base = tcfg.to_dict()
        if tcfg.conditional:
            raise ValueError(f"teacher {teacher!r} is class-conditional; distillation makes unconditional students")
    opts = {"teacher": teacher}
    if method == "progressive":
        steps = 16 if steps is None else steps
        halvable_grid(steps)  # a power of two, halved every round
        opts.update(steps=steps, final_steps=1, weighting="truncated-snr")
        base.update(ema="none")  # each round's student differs from the last: no average across rounds
    else:
        steps = 17 if steps is None else steps
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps (the teacher's ODE intervals) must be an integer >= 1, got {steps!r}")
        opts.update(n=steps + 1, solver="heun")
    scratch = tcfg is None
    base.update(objective=METHODS[method], objective_options=opts, seed=seed, device=device,
                lr=lr if lr is not None else (2e-3 if scratch else 5e-4), warmup_steps=50 if scratch else 0,
                steps=1, minutes=None)
    if batch_size is not None:
        base["batch_size"] = batch_size
    return TrainConfig.from_dict(base)


def _seconds_per_step(cfg) -> float:
    """Process CPU seconds of one training step of ``cfg``, timed on a few steps (nothing written)."""
    import torch

    from ..data import load_dataset
    from ..nets import build_net
    from ..objectives import Batch, Streams, build_objective

    data = load_dataset(cfg.dataset, "train", seed=cfg.seed, n=cfg.n_train)
    probe = cfg.replace(steps=10**6)
    obj = build_objective(probe, data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_net(cfg.net).to(cfg.device)
        obj.initialise(net)
        model, rng = probe.denoiser(net), Streams(cfg.seed)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
        t0 = 0.0
        for i in range(PROBE_STEPS + 2):
            if i == 2:
                t0 = time.process_time()
            idx = torch.randint(len(data), (cfg.batch_size,), generator=rng["probe"])
            loss = obj(model, Batch(data.x[idx].to(cfg.device)), rng).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return (time.process_time() - t0) / PROBE_STEPS * 1.1  # the loop's own work: EMA, logging


def _budget(cfg, minutes: float | None, train_steps: int | None) -> int:
    if (minutes is None) == (train_steps is None):
        raise ValueError("give one budget: minutes (CPU time) or train_steps")
    opts = cfg.objective_options
    rounds = (opts["steps"] // opts["final_steps"]).bit_length() - 1 if "steps" in opts else 1
    need = rounds * MIN_ROUND_STEPS
    if train_steps is not None:
        if not (isinstance(train_steps, int) and train_steps >= need):
            raise ValueError(f"train_steps={train_steps!r} is too small: {cfg.objective} needs at least {need} "
                             f"steps ({rounds} round(s) of {MIN_ROUND_STEPS})")
        return train_steps
    if not (isinstance(minutes, (int, float)) and minutes > 0):
        raise ValueError(f"minutes must be > 0, got {minutes!r}")
    per = _seconds_per_step(cfg)
    steps = int(minutes * 60 / per)
    if steps < need:
        raise ValueError(f"--minutes {minutes:g} buys about {steps} training steps here ({per:.2g} s each), too few "
                         f"for {rounds} round(s) of at least {MIN_ROUND_STEPS} steps; give at least --minutes "
                         f"{need * per / 60:.2g}")
    return steps


def distill(teacher, *, method: str = "progressive", name: str | None = None, run_dir=None,
            minutes: float | None = None, train_steps: int | None = None, steps: int | None = None, seed: int = 0,
            dataset: str | None = None, device: str = "cpu", lr: float | None = None, batch_size: int | None = None,
            net: dict | None = None, progress: bool = True):
    """Distil ``teacher`` (a run directory or name, or ``"oracle"`` with an oracle ``dataset``) into a new
    run directory (``run_dir``, or ``runs/<name>``) and return the training result.

    Args:
        method: ``"progressive"`` (rounds ``steps`` -> ... -> 1, default steps 16, a power of two; the run
            keeps a student for every step count) or ``"consistency"`` (consistency distillation with the
            teacher's Heun step over ``steps`` + 1 levels, default 17 intervals).
        minutes: process CPU minutes, turned into a step budget by timing a few steps; or ``train_steps``.
        seed, lr, batch_size: the student's training (defaults: the teacher's batch, lr 5e-4 from a run
            teacher, 2e-3 from the oracle).
        net: the student's network spec, for the oracle teacher only (default: the data set's default).
    """
    from ..training import train

    if (name is None) == (run_dir is None):
        raise ValueError("give the new run one place: name= (runs/<name>) or run_dir=")
    out = Path(run_dir) if run_dir is not None else RUNS / name
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{str(out)!r} already exists; choose another name for the distilled run")
    src, tcfg = _teacher(teacher, dataset)
    cfg = _student_config(method, src, tcfg, steps=steps, dataset=dataset, seed=seed, device=device, lr=lr,
                          batch_size=batch_size, net=net)
    cfg = cfg.replace(steps=_budget(cfg, minutes, train_steps))
    if minutes is not None:
        cfg = cfg.replace(objective_options={**cfg.objective_options, "minutes": minutes})
    return train(cfg, out, progress=progress)
