"""Run directories of the RNN perspective: self-conditioned runs, experts per noise range, runs
fine-tuned through unrolled sampler steps — all opened by :func:`diffusionlens.run.open_run` like any run.

Layouts::

    run_dir/experts.json, expert-0/, expert-1/, ...    train_experts: one ordinary run per noise range
    out_dir/config.json, checkpoints/, finetune.json    finetune: the fine-tuned weights as a run

A self-conditioned run is an ordinary run whose net spec has ``"self_condition": true``; it opens as a
:class:`~diffusionlens.rnn.SelfConditioned` denoiser, so ``sample`` needs nothing.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from ..rnn import (
    AgainstData,
    AgainstSolve,
    Experts,
    SelfConditioned,
    boundaries_of_ranges,
    check_boundaries,
    equal_share_boundaries,
    expert_configs,
    finetune_unrolled,
    is_self_conditioned,
)
from .files import check_writable, save_json

__all__ = ["EXPERTS_FILE", "is_experts", "load", "self_conditioned", "plan_experts", "train_experts", "finetune",
           "TARGETS", "recurrence"]

EXPERTS_FILE = "experts.json"
TARGETS = ("solve", "data")


def is_experts(path) -> bool:
    """Whether ``path`` is a directory of experts (it holds ``experts.json``)."""
    return (Path(path) / EXPERTS_FILE).is_file()


def load(path, device: str = "cpu"):
    """(canonical denoiser, TrainConfig) of a run directory: experts composed, self-conditioning wrapped."""
    from ..training import load_denoiser

    path = Path(path)
    if is_experts(path):
        return _load_experts(path, device)
    den, cfg = load_denoiser(path, device=device)
    return (SelfConditioned(den) if is_self_conditioned(cfg.net) else den), cfg


def _load_experts(path: Path, device: str):
    where = path / EXPERTS_FILE
    try:
        names = json.loads(where.read_text())["experts"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable experts file {where}: {e}") from None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{where}: 'experts' must be a non-empty list of sub-directory names, got {names!r}")
    subs = [(path / n).resolve() for n in names]
    outside = [n for n, s in zip(names, subs) if path.resolve() not in s.parents or is_experts(s)]
    if outside:
        raise ValueError(f"{where}: expert {outside[0]!r} is not a run directory inside {path}")
    loaded = sorted((load(s, device) for s in subs), key=lambda dc: dc[1].sigma_range[0])
    cfgs = [c for _, c in loaded]
    bounds = boundaries_of_ranges([c.sigma_range for c in cfgs])
    cfg = cfgs[0].replace(t_max=cfgs[-1].t_max)  # the composite spans every expert's range
    return Experts([d for d, _ in loaded], bounds), cfg


def self_conditioned(cfg):
    """``cfg`` trained with self-conditioning: the objective and a network with the extra input (the data
    set's default network unless ``cfg.net`` names one)."""
    from ..data import load_dataset
    from ..training.config import resolve_net

    if cfg.conditional:  # guidance would hide the estimate the sampler threads: refuse rather than drop it
        raise ValueError("self-conditioning is implemented for unconditional runs; drop --conditional")
    net = resolve_net(cfg, load_dataset(cfg.dataset, "test", seed=cfg.seed))
    if net["kind"] not in ("mlp", "unet"):
        raise ValueError(f"self-conditioning needs an mlp or unet network, got {net['kind']!r}")
    return cfg.replace(objective="self-conditioning", net={**net, "self_condition": True})


def plan_experts(cfg, *, experts: int | None = None, boundaries=None) -> list:
    """The experts' TrainConfigs: ``boundaries`` (noise levels inside the training range) or ``experts``
    equal shares of the training density (default 2); the budget (steps, minutes) is split equally."""
    if boundaries is not None:
        b = check_boundaries(boundaries, None if experts is None else experts, cfg.sigma_range)
    else:
        b = equal_share_boundaries(cfg.loss(sigma_data=cfg.sigma_data or 0.5), 2 if experts is None else experts)
    k = len(b) + 1
    budget = {"steps": None if cfg.steps is None else max(1, cfg.steps // k),
              "minutes": None if cfg.minutes is None else cfg.minutes / k}
    return [c.replace(**budget) for c in expert_configs(cfg, b)]


def train_experts(cfg, run_dir, *, experts: int | None = None, boundaries=None, base=None,
                  progress: bool = True) -> list:
    """Train one expert per noise range into ``run_dir/expert-<j>/`` independently, then write
    ``run_dir/experts.json``; returns the TrainResults. ``run_dir`` must be new or empty.

    ``base``: a trained run each expert starts from (its weights, EMA and optimiser state; the experts take
    its stored configuration, with ``cfg``'s budget, clock and device); None: each starts from scratch.
    """
    if cfg.conditional:
        raise ValueError("experts per noise range are implemented for unconditional runs; drop --conditional")
    from ..training import train

    if base is not None:
        cfg = _base_config(base).replace(steps=cfg.steps, minutes=cfg.minutes, clock=cfg.clock, device=cfg.device)
    cfgs = plan_experts(cfg, experts=experts, boundaries=boundaries)
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} is not empty: experts are trained into a new directory")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    names = [f"expert-{j}" for j in range(len(cfgs))]
    try:
        check_writable(run_dir)
        results = []
        for c, n in zip(cfgs, names):
            if base is not None:
                _start_from(base, c, run_dir / n)
            results.append(train(c, run_dir / n, resume=base is not None, progress=progress))
        save_json(run_dir / EXPERTS_FILE, {"experts": names, "sigma_ranges": [list(c.sigma_range) for c in cfgs]})
    except BaseException:
        # an interrupted or failed set of experts is no run: leave nothing half-written
        for n in names:
            shutil.rmtree(run_dir / n, ignore_errors=True)
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return results


def _base_config(base):
    from ..training.checkpoint import latest_checkpoint
    from ..training.state import resume_config

    if is_experts(base) or latest_checkpoint(Path(base)) is None:
        raise ValueError(f"base {str(base)!r} is not a trained run (a directory with a checkpoint)")
    return resume_config(base)


def _start_from(base, cfg, expert_dir: Path) -> None:
    """Seed ``expert_dir`` with the base run's newest checkpoint as step 0 of ``cfg``, so that training it with
    ``resume=True`` starts from the base model (the training loop itself needs no option for this)."""
    from ..training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    meta, tensors = load_checkpoint(latest_checkpoint(Path(base)))
    meta = {k: v for k, v in meta.items() if k not in ("format", "version", "step", "tensors", "sha256")}
    save_checkpoint(expert_dir / "checkpoints", 0, tensors, {**meta, "config": cfg.to_dict(), "elapsed_s": 0.0})


def finetune(run, out, *, k: int = 2, sampler: str = "euler", target: str = "solve", steps: int | None = 200,
             minutes: float | None = None, batch_size: int = 32, lr: float = 1e-4, grid_steps: int = 8,
             solve_steps: int = 32, seed: int = 0, progress: bool = True) -> dict:
    """Fine-tune an opened run through ``k`` unrolled ``sampler`` steps and write the result as a new run
    ``out`` (see :mod:`diffusionlens.rnn.unroll`). ``target``: ``"solve"`` (a ``solve_steps``-step Heun
    solve of the run as it was) or ``"data"`` (windows of the ``grid_steps``-step grid on the training
    data). Returns what ``out/finetune.json`` holds."""
    from ..data import load_dataset
    from ..training.checkpoint import save_checkpoint

    if target not in TARGETS:
        raise ValueError(f"unknown fine-tuning target {target!r}; choose one of: {', '.join(TARGETS)}")
    if isinstance(run.denoiser, Experts):
        raise ValueError(f"{run.path} is a directory of experts: fine-tune each expert's run instead")
    from .students import own_sampling

    if own_sampling(run.denoiser) is not None or run.config.objective not in ("denoising", "self-conditioning"):
        raise ValueError(f"{run.path}: a run trained with objective {run.config.objective!r} does not sample with "
                         "the generic samplers, so fine-tuning through their steps does not apply")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: a fine-tuned run is written into a new directory")
    cfg = run.config
    model = copy.deepcopy(run.denoiser).requires_grad_(True)
    lo, hi = run.sigma_range
    if target == "data":
        data = load_dataset(cfg.dataset, "train", seed=cfg.seed, n=cfg.n_train).x.to(run.device)
        goal, weight = AgainstData(data, grid_steps), _loss_weight(cfg)
        if k > grid_steps:
            raise ValueError(f"unroll depth k={k} is larger than the grid ({grid_steps} steps)")
    else:
        shape = tuple(load_dataset(cfg.dataset, "test", seed=cfg.seed).x.shape[1:])
        goal, weight = AgainstSolve(None, solve_steps, "heun", shape), None
    out.mkdir(parents=True, exist_ok=True)
    check_writable(out)
    res = finetune_unrolled(model, goal, k=k, sampler=sampler, steps=steps, minutes=minutes, batch_size=batch_size,
                            lr=lr, sigma_min=lo, sigma_max=hi, seed=seed, loss_weight=weight, progress=progress)
    net = getattr(model, "denoiser", model).net
    state = net.state_dict()
    tensors = {**{f"model/{n}": v for n, v in state.items()}, **{f"ema/{n}": v.clone() for n, v in state.items()}}
    info = {"from": str(run.path), "k": k, "sampler": sampler, "target": target, "steps": res.steps,
            "cpu_seconds": res.seconds, "batch_size": batch_size, "lr": lr, "grid_steps": grid_steps,
            "solve_steps": solve_steps, "seed": seed, "loss_first": res.losses[:1], "loss_last": res.losses[-1:]}
    save_json(out / "config.json", cfg.to_dict())
    save_checkpoint(out / "checkpoints", max(res.steps, 1), tensors, {"config": cfg.to_dict(), "finetune": info})
    save_json(out / "finetune.json", info)
    return info


def _loss_weight(cfg):
    """The training loss's weight of the x0 error at noise level sigma (what the data target uses)."""
    loss = cfg.loss()

    def weight(sigma: float) -> float:
        t = loss.process.t_of_sigma(torch.tensor([sigma], dtype=torch.float64))
        return float(loss.x0_space_weight(loss.process.coefs(t))[0])

    return weight


def recurrence(denoiser, cfg, n: int = 4, *, sampler: str = "dpmpp_2m", steps: int = 8, seed: int = 0) -> dict:
    """Sampling as a recurrent network, recorded: ``n`` samples' canvas before every step and after the last
    (``canvas`` (steps + 1, n, ...)), the model's estimate of x0 at every step (``estimate`` (steps, n, ...)),
    and the grid (``sigmas``, steps + 1 floats), for ``sampler`` on the run's sampling range."""
    from .. import samplers
    from .._util import device_of
    from ..data import load_dataset
    from ._core import sampling_range

    lo, hi = sampling_range(cfg)
    shape = tuple(load_dataset(cfg.dataset, "test", seed=cfg.seed).data_shape)
    noise = samplers.randn((n, *shape), torch.Generator().manual_seed(seed), device=device_of(denoiser))
    canvas, estimate = [], []

    def record(info: dict) -> None:
        canvas.append(info["x"].detach().cpu())
        estimate.append(info["denoised"].detach().cpu())

    with torch.no_grad():
        _, info = samplers.sample(denoiser, noise, sampler=sampler, steps=steps, sigma_min=lo, sigma_max=hi,
                                  callback=record, return_info=True)
    sigmas = info.sigmas.tolist()
    first = noise.cpu() * sigmas[0]
    return {"sigmas": sigmas, "canvas": torch.stack([first, *canvas]), "estimate": torch.stack(estimate)}
