"""Interpolant runs on the run layer: restoration (InDI), reflow, and the paths view of the report.

    from diffusionlens import run
    r = run.open_run("runs/indi-blur")                    # trained with --source degraded:blur --coupling paired
    res = run.interpolants.restore(r, steps=(1, 2, 4, 8))  # restore-test.safetensors + .json + .png
    run.interpolants.reflow("runs/flow", name="flow-reflow", minutes=2)  # an ordinary run: sample it in 1 step

An interpolant run is a flow run (process ``flow``, param ``velocity``) whose network is the velocity
b(x_t, t) = net(x_t, t); its source and coupling are ``objective_options`` of its config
(:func:`diffusionlens.interpolants.objective.interpolant_options`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ._core import RUNS, find_run
from .files import check_writable, output_stem, save_json, save_tensors

__all__ = ["velocity", "source_spec", "degradation", "restorations", "restore", "reflow", "paths_view", "RESTORE_STEPS"]

RESTORE_STEPS = (1, 2, 4, 8, 16)
"""InDI step counts ``restore`` compares by default (1 = the MMSE regressor)."""


def source_spec(cfg) -> str | None:
    """The source of an interpolant run's config (``gaussian`` for reflow runs), None for other runs."""
    from ..interpolants.objective import ALIASES, interpolant_options

    if cfg.objective == "reflow":
        return "gaussian"
    if cfg.objective == "interpolant" or cfg.objective in ALIASES:
        return interpolant_options(cfg)["source"]
    return None


def velocity(run):
    """The run's velocity field v(x, t) (no gradients); ValueError for a run that is not a velocity flow run."""
    from ..interpolants import net_velocity

    cfg = run.config
    if cfg.process != "flow" or cfg.param != "velocity" or not hasattr(run.denoiser, "net"):
        raise ValueError(f"{str(run.path)!r} is not a velocity run of the flow process (process={cfg.process!r}, "
                         f"param={cfg.param!r}); train one with --objective interpolant")
    return net_velocity(run.denoiser.net)


def degradation(run):
    """The degraded source (:class:`~diffusionlens.interpolants.Degraded`) a paired run was trained on."""
    from ..data import load_dataset
    from ..interpolants.objective import interpolant_options, source_of

    spec = source_spec(run.config)
    if spec is None or not spec.startswith("degraded:"):
        raise ValueError(f"restore needs a run trained on a degraded source (train --objective interpolant --source "
                         f"degraded:KIND --coupling paired); {str(run.path)!r} has source {spec or 'none'} "
                         f"(objective {run.config.objective!r})")
    opts = interpolant_options(run.config)
    if opts["path"] != "linear" or opts["noise"]:
        raise ValueError(f"InDI restores along the linear noiseless interpolant; {str(run.path)!r} was trained with "
                         f"path {opts['path']!r} and noise {opts['noise']!r}")
    return source_of(spec, load_dataset(run.config.dataset, "test"))


def _inputs(run, split: str | None, input_file, n: int, seed: int):
    """(degraded, clean or None, label of the inputs)."""
    from safetensors.torch import load_file

    from ..data import load_dataset

    shape = tuple(load_dataset(run.config.dataset, "test").x.shape[1:])
    if input_file is not None:
        path = Path(input_file)
        if not path.is_file():
            raise FileNotFoundError(f"input file {str(path)!r} not found")
        try:
            t = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            raise ValueError(f"cannot read {str(path)!r} as safetensors: {e}") from None
        key = "degraded" if "degraded" in t else "x" if "x" in t else next(iter(t)) if len(t) == 1 else None
        if key is None:
            raise ValueError(f"{str(path)!r} holds tensors {sorted(t)}: name the degraded images 'degraded' or 'x'")
        y = t[key].float()
        if tuple(y.shape[1:]) != shape:
            raise ValueError(f"input images of shape {tuple(y.shape[1:])} for a run on {run.config.dataset!r} "
                             f"images of shape {shape}")
        clean = t.get("clean")
        if clean is not None and clean.shape != y.shape:
            raise ValueError(f"{str(path)!r}: 'clean' has shape {tuple(clean.shape)}, the degraded images "
                             f"{tuple(y.shape)}")
        return y, None if clean is None else clean.float(), path.stem
    split = split or "test"
    data = load_dataset(run.config.dataset, split, seed=run.config.seed)
    x = data.x[:n]
    return degradation(run)(x, torch.Generator().manual_seed(seed)), x, split


def restorations(run, y: torch.Tensor, clean: torch.Tensor | None, steps=RESTORE_STEPS, *,
                 batch_size: int = 512, progress: bool = False) -> tuple[dict, dict]:
    """({degraded, clean, restored-<n>} tensors, {"steps": {n: {"nfe", "psnr"}}, "psnr_degraded"}) for degraded
    images ``y`` restored with the run's InDI field in each of ``steps`` step counts (clamped to [-1, 1])."""
    from ..interpolants.indi import psnr
    from ..interpolants.indi import restore as indi_restore

    steps = tuple(steps)
    if not steps or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in steps):
        raise ValueError(f"steps must be integers >= 1, got {steps}")
    v = velocity(run)
    y = y.to(run.device)
    tensors, summary = {"degraded": y.cpu()}, {"n": y.shape[0], "steps": {}}
    if clean is not None:
        tensors["clean"] = clean.cpu()
        summary["psnr_degraded"] = _mean_se(psnr(y.cpu(), clean.cpu()))
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    for k in tqdm(steps, desc="InDI restoration", unit="step count", disable=not progress):
        x = torch.cat([indi_restore(v, part, k) for part in y.split(batch_size)]).clamp(-1, 1).cpu()
        tensors[f"restored-{k}"] = x
        row = {"nfe": k}
        if clean is not None:
            row["psnr"] = _mean_se(psnr(x, clean.cpu()))
        summary["steps"][str(k)] = row
    summary["seconds"] = time.perf_counter() - t0
    return tensors, summary


def restore(run, *, steps=RESTORE_STEPS, split: str | None = None, input=None, n: int = 256, seed: int = 0,
            out=None, batch_size: int = 512, progress: bool = False) -> dict:
    """Restore degraded images with the run's InDI field in each of ``steps`` step counts.

    Inputs: the first ``n`` images of ``split`` (default test) degraded as in training (seeded), or the
    tensor ``degraded`` / ``x`` of a safetensors file ``input`` (with ``clean`` for the PSNR). Writes
    ``<stem>.safetensors`` (degraded, clean, restored-<n>), ``<stem>.png`` (degraded | restored | clean)
    and ``<stem>.json`` (PSNR per step count), atomically; stem default ``<run>/restore-<split>``.
    """
    from ..report.interpolants import restore_figure

    if split is not None and input is not None:
        raise ValueError("give the inputs one way: a split or an input file")
    velocity(run)
    if input is None:
        degradation(run)
    y, clean, label = _inputs(run, split, input, n, seed)
    stem = output_stem(out, run.path / f"restore-{label}")
    check_writable(stem.parent)
    tensors, summary = restorations(run, y, clean, steps, batch_size=batch_size, progress=progress)
    summary = {"run": str(run.path), "inputs": label, **summary}
    save_tensors(stem.with_suffix(".safetensors"), tensors)
    restore_figure(tensors, tuple(steps), stem.with_suffix(".png"))
    save_json(stem.with_suffix(".json"), summary)
    return {**summary, "stem": str(stem)}


def _mean_se(v: torch.Tensor) -> dict:
    n = v.numel()
    return {"mean": float(v.mean()), "stderr": float(v.std() / n**0.5) if n > 1 else float("nan")}


def reflow(teacher, *, name: str | None = None, run_dir=None, pairs: int = 4096, solve_steps: int = 32,
           minutes: float | None = None, steps: int | None = None, seed: int = 0, lr: float | None = None,
           device: str = "cpu", progress: bool = True):
    """One reflow round (Liu et al. 2023) of a Gaussian-source velocity run ``teacher``: a new ordinary run
    (``runs/<name>`` or ``run_dir``) trained by the training loop on ``pairs`` (teacher sample, noise) pairs
    made with ``solve_steps`` Heun steps, starting from the teacher's weights. Budget: ``minutes`` (process
    CPU time) and/or ``steps`` (default 500 steps). Returns the training result."""
    from .._util import read_json
    from ..training import TrainConfig, train
    from ..training.checkpoint import latest_checkpoint

    if (name is None) == (run_dir is None):
        raise ValueError("give the new run one place: name= (runs/<name>) or run_dir=")
    out = Path(run_dir) if run_dir is not None else RUNS / name
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{str(out)!r} already exists; choose another name for the reflowed run")
    src = find_run(teacher)
    if latest_checkpoint(src) is None:
        raise ValueError(f"teacher {str(src)!r} holds no checkpoint: it is not a trained run")
    tcfg = TrainConfig.from_dict(read_json(src / "config.json", "teacher's configuration"))
    if source_spec(tcfg) != "gaussian":
        raise ValueError(f"reflow needs a Gaussian-source velocity run; {str(src)!r} has objective "
                         f"{tcfg.objective!r} and source {source_spec(tcfg)!r}")
    if not (isinstance(pairs, int) and pairs >= 1 and isinstance(solve_steps, int) and solve_steps >= 1):
        raise ValueError(f"pairs and solve_steps must be integers >= 1, got {pairs!r}, {solve_steps!r}")
    base = tcfg.to_dict()
    base.update(objective="reflow", objective_options={"teacher": str(src.resolve()), "pairs": pairs,
                                                       "solve_steps": solve_steps},
                seed=seed, device=device, steps=steps if steps is not None or minutes is not None else 500,
                minutes=minutes, clock="process" if minutes is not None else tcfg.clock, warmup_steps=0,
                lr=lr if lr is not None else tcfg.lr / 4)
    return train(TrainConfig.from_dict(base), out, progress=progress)


def paths_view(run, *, n: int = 64, steps: int = 32, figure=None, seed: int = 0) -> dict:
    """The report's view of an interpolant run: straightness of its paths from the source (mean and
    standard error over ``n`` paths), and a figure of the paths (2-D data: trajectories; images: the
    canvas over t) next to one-step and ``steps``-step samples (paired runs: InDI restorations)."""
    from ..data import load_dataset
    from ..interpolants import straightness, transport

    spec = source_spec(run.config)
    if spec is None:
        raise ValueError(f"{str(run.path)!r} was not trained with an interpolant objective")
    v = velocity(run)
    everything = load_dataset(run.config.dataset, "test", seed=run.config.seed).x.float()
    test = everything[:n]
    g = torch.Generator().manual_seed(seed)
    if spec.startswith("degraded:"):
        x1 = degradation(run)(test, g)
    elif spec == "gaussian":
        x1 = torch.randn(test.shape, generator=g)
    else:
        from ..interpolants.objective import source_of

        x1 = source_of(spec, load_dataset(run.config.dataset, "test"))(test, g)
    x1 = x1.to(run.device)
    s = straightness(v, x1, steps=steps)
    path = transport(v, x1, steps=steps, method="euler", keep_path=True).path
    one = transport(v, x1, steps=1, method="euler").x
    res = {"source": spec, "straightness": _mean_se(s.cpu()), "steps": steps, "n": n}
    if figure is not None:
        from ..report.interpolants import paths_figure

        paths_figure(path.cpu(), one.cpu(), test if test.ndim > 2 else everything[:1000], figure,
                     paired=spec.startswith("degraded:"))
    return res
