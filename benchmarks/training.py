"""Training benchmark: sample quality per CPU-minute on the digits, our recipe vs diffusers' DDPM recipe,
with a sweep of the peer's batch size and learning rate and our recipe on the peer's network.

    python -m benchmarks.training --minutes 2 --samples 750 --jobs 2    # the committed run (~22 CPU-min)
    python -m benchmarks.training --minutes 0.1 --batches 16 --lrs 1e-4 --samples 200 --out $WORK/t.md  # smoke

Every piece trains on the digits' train split (1,497 images) in its own process, with
``torch.set_num_threads(--threads)``. Budgets are **CPU time of the process**
(``time.process_time()``), not wall time, because the machine's cores are shared with other jobs:
a budget of M minutes means M CPU-minutes spent by this process from the start of the recipe's
setup (data, network, optimizer) to its last update. Wall time is reported beside it.

* **ours**: ``TrainConfig(dataset="digits")`` defaults, trained by :func:`diffusionlens.training.train`
  (checkpoints, logging and all) with ``minutes`` = the budget on the process's CPU clock
  (``clock="process"``), one run per budget: the default learning rate cools down over the last 40 % of
  the budget, so a shorter run is not a prefix of a longer one. Its budget is counted by the training
  loop, from the first update; the setup before it (data, network, optimizer: a few CPU-seconds) is
  outside it but inside the CPU-seconds column of the table.
* **ours + diffusers' UNet**: the same recipe with ``net`` = diffusers' ``UNet2DModel`` of the peer's size
  (the ``diffusers-unet`` network of :mod:`diffusionlens.nets`, fed EDM's c_noise), so that the table
  separates the recipe from the network.
* **diffusers**: the recipe of diffusers' ``examples/unconditional_image_generation/train_unconditional.py``
  (its argument defaults): ``UNet2DModel`` (scaled to 8x8 and to our parameter count; see
  :func:`peer_unet`), ``DDPMScheduler(num_train_timesteps=1000)`` (linear betas), eps-prediction MSE with
  uniform integer timesteps, AdamW(lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8), batch 16
  shuffled without dropping the last partial batch, gradient-norm clipping at 1.0, ``get_scheduler("cosine")``
  with 500 warm-up steps, ``EMAModel(decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3/4)``.
  The cosine decay must know the run's length; with a CPU-time budget the progress variable after
  warm-up is the fraction of the remaining budget spent, so the decay ends exactly at the budget.
  That makes every budget a separate run. The sweep runs the recipe at every ``--batches`` x ``--lrs``
  point; its warm-up ends after 500 steps or after ``--warmup-cap`` of the budget, whichever comes first
  (at batch 128 the 500 steps would not end within a short budget); ``--warmup-cap 0`` is the script's
  own 500 steps.

Scoring: ``--samples`` images (default 1,497 = the train split, so model and floor use equal sizes)
from the EMA weights at ``--nfe`` denoiser evaluations, clamped to [-1, 1], scored by the Fréchet
distance in the features of the project's digits classifier against the test split
(:func:`diffusionlens.evaluate.image_frechet`); the floor is the train split against the test split.
Samplers: ours with our default (:data:`diffusionlens.samplers.DEFAULT_SAMPLER`) and with DPM-Solver++(2M);
theirs with diffusers' ``DPMSolverMultistepScheduler`` (their pipelines' fast sampler) and with our default
sampler through :func:`diffusionlens.model.from_timestep_model`, so both models are also compared under
one sampler. All use the same initial noise.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusionlens.data import load_dataset
from diffusionlens.evaluate import image_frechet
from diffusionlens.features import load_classifier
from diffusionlens.model import from_timestep_model
from diffusionlens.nets import count_params
from diffusionlens.nets.diffusers_unet import default_spec
from diffusionlens.processes import EDM, DDPMTable
from diffusionlens.samplers import DEFAULT_SAMPLER, sample
from diffusionlens.training import TrainConfig, load_denoiser, train

from ._jobs import Job, run_jobs
from ._write import write_results

# diffusers' train_unconditional.py argument defaults (see the module docstring and benchmarks/training.md)
PEER = {"lr": 1e-4, "warmup_steps": 500, "adam_betas": (0.95, 0.999), "weight_decay": 1e-6, "adam_eps": 1e-8,
        "batch_size": 16, "grad_clip": 1.0, "ema_max_decay": 0.9999, "ema_inv_gamma": 1.0, "ema_power": 0.75,
        "num_train_timesteps": 1000}


def peer_unet():
    """diffusers' UNet2DModel for 8x8 digits with about our default UNet's parameter count (1.16M vs 1.17M).

    train_unconditional.py builds six levels (128..512 channels, attention at the 5th) for 64x64+ images;
    8x8 allows three levels (8, 4, 2), as ours: channels (32, 64, 64), one block per level as ours, self-
    attention at 4x4 and 2x2 (and diffusers' attention mid-block), other options at diffusers' defaults.
    It is the ``diffusers-unet`` network's default size (:func:`diffusionlens.nets.diffusers_unet.default_spec`).
    """
    from diffusers import UNet2DModel

    return UNet2DModel(**peer_spec()["unet"])


def peer_spec() -> dict:
    """The ``diffusers-unet`` network spec of :func:`peer_unet` for our recipe (EDM preconditioning)."""
    return default_spec((1, 8, 8), EDM(), "edm")


@dataclass
class Snapshot:
    """EMA weights when a budget was spent, with the training bookkeeping up to then."""

    recipe: str
    budget_min: float
    batch: int
    lr: float
    step: int
    images: int
    cpu_s: float
    wall_s: float
    model: torch.nn.Module
    fd: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- training


def train_ours(budget_min: float, seed: int, workdir: Path, net: dict | None = None) -> tuple[Snapshot, dict]:
    """One run of the default recipe (on network ``net``, None = ours) with a CPU-time budget; its EMA weights."""
    cfg = TrainConfig(dataset="digits", seed=seed, steps=None, minutes=budget_min, clock="process", net=net)
    c0, w0 = time.process_time(), time.perf_counter()
    res = train(cfg, workdir / "ours", progress=False)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    den, rcfg = load_denoiser(workdir / "ours")
    recipe = "ours" if net is None else "ours+diffusers-unet"
    snap = Snapshot(recipe, budget_min, rcfg.batch_size, rcfg.lr, res.step, res.step * rcfg.batch_size, cpu, wall, den)
    info = {"num_params": res.num_params, "batch_size": rcfg.batch_size, "steps": res.step,
            "stopped_by": res.stopped_by}
    return snap, info


def _lr_mult(step: int, cpu: float, budget: float, c_warm: float | None, warmup_cap: float) -> float:
    """diffusers' get_cosine_schedule_with_warmup multiplier (num_cycles 0.5), progress as a budget fraction.

    Warm-up: linear to 1 at 500 steps, or at ``warmup_cap`` of the budget if that comes first (cap > 0);
    ``c_warm`` is the CPU time at which it ended (None while it lasts)."""
    if c_warm is None:
        w = step / max(1, PEER["warmup_steps"])
        return min(1.0, max(w, cpu / (warmup_cap * budget)) if warmup_cap > 0 else w)
    frac = (cpu - c_warm) / max(budget - c_warm, 1e-9)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


def train_peer(budget_min: float, seed: int, batch: int = 16, lr: float = 1e-4,
               warmup_cap: float = 0.0) -> tuple[Snapshot, dict]:
    """diffusers' DDPM recipe for one CPU-time budget at batch size ``batch`` and peak learning rate ``lr``;
    the warm-up ends after its 500 steps or ``warmup_cap`` of the budget (0: no cap), whichever comes first."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    c0, w0 = time.process_time(), time.perf_counter()
    budget = 60.0 * budget_min
    data = load_dataset("digits", "train").x
    torch.manual_seed(seed)
    model = peer_unet().train()
    sched = DDPMScheduler(num_train_timesteps=PEER["num_train_timesteps"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=PEER["adam_betas"],
                            weight_decay=PEER["weight_decay"], eps=PEER["adam_eps"])
    ema = EMAModel(model.parameters(), decay=PEER["ema_max_decay"], use_ema_warmup=True,
                   inv_gamma=PEER["ema_inv_gamma"], power=PEER["ema_power"])
    g = torch.Generator().manual_seed(seed)
    B, N = batch, data.shape[0]
    step, images, c_warm, warm_steps, epoch = 0, 0, None, None, 0
    done = False
    while not done:
        perm = torch.randperm(N, generator=g)
        for i in range(0, N, B):  # DataLoader(shuffle=True, drop_last=False)
            cpu = time.process_time() - c0
            if cpu >= budget:
                done = True
                break
            if c_warm is None and (step == PEER["warmup_steps"] or (warmup_cap > 0 and cpu >= warmup_cap * budget)):
                c_warm, warm_steps = cpu, step
            for group in opt.param_groups:  # LambdaLR: update k uses the multiplier of step k
                group["lr"] = lr * _lr_mult(step, cpu, budget, c_warm, warmup_cap)
            x0 = data[perm[i:i + B]]
            noise = torch.randn(x0.shape, generator=g)
            ts = torch.randint(0, PEER["num_train_timesteps"], (x0.shape[0],), generator=g).long()
            noisy = sched.add_noise(x0, noise, ts)
            loss = torch.nn.functional.mse_loss(model(noisy, ts).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), PEER["grad_clip"])
            opt.step()
            ema.step(model.parameters())
            for p in model.parameters():
                p.grad = None
            if not math.isfinite(float(loss)):
                raise FloatingPointError(f"diffusers recipe: non-finite loss at step {step}")
            step += 1
            images += x0.shape[0]
        epoch += 1
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    ema_model = peer_unet()
    ema.copy_to(ema_model.parameters())
    ema_model.eval().requires_grad_(False)
    info = {"num_params": count_params(model), "batch_size": B, "steps": step, "epochs": epoch,
            "warmup_done_cpu_s": c_warm, "warmup_steps": warm_steps}
    return Snapshot("diffusers", budget_min, B, lr, step, images, cpu, wall, ema_model), info


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample_diffusers(unet, noise: torch.Tensor, nfe: int, scheduler: str, batch: int) -> torch.Tensor:
    """Their pipelines' loop: scheduler.set_timesteps(nfe); x <- step(unet(x, t), t, x)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    base = DDPMScheduler(num_train_timesteps=PEER["num_train_timesteps"]).config
    cls = {"dpmsolver++": DPMSolverMultistepScheduler, "ddim": DDIMScheduler}[scheduler]
    out = []
    for i in range(0, noise.shape[0], batch):
        s = cls.from_config(base)
        s.set_timesteps(nfe)
        x = noise[i:i + batch] * s.init_noise_sigma
        for t in s.timesteps:
            eps = unet(s.scale_model_input(x, t), t).sample
            x = s.step(eps, t, x).prev_sample
        out.append(x)
    return torch.cat(out)


@torch.no_grad()
def sample_ours(den, noise: torch.Tensor, nfe: int, sampler: str, batch: int, **grid) -> torch.Tensor:
    out = []
    for i in range(0, noise.shape[0], batch):
        x, info = sample(den, noise[i:i + batch], sampler=sampler, steps=nfe, return_info=True, **grid)
        if abs(info.nfe - nfe) > 1e-9:
            raise RuntimeError(f"sampler {sampler} used NFE {info.nfe}, expected {nfe}")
        out.append(x)
    return torch.cat(out)


class _EpsNet(torch.nn.Module):
    """UNet2DModel as net(x_t, timestep) -> eps, for from_timestep_model."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t).sample


def score(snap: Snapshot, samplers: list[str], noise, nfe, batch, test_x, clf, log) -> None:
    for name in samplers:
        c0, w0 = time.process_time(), time.perf_counter()
        if snap.recipe.startswith("ours"):
            x = sample_ours(snap.model, noise, nfe, name, batch)
        elif name.startswith("diffusers-"):
            x = sample_diffusers(snap.model, noise, nfe, name.removeprefix("diffusers-"), batch)
        else:
            proc = DDPMTable()
            den = from_timestep_model(_EpsNet(snap.model), proc, "eps")
            x = sample_ours(den, noise, nfe, name, batch, sigma_min=float(proc.sigmas[0]),
                            sigma_max=float(proc.sigma_max))
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"{snap.recipe} / {name}: non-finite samples")
        fd = image_frechet(x.clamp(-1, 1), test_x, dataset="digits", classifier=clf)["fd"]
        snap.fd[name] = fd
        log(f"  {snap.recipe:9s} {snap.budget_min:g} min b{snap.batch} lr{snap.lr:g} {name:22s} FD {fd:8.3f}   "
            f"({time.process_time() - c0:.0f} CPU s, {time.perf_counter() - w0:.0f} s)")


# ----------------------------------------------------------------------------- report


def _fmt(v, nd=2):
    return "—" if v is None else f"{v:.{nd}f}"


def _best(snap: Snapshot) -> float | None:
    return min(snap.fd.values()) if snap.fd else None


def _tables(snaps: list[Snapshot], floor: float, samplers: dict) -> list[str]:
    cols = sorted({name for s in snaps for name in s.fd}, key=lambda n: (n.startswith("diffusers"), n))
    lines = ["| recipe | batch | lr | budget (CPU min) | steps | images | images / CPU s | CPU s | wall s | "
             + " | ".join(f"FD {c}" for c in cols) + " | best FD / floor |", "|" + "---|" * (10 + len(cols))]
    for s in snaps:
        best = _best(s)
        lines.append(f"| {s.recipe} | {s.batch} | {s.lr:g} | {s.budget_min:g} | {s.step} | {s.images} | "
                     f"{s.images / s.cpu_s:.0f} | {s.cpu_s:.0f} | {s.wall_s:.0f} | "
                     + " | ".join(_fmt(s.fd.get(c)) for c in cols) + f" | {_fmt(best / floor if best else None)} |")
    for b in sorted({s.budget_min for s in snaps}):
        at = [s for s in snaps if s.budget_min == b]
        sweep = [s for s in at if s.recipe == "diffusers"]
        batches, lrs = sorted({s.batch for s in sweep}), sorted({s.lr for s in sweep})
        if len(sweep) > 1:
            lines += ["", f"diffusers' recipe at {b:g} CPU-min, best FD over its samplers (rows: batch, columns: "
                      "peak learning rate):", "", "| batch | " + " | ".join(f"lr {x:g}" for x in lrs) + " |",
                      "|" + "---|" * (1 + len(lrs))]
            for bs in batches:
                row = [next((_best(s) for s in sweep if s.batch == bs and s.lr == x), None) for x in lrs]
                lines.append(f"| {bs} | " + " | ".join(_fmt(v) for v in row) + " |")
        ours = next((s for s in at if s.recipe == "ours"), None)
        dunet = next((s for s in at if s.recipe == "ours+diffusers-unet"), None)
        top = min(sweep, key=_best) if sweep else None
        default = next((s for s in sweep if s.batch == PEER["batch_size"] and s.lr == PEER["lr"]), None)
        lines += ["", f"Recipe vs network at {b:g} CPU-min (FD with each model's best sampler; ours under "
                  f"`{samplers['ours'][0]}` in brackets):", "", "| recipe | network | FD | FD / floor |",
                  "|---|---|---|---|"]
        for label, net, s in (("ours", "ours (UNet)", ours), ("ours", "diffusers' UNet2DModel", dunet),
                              ("diffusers, best of the sweep", "diffusers' UNet2DModel", top),
                              ("diffusers, its defaults (batch 16, lr 1e-4)", "diffusers' UNet2DModel", default)):
            if s is None:
                continue
            extra = f" [{_fmt(s.fd.get(samplers['ours'][0]))}]" if s.recipe.startswith("ours") else \
                f" (batch {s.batch}, lr {s.lr:g})"
            lines.append(f"| {label} | {net} | {_fmt(_best(s))}{extra} | {_fmt(_best(s) / floor)} |")
    return lines


def write_report(path: Path, args, snaps: list[Snapshot], floor: float, samplers: dict, env: dict,
                 total_wall: float) -> None:
    cpu_total = sum(s.cpu_s for s in snaps) / 60
    lines = ["# Training benchmark: digits, our recipe vs diffusers' DDPM recipe (swept), and recipe vs network", "",
             f"Command: `{env['command']}`", "",
             f"Machine: {env['machine']}; torch {env['torch']}, diffusers {env['diffusers']}; "
             f"`torch.set_num_threads({args.threads})`; {env['date']}; total wall time {total_wall / 60:.1f} min; "
             f"training budget used {cpu_total:.1f} CPU-min in all (scoring extra).", "",
             f"Budgets are CPU time of the process (`time.process_time()`), wall time beside it (the cores were "
             f"shared with other jobs). Fréchet distance (FD) in the features of the project's digits classifier "
             f"(test accuracy {env['clf_acc']:.3f}), {args.samples} samples at NFE {args.nfe} against the test split "
             f"(300 images); **floor ({min(args.samples, 1497)} train images vs the test split) = {floor:.3f}**. "
             f"Lower is better. The diffusers "
             f"recipe's warm-up ends after 500 steps or {args.warmup_cap:g} of the budget, whichever comes first.",
             "", *_tables(snaps, floor, samplers), "",
             "Samplers: `" + "`, `".join(samplers["ours"]) + "` are this package's; `diffusers-dpmsolver++` is "
             "`DPMSolverMultistepScheduler` (DPM-Solver++(2M), linspace timesteps) from the DDPMScheduler config as "
             "their pipelines do; the diffusers recipe's model under `" + samplers["ours"][0] + "` runs through "
             "`from_timestep_model` on its own sigma range.", "",
             "See `benchmarks/training.md` for the method and the reading."]
    write_results(path, "\n".join(lines) + "\n")


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


SAMPLERS = {"ours": [DEFAULT_SAMPLER, "dpmpp_2m"] if DEFAULT_SAMPLER != "dpmpp_2m" else ["dpmpp_2m"],
            "diffusers": ["diffusers-dpmsolver++"]}  # theirs under ours scored within noise of it (earlier runs)


def run_part(part: str, args) -> dict:
    """Train and score one piece (``ours:B``, ``ours-dunet:B`` or ``diffusers:B:batch:lr``); JSON-able result."""
    torch.set_num_threads(args.threads)
    test_x = load_dataset("digits", "test").x
    clf = load_classifier("digits")
    noise = torch.randn((args.samples, 1, 8, 8), generator=torch.Generator().manual_seed(args.seed + 12345))
    # one-off lazy imports (the first optimizer step imports torch._dynamo: ~2 CPU-s) are paid before any
    # budget starts, so neither recipe's budget holds them and ours' setup outside its loop stays small
    w = torch.zeros(1, requires_grad=True)
    w.sum().backward()
    torch.optim.AdamW([w], fused=True).step()
    torch.optim.AdamW([w]).step()
    kind, b, *rest = part.split(":")
    b = float(b)
    _log(f"{part}: run of {b:g} CPU-min")
    if kind in ("ours", "ours-dunet"):
        with tempfile.TemporaryDirectory(prefix="dl-trainbench-") as tmp:
            snap, info = train_ours(b, args.seed, Path(tmp), net=peer_spec() if kind == "ours-dunet" else None)
    else:
        snap, info = train_peer(b, args.seed, int(rest[0]), float(rest[1]), args.warmup_cap)
    _log(f"{part}: step {snap.step}, {snap.images / snap.cpu_s:.0f} img/CPU-s, wall {snap.wall_s:.0f} s")
    score(snap, SAMPLERS["ours" if kind.startswith("ours") else "diffusers"], noise, args.nfe, args.batch, test_x,
          clf, _log)
    return {"run": {k: v for k, v in snap.__dict__.items() if k != "model"}, "info": info}


def _run_parts(parts: list[str], args, raw_argv) -> dict:
    import contextlib

    results = {}
    work = contextlib.nullcontext(str(args.work)) if args.work else tempfile.TemporaryDirectory(prefix="dl-trainbench-")
    with work as tmp:
        Path(tmp).mkdir(parents=True, exist_ok=True)
        outs = {part: Path(tmp) / f"{part.replace(':', '-')}.json" for part in parts}
        results.update({p: json.loads(out.read_text()) for p, out in outs.items() if out.is_file()})  # a killed run's
        outs = {part: out for part, out in outs.items() if part not in results}
        part_of = {out: part for part, out in outs.items()}
        run_jobs([Job([sys.executable, "-m", "benchmarks.training", *raw_argv, "--part", part, "--part-out", str(out)],
                      out=out) for part, out in outs.items()],
                 args.jobs, lambda job, result: results.__setitem__(part_of[job.out], result))
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[2.0],
                    help="CPU-minute budgets (process time) of every piece (default: 2)")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128], help="diffusers recipe: batch sizes")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3], help="diffusers recipe: peak lrs")
    ap.add_argument("--warmup-cap", type=float, default=0.1,
                    help="diffusers recipe: the warm-up ends at 500 steps or at this fraction of the budget,\n"
                         "whichever comes first (0: always 500 steps, the script's own; default 0.1)")
    ap.add_argument("--no-dunet", action="store_true", help="skip our recipe on diffusers' UNet")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every training process (default 1)")
    ap.add_argument("--jobs", type=int, default=3,
                    help="pieces run as parallel processes. Budgets are CPU time per process, so this\n"
                         "changes the wall time, not the budgets (default 3)")
    ap.add_argument("--nfe", type=int, default=16, help="denoiser evaluations per sample (default 16)")
    ap.add_argument("--samples", type=int, default=1497, help="samples per score (default 1497 = train split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=500, help="sampling batch size")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/training.md"))
    ap.add_argument("--work", type=Path, help="keep each piece's result here; a rerun skips the pieces it holds")
    ap.add_argument("--report-only", action="store_true", help="write the table from the pieces --work holds")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(raw_argv)
    if any(not (m > 0) for m in args.minutes) or not (0 <= args.warmup_cap < 1):
        ap.error(f"--minutes must be > 0 and --warmup-cap in [0, 1), got {args.minutes}, {args.warmup_cap}")
    if args.jobs < 1 or args.threads < 1:
        ap.error("--jobs and --threads must be >= 1")
    if args.report_only and not args.work:
        ap.error("--report-only needs --work")
    if args.part:
        args.part_out.write_text(json.dumps(run_part(args.part, args)))
        return
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    test_x, train_x = load_dataset("digits", "test").x, load_dataset("digits", "train").x
    clf = load_classifier("digits")
    floor = image_frechet(train_x[:args.samples], test_x, dataset="digits", classifier=clf)["fd"]  # same size
    _log(f"floor (train vs test) FD {floor:.3f}; classifier test accuracy {clf.test_accuracy:.3f}")
    parts = []
    for b in sorted(args.minutes, reverse=True):  # longest first: the wall time is set by the longest piece
        parts += [f"ours:{b:g}"] + ([] if args.no_dunet else [f"ours-dunet:{b:g}"])
        parts += [f"diffusers:{b:g}:{bs}:{lr:g}" for bs in args.batches for lr in args.lrs]
    if args.report_only:  # the pieces --work holds (a run that did not finish them all)
        keep = {p: Path(args.work) / f"{p.replace(':', '-')}.json" for p in parts}
        results = {p: json.loads(f.read_text()) for p, f in keep.items() if f.is_file()}
        parts = [p for p in parts if p in results]
    else:
        results = _run_parts(parts, args, raw_argv)
    snaps = [Snapshot(model=None, **results[p]["run"]) for p in parts]
    snaps.sort(key=lambda sn: (sn.budget_min, not sn.recipe.startswith("ours"), sn.recipe, sn.batch, sn.lr))
    import diffusers

    env = {"command": " ".join(["python -m benchmarks.training", *raw_argv]),
           "machine": f"{platform.machine()}, {args.jobs} parallel processes of {args.threads} torch thread(s) on "
                      f"{__import__('os').cpu_count()} logical CPUs",
           "torch": torch.__version__, "diffusers": diffusers.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "clf_acc": clf.test_accuracy}
    write_report(args.out, args, snaps, floor, SAMPLERS, env, time.perf_counter() - t_start)
    raw = [{k: v for k, v in s.__dict__.items() if k != "model"} for s in snaps]
    write_results(args.out.with_suffix(".json"), json.dumps({"floor": floor, "runs": raw,
                                                             "infos": {p: results[p]["info"] for p in parts},
                                                             "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                      for k, v in vars(args).items()}}, indent=1))
    _log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
