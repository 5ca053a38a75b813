"""The training loop: AdamW, warm-up, clipping, EMA, budgets, checkpoints, exact resume, DDP.

(Longer than 500 lines because the run's guarantees, stated here, and the loop that keeps them belong together.)

The loop is generic over training objectives (:mod:`diffusionlens.objectives`): it builds the one
``cfg.objective`` names, hands it the batch and the run's random streams, and averages the
per-sample losses it returns; it checkpoints the objective's own state with the rest.

Determinism. Every random choice has its own generator seeded from ``cfg.seed``: the data order
(epoch e is the permutation ``randperm(N)`` of a generator seeded by (seed, e), so the batch of step
k is a pure function of k), the objective's named streams (:class:`~diffusionlens.objectives.Streams`;
the denoising objective draws noise levels from ``t``, noise and label drops from ``noise``), and the
network's initialisation and dropout (torch's global generator, seeded inside a ``fork_rng`` so the
caller's global state is untouched). The learning rate and
the EMA decay are pure functions of the step. A checkpoint stores the generator states (as lists
of ints), the optimizer moments and step counts, the EMA and the weights, so resuming from it
replays the remaining steps exactly: a run killed at any moment (even by SIGKILL, even while a
checkpoint is being written) and resumed ends at the same weights as an uninterrupted run with the
same seed. Steps after the last complete checkpoint are recomputed, and ``metrics.jsonl`` is cut
back to that step on resume. A ``minutes`` budget counts the elapsed time of earlier sessions
(wall or process CPU time, ``clock``), so the step count at which it stops, and the learning rate
of its cool-down, are of course not deterministic; a ``steps`` budget is.

Distributed: see :mod:`diffusionlens.training` for torchrun usage. Every rank draws the global
batch's indices, noise levels, noise and label drops and keeps its contiguous slice; DDP averages
the gradients, so W ranks reproduce the single-process run with the same global batch. Only rank
0 writes files and shows progress.

Run directory (written by rank 0)::

    run_dir/config.json          the resolved TrainConfig (sigma_data and net filled in)
    run_dir/metrics.jsonl        {"step", "loss", "lr", "grad_norm", "images_per_s", "elapsed_s"} per
                                 logged step; {"step", "eval": {...}, "elapsed_s"} per evaluation
                                 (elapsed_s on the budget's clock)
    run_dir/checkpoints/         step-XXXXXXXX.safetensors + .json (see checkpoint.py)
    run_dir/result.json          written when training finishes (TrainResult)

    run_dir/.lock                the writer's pid while training (one writer per run; a stale lock,
                                 whose process is gone, is taken over)

Nothing is created or changed before the configuration, the data, the network and (on resume) the
checkpoint have been validated, and a run that fails before its first checkpoint removes the
directory it created. The first checkpoint comes early (step ``min(ckpt_every, 50)`` or after a
minute), and SIGINT / SIGTERM save one before stopping, so an interrupted run keeps its progress.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._util import read_jsonl
from ..data import load_dataset
from ..model import Denoiser
from ..nets import build_net, count_params
from ..objectives import Batch, Objective, Streams, build_objective
from .checkpoint import (
    acquire_lock,
    atomic_write,
    check_replaceable,
    check_writable,
    clean_stale,
    list_checkpoints,
    prune,
    release_lock,
    remove_run,
    save_checkpoint,
)
from .config import TrainConfig, resolve_net
from .distributed import DistInfo, all_mean, broadcast_flag, broadcast_float, setup, teardown
from .ema import ema_beta, update_ema
from .job import Heartbeat, Interrupts, project_total
from .state import (
    DataOrder,
    load_denoiser,
    optimizer_state,
    read_resume,
    restore,
    resume_config,
)

__all__ = ["TrainResult", "TrainState", "train", "load_denoiser", "lr_at", "resume_config"]

EARLY_STEPS = 50  # the first checkpoint comes at min(ckpt_every, EARLY_STEPS) ...
EARLY_SECONDS = 60.0  # ... or after this much wall time, whichever is first


@dataclass(frozen=True)
class TrainResult:
    """Summary of a finished run (also written to ``run_dir/result.json``)."""

    run_dir: str
    step: int
    loss: float
    elapsed_s: float
    images_per_s: float
    checkpoint: str | None
    stopped_by: str
    num_params: int


@dataclass(frozen=True)
class TrainState:
    """What a ``callback(step, state)`` sees: the resolved config, the raw network and its EMA."""

    step: int
    config: TrainConfig
    net: nn.Module
    ema: nn.Module
    run_dir: Path

    def denoiser(self, ema: bool = True) -> Denoiser:
        """The canonical denoiser of the current (EMA) weights."""
        return self.config.denoiser(self.ema if ema else self.net)


def lr_at(cfg: TrainConfig, step: int, progress: float | None = None) -> float:
    """Learning rate of update ``step`` (0-based): linear warm-up over ``warmup_steps``, constant, and a
    linear cool-down to 0 over the last ``cooldown`` fraction of the budget.

    ``progress`` is the fraction of the budget spent before this update (default: ``step / steps``;
    the loop passes the larger of that and the fraction of ``minutes`` spent).
    """
    if progress is None:
        progress = step / cfg.steps if cfg.steps is not None else 0.0
    warm = 1.0 if cfg.warmup_steps == 0 else min(1.0, (step + 1) / cfg.warmup_steps)
    cool = 1.0 if cfg.cooldown == 0 else min(1.0, max(0.0, (1.0 - progress) / cfg.cooldown))
    return cfg.lr * warm * cool


def _resolve(cfg: TrainConfig, data) -> TrainConfig:
    return cfg.replace(
        sigma_data=cfg.sigma_data if cfg.sigma_data is not None else round(data.sigma_data, 6),
        net=resolve_net(cfg, data),
    )


# ---------------------------------------------------------------------------- one run


@dataclass
class _Window:
    """Loss and throughput over the steps since the last log line. Its loss sum is checkpointed, so a resumed
    run logs the same means as an uninterrupted one (a DDP run restores rank 0's sum on every rank)."""

    loss: float = 0.0
    n: int = 0
    seconds: float = 0.0
    last_loss: float = math.nan
    last_ips: float = math.nan

    def close(self, run) -> float:
        mean = float(all_mean(torch.tensor(self.loss / self.n, device=run.info.device), run.info))
        self.last_loss, self.last_ips = mean, run.cfg.batch_size * self.n / max(self.seconds, 1e-9)
        self.loss, self.n, self.seconds = 0.0, 0, 0.0
        return mean


@dataclass
class _Run:
    """Everything one training session holds; built and validated by :func:`_prepare` before any write."""

    cfg: TrainConfig
    info: DistInfo
    run_dir: Path
    data: object
    objective: Objective
    net: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    streams: Streams
    model: Denoiser
    rows: slice | None
    n_params: int
    start: int = 0
    elapsed: float = 0.0
    last_ckpt: Path | None = None
    metrics: bytes | None = None
    window: _Window = field(default_factory=_Window)
    created: bool = False
    order: DataOrder | None = field(default=None, repr=False)
    x_all: torch.Tensor | None = field(default=None, repr=False)  # the data (and labels) on the device
    y_all: torch.Tensor | None = field(default=None, repr=False)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def log(self, rec: dict) -> None:
        if self.info.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()


def train(cfg: TrainConfig, run_dir, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          callback=None) -> TrainResult:
    """Train the model that ``cfg`` describes with its objective, writing into ``run_dir`` (see the
    module docstring).

    Args:
        cfg: the run's configuration (for a resume, :func:`resume_config` reads the run's own).
        run_dir: output directory; it must not hold a run unless ``resume``.
        resume: continue from the newest checkpoint in ``run_dir``; a missing directory or one without
            a loadable checkpoint is a ValueError. The stored config must equal ``cfg`` except for
            budgets and bookkeeping fields.
        overwrite: start over in a directory that holds a run: its files (only those of a run's
            layout; a directory holding anything else is refused) are removed once the lock is
            taken. Not with ``resume``.
        progress: show a tqdm bar (rank 0) with loss and throughput.
        callback: ``callback(step, state: TrainState) -> dict | None`` called on rank 0 every
            ``cfg.eval_every`` steps and at the end; a returned dict is logged as an eval entry.
            A returned dict whose ``"stop"`` is true ends training after that step
            (``stopped_by="callback"``; e.g. a CPU-time budget); the key is not logged.

    A second writer on the same run fails with a ValueError naming the holder's pid. SIGINT and
    SIGTERM save a checkpoint and then raise KeyboardInterrupt / SystemExit(143). A diverged loss
    raises FloatingPointError naming the step. Launched under torchrun, every rank calls this
    function with the same arguments.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    info = setup(cfg.device, cfg.timeout)
    try:
        with torch.random.fork_rng(devices=[]):
            return _train(cfg, Path(run_dir), resume, overwrite, progress, callback, info)
    finally:
        teardown(info)


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, progress: bool, callback,
           info: DistInfo) -> TrainResult:
    run = _prepare(cfg, run_dir, resume, overwrite, info)
    lock = None
    try:
        if info.is_main:
            lock = _open_run_dir(run, overwrite)
        with Interrupts() as signals:
            step, stopped_by, window = _loop(run, progress, callback, signals)
        return _finish(run, step, stopped_by, window, callback)
    except BaseException:
        if info.is_main and run.created and run_dir.exists() and not list_checkpoints(run.ckpt_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            release_lock(lock)


def _prepare(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, info: DistInfo) -> _Run:
    """Load and check everything (data, config, objective, network, the checkpoint on resume); no writes."""
    data = load_dataset(cfg.dataset, "train", seed=cfg.seed, n=cfg.n_train)
    cfg = _resolve(cfg, data)
    if cfg.batch_size % info.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {info.world} ranks")
    objective = build_objective(cfg, data)
    meta = tensors = ckpt = None
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True exclude each other (continue the run, or start over)")
    if resume:
        meta, tensors, ckpt = read_resume(cfg, run_dir)
    elif overwrite:
        check_replaceable(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) to continue it, "
                              f"overwrite=True (--overwrite) to start over, or choose a new directory")
    if info.is_main:
        check_writable(run_dir)
    dev = info.device
    torch.manual_seed(cfg.seed)
    net = build_net(cfg.net).to(dev)
    objective.initialise(net)  # e.g. a distillation's student starts from its teacher's weights
    if cfg.channels_last and data.is_image:
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).requires_grad_(False)
    # the fused kernel (one pass over all parameters) where the device has one: much faster than the
    # per-tensor loop for networks of many small tensors, same update rule
    fused = dev.type in ("cpu", "cuda") and all(p.is_floating_point() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
                            fused=fused or None)
    streams = Streams(cfg.seed)
    for name in objective.streams:
        streams[name]
    model = net
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    per_rank = cfg.batch_size // info.world
    rows = slice(info.rank * per_rank, (info.rank + 1) * per_rank) if info.enabled else None
    run = _Run(cfg, info, run_dir, data, objective, net, ema, opt, streams, cfg.denoiser(model), rows,
               count_params(net), order=DataOrder(len(data), cfg.seed), x_all=data.x.to(dev),
               y_all=data.y.to(dev) if cfg.conditional else None)
    if meta is not None:
        restore(run, meta, tensors, ckpt)
    return run


def _open_run_dir(run: _Run, overwrite: bool) -> Path:
    """Rank 0: create the directory, take its lock, clear what a kill left (or, with ``overwrite``, the
    old run), write config and metrics."""
    run.created = overwrite or not run.run_dir.exists()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(run.run_dir)
    if overwrite:
        remove_run(run.run_dir)
    clean_stale(run.run_dir)
    atomic_write(run.run_dir / "config.json", run.cfg.to_json().encode())
    metrics = run.run_dir / "metrics.jsonl"
    if run.start == 0:
        metrics.unlink(missing_ok=True)
    elif run.metrics is not None:
        atomic_write(metrics, run.metrics)
    return lock


def _save(run: _Run, step: int) -> Path | None:
    """Rank 0: checkpoint every piece of state at ``step``, then prune old checkpoints."""
    if not run.info.is_main:
        return None
    tensors = {f"model/{k}": v for k, v in run.net.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in run.ema.state_dict().items()})
    opt_tensors, opt_meta = optimizer_state(run.opt)
    tensors.update(opt_tensors)
    obj = run.objective.state_dict()
    tensors.update({f"objective/{k}": v for k, v in obj.items() if isinstance(v, torch.Tensor)})
    meta = {"config": run.cfg.to_dict(), "optimizer": opt_meta, "elapsed_s": run.elapsed,
            "world_size": run.info.world, "num_params": run.n_params,
            "rng": {**run.streams.state_dict(), "torch": torch.get_rng_state().tolist()},
            "objective": {k: v for k, v in obj.items() if not isinstance(v, torch.Tensor)},
            "log_window": [run.window.loss, run.window.n]}
    path = save_checkpoint(run.ckpt_dir, step, tensors, meta)
    prune(run.ckpt_dir, run.cfg.keep_checkpoints)
    run.last_ckpt = path
    return path


# ---------------------------------------------------------------------------- the loop


def _step(run: _Run, step: int, progress: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimiser update at ``step``: (mean loss, gradient norm, learning rate)."""
    cfg, dev = run.cfg, run.info.device
    lr = lr_at(cfg, step, progress)
    for group in run.opt.param_groups:
        group["lr"] = lr
    idx = run.order.indices(step, cfg.batch_size).to(dev)
    x0 = run.x_all[idx]
    if cfg.channels_last and run.data.is_image:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    labels = run.y_all[idx] if run.y_all is not None else None
    try:
        per = run.objective(run.model, Batch(x0, labels, run.rows), run.streams)
    except FloatingPointError as e:
        raise FloatingPointError(f"step {step}: {e}") from None
    if not bool(torch.isfinite(per).all()):
        raise FloatingPointError(f"step {step}: non-finite loss from the {cfg.objective!r} objective")
    loss = per.mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(run.net.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    if not bool(torch.isfinite(gn)):
        raise FloatingPointError(f"step {step}: non-finite gradient norm {gn.item()} (lr {lr:.3g})")
    run.opt.step()
    return loss, gn, lr


def _ckpt_due(run: _Run, step: int, wall0: float) -> bool:
    every = run.cfg.ckpt_every
    if not every:
        return False
    if step % every == 0:
        return True
    return run.last_ckpt is None and (step == min(every, EARLY_STEPS) or time.perf_counter() - wall0 >= EARLY_SECONDS)


def _loop(run: _Run, progress: bool, callback, signals: Interrupts) -> tuple[int, str, _Window]:
    """Steps until a budget, the callback or a signal stops it: (last step, stopped_by, window)."""
    cfg, info = run.cfg, run.info
    bar = None
    if info.is_main and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=run.start, desc="train", unit="step", dynamic_ncols=True)
    beat = Heartbeat(bar)
    budget = math.inf if cfg.minutes is None else 60.0 * cfg.minutes
    total = cfg.steps if cfg.steps is not None else math.inf
    clock = time.perf_counter if cfg.clock == "wall" else time.process_time
    t_session, elapsed0, wall0 = clock(), run.elapsed, time.perf_counter()
    step, stopped_by, win = run.start, "steps", run.window
    try:
        while step < total:
            fraction = step / total
            if cfg.minutes is not None:
                spent = broadcast_float(run.elapsed, info)  # rank 0's clock: all ranks stop and anneal together
                if spent >= budget:
                    stopped_by = "minutes"
                    break
                fraction = max(fraction, spent / budget)
            if step == run.start and info.is_main:
                (run.run_dir / "result.json").unlink(missing_ok=True)  # the run is no longer finished
            t0 = time.perf_counter()
            loss, gn, lr = _step(run, step, fraction)
            step += 1
            update_ema(run.ema, run.net, ema_beta(cfg.ema, step, decay=cfg.ema_decay, sigma_rel=cfg.ema_std))
            win.loss, win.n = win.loss + float(loss.detach()), win.n + 1
            win.seconds += time.perf_counter() - t0
            run.elapsed = elapsed0 + clock() - t_session
            if step % cfg.log_every == 0 or step == total:
                mean = win.close(run)
                run.log({"step": step, "loss": mean, "lr": lr, "grad_norm": float(gn), "images_per_s": win.last_ips,
                         "elapsed_s": run.elapsed})
                beat.fields.update(loss=f"{mean:.4f}", img_s=f"{win.last_ips:.0f}")
            beat.step_done()
            if bar is not None:
                project_total(bar, cfg, step - run.start, run.elapsed - elapsed0, budget - run.elapsed)
                bar.update(1)
            if _ckpt_due(run, step, wall0):
                _save(run, step)
            if callback is not None and cfg.eval_every and step % cfg.eval_every == 0:
                stop = info.is_main and _evaluate(callback, step, run)
                if broadcast_flag(stop, info):  # every rank reaches this line at the same steps
                    stopped_by = "callback"
                    break
            if broadcast_flag(signals.signum is not None, info):
                _interrupted(run, step, signals.signum)
    finally:
        beat.stop()
        if bar is not None:
            bar.close()
    return step, stopped_by, win


def _finish(run: _Run, step: int, stopped_by: str, win: _Window, callback) -> TrainResult:
    """The final checkpoint, the last evaluation and result.json."""
    cfg, info = run.cfg, run.info
    done = list_checkpoints(run.ckpt_dir)
    if not done or done[-1][0] != step:
        _save(run, step)  # with the open log window, which a resumed run continues
    if win.n:
        win.close(run)
    if (callback is not None and info.is_main and stopped_by != "callback"
            and not (cfg.eval_every and step % cfg.eval_every == 0)):
        _evaluate(callback, step, run)
    loss, ips = win.last_loss, win.last_ips
    if step == run.start:  # nothing ran in this session (a finished run resumed): keep its numbers
        loss, ips = _previous_summary(run.run_dir, step)
    result = TrainResult(run_dir=str(run.run_dir), step=step, loss=loss, elapsed_s=run.elapsed, images_per_s=ips,
                         checkpoint=str(run.last_ckpt) if run.last_ckpt is not None else None,
                         stopped_by=stopped_by, num_params=run.n_params)
    if info.is_main:
        summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                   for k, v in result.__dict__.items()}
        atomic_write(run.run_dir / "result.json", json.dumps(summary, indent=1).encode())
    return result


def _previous_summary(run_dir: Path, step: int) -> tuple[float, float]:
    """(loss, images/s) of the last logged window at or before ``step`` (NaN if there is none)."""
    loss = ips = math.nan
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for rec in read_jsonl(path):
            if "loss" in rec and rec.get("step", 0) <= step:
                loss, ips = float(rec["loss"]), float(rec.get("images_per_s", math.nan))
    return loss, ips


def _evaluate(callback, step: int, run: _Run) -> bool:
    """Run the callback in eval mode and log its dict; returns whether it asked to stop."""
    net, ema = run.net, run.ema
    was = (net.training, ema.training)
    net.eval()
    ema.eval()
    try:
        out = callback(step, TrainState(step=step, config=run.cfg, net=net, ema=ema, run_dir=run.run_dir))
    finally:
        net.train(was[0])
        ema.train(was[1])
    stop = False
    if out:
        out = dict(out)
        stop = bool(out.pop("stop", False))
    if out:
        run.log({"step": step, "eval": out, "elapsed_s": run.elapsed})
    return stop


# ---------------------------------------------------------------------------- signals


def _interrupted(run: _Run, step: int, signum) -> None:
    done = list_checkpoints(run.ckpt_dir)
    path = done[-1][1] if done and done[-1][0] == step else _save(run, step)
    name = signal.Signals(signum).name if signum is not None else "a signal on another rank"
    msg = f"interrupted by {name} at step {step}: saved checkpoint {path}; continue with resume=True (--resume)"
    if run.info.is_main:
        print(msg, file=sys.stderr, flush=True)
    if signum == signal.SIGTERM:
        raise SystemExit(128 + int(signal.SIGTERM))
    raise KeyboardInterrupt(msg)


