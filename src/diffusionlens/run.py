"""The run layer: one place that owns a *run directory*, shared by the command line and the report.

    from diffusionlens import run
    r = run.open_run("runs/main", device="cpu")       # denoiser, config, stored plan, device
    x, y, nfe = run.generate(r.denoiser, r.config, 100, sampler="deis", steps=10, seed=0)
    ev = run.evaluate(r)                               # -> runs/main/evaluation.json, samples.safetensors

Layout (``train`` writes the first line; each function here writes its own files, atomically, with
the permissions of any file the user creates)::

    run_dir/config.json, checkpoints/, metrics.jsonl, result.json     training
    run_dir/samples-<sampler>-<steps>.safetensors + .png               sample_to_files
    run_dir/evaluation.json, samples.safetensors                       evaluate
    run_dir/likelihood.json                                            likelihood
    run_dir/latents.safetensors, encode.json                           round_trip

Sampling uses the noise-level range the model was trained on, clipped to [0.002, 80]
(:func:`sampling_range`). The noise of sample i depends only on the seed and i (per-sample streams,
:func:`diffusionlens.samplers.randn`), so ``n=10`` gives the first 10 samples of ``n=100``.

Calls into other layers whose interface is changing are isolated one per function here:
:func:`_load` (training's ``load_denoiser``), :func:`_loss_range` (training's loss),
:func:`_sample_batch` (``samplers.sample``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch
from torch import Tensor

from ._util import device_of
from .samplers import DEFAULT_SAMPLER

__all__ = ["Run", "RUNS", "DEFAULT_SWEEP", "DEFAULT_NFE", "LEVELS", "find_run", "open_run", "sampling_range",
           "sweep_entry", "steps_for_nfe", "generate", "sample_to_files", "evaluate", "evaluate_run",
           "likelihood", "round_trip", "check_writable", "output_stem", "save_json", "save_tensors"]

RUNS = Path("runs")
DEFAULT_SWEEP = ("euler", "dpmpp_2m", "unipc", "deis", "unipc@fitted-stop")
"""Entries of the quality-vs-NFE sweep: samplers on their recommended grids, and UniPC on the fitted grid
with its measured stop (benchmarks/results/grids.md)."""
DEFAULT_NFE = (4, 8, 16, 32)
LEVELS = {"digits": 17, "mnist": 256}  # values per pixel: digits are 0..16, MNIST 0..255


# ----------------------------------------------------------------------------- files


def check_writable(directory) -> None:
    """Raise PermissionError (one line, naming the directory) unless a file can be created in it; called
    before any long computation whose result is written there."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"directory {str(directory)!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=directory)
    except OSError as e:
        raise PermissionError(f"cannot write to {str(directory)!r}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)


def output_stem(out, default: Path) -> Path:
    """The output path without extension: ``out`` (its parent must exist: nothing is created elsewhere) or
    ``default``."""
    if out is None:
        return default
    stem = Path(str(out).removesuffix(".safetensors").removesuffix(".png"))
    if not stem.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(stem.parent)!r} does not exist (create it first)")
    return stem


def save_json(path, obj) -> None:
    """Atomic JSON write (unique temporary name, then rename)."""
    from .training.checkpoint import atomic_write

    atomic_write(Path(path), (json.dumps(obj, indent=1) + "\n").encode())


def save_tensors(path, tensors: dict[str, Tensor]) -> None:
    """Atomic safetensors write (unique temporary name, so concurrent writers never share one)."""
    from safetensors.torch import save

    from .training.checkpoint import atomic_write

    atomic_write(Path(path), save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


# ----------------------------------------------------------------------------- opening a run


@dataclass(frozen=True)
class Run:
    """A trained run: its directory, canonical denoiser (EMA weights, eval mode), training config and device."""

    path: Path
    denoiser: object
    config: object
    device: str

    @property
    def sigma_range(self) -> tuple[float, float]:
        return sampling_range(self.config)


def find_run(text, runs: Path = RUNS) -> Path:
    """A run given as a path, or as a name under ``runs/``; raises FileNotFoundError naming it."""
    p = Path(text)
    if p.is_dir():
        return p
    if not p.is_absolute() and (runs / p).is_dir():
        return runs / p
    raise FileNotFoundError(f"run directory {str(text)!r} not found (train one with `diffusionlens train --name ...`)")


def _load(path: Path, device: str):
    from .training import load_denoiser

    return load_denoiser(path, device=device)


def open_run(path, *, device: str = "cpu") -> Run:
    """Open a trained run (a path or a name under runs/): the newest checkpoint's denoiser and config."""
    from .training.checkpoint import latest_checkpoint

    path = find_run(path)
    if latest_checkpoint(path) is None:
        raise ValueError(f"{str(path)!r} holds no checkpoint: it is not a trained run")
    den, cfg = _load(path, device)
    return Run(path, den, cfg, str(device))


def _loss_range(cfg) -> tuple[float, float]:
    from .training import make_loss

    return make_loss(cfg).sigma_range


def sampling_range(cfg) -> tuple[float, float]:
    """(sigma_min, sigma_max) for sampling a model trained with ``cfg``: its training range within [0.002, 80]."""
    lo, hi = _loss_range(cfg)
    return max(0.002, lo), min(80.0, hi)


# ----------------------------------------------------------------------------- generate


def _bar(progress: bool, total: int, desc: str, unit: str):
    if not (progress and total):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def sweep_entry(entry: str) -> tuple[str, str | None]:
    """A sweep entry, ``"sampler"`` or ``"sampler@grid"`` (a :class:`diffusionlens.samplers.Grid` value), as
    (sampler, grid or None for the sampler's recommended grid); raises ValueError naming a bad part."""
    from .samplers import SAMPLERS, Grid

    name, _, grid = str(entry).partition("@")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} in sweep entry {entry!r}; choose one of: {', '.join(SAMPLERS)}")
    if not grid:
        return name, None
    try:
        return name, Grid(grid).value
    except ValueError:
        raise ValueError(f"unknown grid {grid!r} in sweep entry {entry!r}; choose one of: "
                         f"{', '.join(g.value for g in Grid)}") from None


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Grid intervals giving about ``nfe`` evaluations (Heun spends 2 per step but the last)."""
    return max(1, (nfe + 1) // 2) if sampler == "heun" else max(1, nfe)


def _sample_batch(den, noise, *, sampler, steps, smin, smax, grid, seeds, progress, analytic_start, mean, gauss):
    from .samplers import sample

    return sample(den, noise, sampler=sampler, steps=steps, sigma_min=smin, sigma_max=smax, grid=grid,
                  generator=seeds, return_info=True, progress=progress, analytic_start=analytic_start,
                  data_mean=mean, teleport=False if gauss is None else gauss)


class _Conditions:
    """The denoiser of each condition sampled: one (None) for unconditional runs, one per class otherwise."""

    def __init__(self, denoiser, cfg, num_classes: int, guidance: float, label: int | None):
        from .guidance import ClassifierFree

        self.denoiser = denoiser
        self.guided = ClassifierFree(denoiser, guidance) if cfg.conditional else None
        self.classes = [None] if self.guided is None else ([int(label)] if label is not None
                                                            else list(range(num_classes)))

    def of(self, c):
        if c is None:
            return self.denoiser
        return lambda x, s: self.guided(x, s, y=torch.full((x.shape[0],), c, dtype=torch.long, device=x.device))

    def batch(self, yb: Tensor | None):
        if yb is None:
            return self.denoiser
        return lambda x, s: self.guided(x, s, y=yb)


def _pilot_grid(conds: _Conditions, shape, smin, smax, *, sampler, steps, grid, guidance, analytic_start, gauss,
                cache, dev, progress: bool = False):
    """(grid tensor, per-class data means) of a fitted or fitted-stop grid: one pilot for all batches (per
    class: the solver calls the denoiser on subsets of the pilot batch, so labels cannot be bound by position)."""
    from .samplers import ORDER, ErrorDensity, error_density, stop_grid

    key = ("pilots", tuple(conds.classes), guidance, gauss is not None)
    pilots = None if cache is None else cache.get(key)
    if pilots is None:
        pilots = []
        bar = _bar(progress, len(conds.classes), "pilot solve", "condition")
        for c in conds.classes:
            if c is None:
                dens = error_density(conds.of(c), shape, smin, smax, device=dev, pilot=256 if gauss is not None else 64)
            else:
                dens = error_density(conds.of(c), shape, smin, smax, pilot=max(8, 64 // len(conds.classes)),
                                     device=dev, generator=torch.Generator().manual_seed(c))
            pilots.append((conds.of(c), dens))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if cache is not None:
            cache[key] = pilots
    dens = pilots[0][1] if conds.guided is None else ErrorDensity.average([p for _, p in pilots])
    if grid == "fitted":
        sigmas = dens.grid(steps, ORDER.get(sampler, 3))
    else:
        sigmas = stop_grid(conds.denoiser, dens, sampler, steps, pilots=None if gauss is not None else pilots,
                           analytic_start=analytic_start, teleport=gauss)
    return sigmas, {c: p.data_mean for c, (_, p) in zip(conds.classes, pilots)}


@torch.no_grad()
def generate(denoiser, cfg, n: int, *, sampler: str = DEFAULT_SAMPLER, steps: int = 16, seed: int = 0,
             batch_size: int = 1000, guidance: float = 1.0, grid: str | None = None, label: int | None = None,
             analytic_start: bool = False, progress: bool = False, teleport: bool = False,
             pilot_cache: dict | None = None) -> tuple[Tensor, Tensor | None, float]:
    """n samples (n, *data_shape) of a trained denoiser, their labels (conditional runs) and the NFE per sample.

    Sample i's initial noise and sampler noise depend only on ``seed`` and i (per-sample streams), so
    the result does not depend on ``n`` or ``batch_size`` and two samplers given the same seed start
    from the same noise. Conditional runs: labels cycle through the classes (or are all ``label``),
    guided with weight ``guidance``. ``grid="fitted"`` / ``"fitted-stop"`` run one pilot for all
    batches (one per class); ``analytic_start`` replaces the first evaluation by the data mean (per
    class); ``teleport`` (unconditional, ``"fitted-stop"``) starts below sigma_max by the flow of the
    Gaussian measured on the model. ``pilot_cache``: a dict kept across calls on the same model and
    conditions, so the (deterministic) pilots are solved once.
    """
    from .data import load_dataset
    from .samplers import data_mean, gaussian_model, noise_seeds, randn

    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"number of samples must be an integer >= 1, got {n!r}")
    if teleport and (cfg.conditional or grid != "fitted-stop"):
        raise ValueError("teleport needs an unconditional run and grid 'fitted-stop' (one Gaussian model of the "
                         f"data, the start chosen on the pilot); got conditional={cfg.conditional}, grid={grid!r}")
    data = load_dataset(cfg.dataset, "test", seed=cfg.seed, n=2 if cfg.dataset not in LEVELS else None)
    shape = tuple(data.data_shape)
    smin, smax = sampling_range(cfg)
    dev = device_of(denoiser)
    labels = None
    if cfg.conditional:
        labels = torch.full((n,), int(label)) if label is not None else torch.arange(n) % data.num_classes
    conds = _Conditions(denoiser, cfg, data.num_classes if cfg.conditional else 0, guidance, label)
    gauss = None
    if teleport:
        gauss = None if pilot_cache is None else pilot_cache.get("gaussian")
        if gauss is None:
            gauss = gaussian_model(denoiser, shape, smax, device=dev)
            if pilot_cache is not None:
                pilot_cache["gaussian"] = gauss
    means = None
    if grid in ("fitted", "fitted-stop") and sampler != "adaptive":
        grid, means = _pilot_grid(conds, shape, smin, smax, sampler=sampler, steps=steps, grid=grid,
                                  guidance=guidance, analytic_start=analytic_start, gauss=gauss, cache=pilot_cache,
                                  dev=dev, progress=progress)
    if analytic_start and means is None:
        means = {c: data_mean(conds.of(c), shape, smax, device=dev) for c in conds.classes}
    g = torch.Generator().manual_seed(seed)
    noise_ids, sampler_ids = noise_seeds(g, n), noise_seeds(g, n)  # two per-sample streams: start, sampler
    out, nfe = [], 0.0
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        noise = randn((b,) + shape, noise_ids[i:i + b]).to(dev)
        yb = None if labels is None else labels[i:i + b]
        mean = None
        if analytic_start and gauss is None:
            mean = means[None] if yb is None else torch.stack([means[int(c)] for c in yb])
        x, info = _sample_batch(conds.batch(None if yb is None else yb.to(dev)), noise, sampler=sampler, steps=steps,
                                smin=smin, smax=smax, grid=grid, seeds=sampler_ids[i:i + b].to(dev),
                                progress=progress, analytic_start=analytic_start, mean=mean, gauss=gauss)
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"sampler {sampler!r} produced a non-finite sample (batch starting at {i})")
        out.append(x.cpu())
        nfe = info.nfe
    return torch.cat(out), labels, nfe


def sample_to_files(run: Run, n: int, *, out=None, progress: bool = False, **options) -> dict:
    """Sample a run (options of :func:`generate`) and write ``<stem>.safetensors`` ('x', and 'y' for
    conditional runs) and a ``<stem>.png`` figure; returns {"nfe", "seconds", "stem"}."""
    from .data import load_dataset
    from .report import figures

    sampler, steps = options.get("sampler", DEFAULT_SAMPLER), options.get("steps", 16)
    stem = output_stem(out, run.path / f"samples-{sampler}-{steps}")
    check_writable(stem.parent)
    t0 = time.perf_counter()
    x, y, nfe = generate(run.denoiser, run.config, n, progress=progress, **options)
    secs = time.perf_counter() - t0
    save_tensors(stem.with_name(stem.name + ".safetensors"), {"x": x} if y is None else {"x": x, "y": y})
    test = load_dataset(run.config.dataset, "test", seed=run.config.seed)
    guided = f", guidance {options.get('guidance', 1.0):g}" if run.config.conditional else ""
    figures.sample_figure(x, str(stem) + ".png", reference=test.x, title=f"{sampler}, NFE {nfe:g}{guided}")
    return {"nfe": nfe, "seconds": secs, "stem": stem}


# ----------------------------------------------------------------------------- evaluate


def _sweep(run: Run, n: int, *, sweep, nfes, seed: int, guidance: float, progress: bool) -> dict:
    """Quality vs NFE: every entry at every budget, same noise, same metric."""
    from .evaluate import headline_scorer

    entries = {e: sweep_entry(e) for e in sweep}
    jobs = [(s, k) for s in sweep for k in nfes]
    if not jobs:
        return {}
    score = headline_scorer(run.config.dataset, seed=seed)
    curves: dict[str, list] = {}
    cache: dict = {}  # one pilot for every fitted-grid entry and NFE of the sweep
    bar = _bar(progress, len(jobs), "quality vs NFE", "run")
    for s, k in jobs:
        name, grid = entries[s]
        xs, _, used = generate(run.denoiser, run.config, n, sampler=name, steps=steps_for_nfe(name, k), seed=seed,
                               guidance=guidance, grid=grid, pilot_cache=cache)
        curves.setdefault(s, []).append([used, score(xs)])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(sampler=s, nfe=f"{used:g}")
    if bar is not None:
        bar.close()
    return curves


def _test_loglik(run: Run, x: Tensor, *, generator, progress: bool) -> dict:
    """The model's PF-ODE log-likelihood of points x (nats), next to the truth where it is known."""
    from .evaluate import true_density
    from .likelihood import evaluate as stream
    from .likelihood import log_likelihood

    smin, smax = run.sigma_range
    div = "exact" if x[0].numel() <= 16 else "hutchinson"

    def per_batch(xb):
        return log_likelihood(run.denoiser, xb.to(device_of(run.denoiser)), sigma_min=smin, sigma_max=smax,
                              generator=generator, rtol=1e-4, atol=1e-4, divergence=div).cpu().double()

    s = stream(per_batch, x, batch_size=max(1, math.ceil(len(x) / 10)), progress=progress, desc="log-likelihood")
    rec = {"mean": s.mean, "stderr": s.stderr, "n": s.n, "sigma_min": smin}
    gm = true_density(run.config.dataset)
    if gm is not None:  # the same quantity under the truth: log p_{sigma_min}(x) of the exact mixture
        rec["true"] = float(gm.log_prob(x.double(), smin).mean())
    return rec


def evaluate(run: Run, *, n_samples: int | None = None, sampler: str = DEFAULT_SAMPLER, steps: int = 16,
             seed: int = 0, sweep: tuple[str, ...] = DEFAULT_SWEEP, nfes: tuple[int, ...] = DEFAULT_NFE,
             bpd_n: int = 100, guidance: float = 1.0, progress: bool = True) -> dict:
    """Evaluate a trained run and write ``evaluation.json`` and ``samples.safetensors`` into its directory.

    Args:
        n_samples: samples to score (default: the size of the train split for images — so the
            train-vs-test floor is measured at the same sample size — and 5,000 otherwise).
        sampler, steps: the headline sampler and its grid size.
        sweep, nfes: entries (``"sampler"`` or ``"sampler@grid"``, :func:`sweep_entry`) and NFE budgets of
            the quality-vs-NFE curve (empty ``sweep`` skips it).
        bpd_n: test images for bits/dim (0 skips); for points, test points for the model's PF-ODE log-likelihood.
    """
    from .data import load_dataset
    from .evaluate import dataset_bits_per_dim, evaluate_samples, expectation_gap, true_density
    from .samplers import SAMPLERS

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    for e in sweep:
        sweep_entry(e)
    if any(not (isinstance(k, int) and k >= 1) for k in nfes):
        raise ValueError(f"NFE budgets must be integers >= 1, got {list(nfes)}")
    check_writable(run.path)
    cfg = run.config
    train = load_dataset(cfg.dataset, "train", seed=cfg.seed)
    n = n_samples if n_samples is not None else (len(train) if train.is_image else 5000)
    t0 = time.perf_counter()
    x, y, nfe = generate(run.denoiser, cfg, n, sampler=sampler, steps=steps, seed=seed, guidance=guidance,
                         progress=progress)
    sample_s = time.perf_counter() - t0
    metrics = evaluate_samples(x, cfg.dataset, seed=seed)
    name = "fd" if "fd" in metrics else "sw2"
    out = {"dataset": cfg.dataset, "sampler": sampler, "steps": steps, "nfe": nfe, "n_samples": n,
           "sampling_seconds": sample_s, "guidance": guidance if cfg.conditional else None,
           "sigma_range": list(run.sigma_range), "metrics": metrics,
           "headline": {"name": name, "value": metrics[name]}}
    result = run.path / "result.json"
    if result.exists():
        from .report.pipeline import _training_summary

        out["training"] = _training_summary(run.path, json.loads(result.read_text()))
    t0 = time.perf_counter()
    out["quality_vs_nfe"] = _sweep(run, n, sweep=sweep, nfes=nfes, seed=seed, guidance=guidance, progress=progress)
    timings = {"headline_sampling": sample_s, "sweep": time.perf_counter() - t0}
    test = load_dataset(cfg.dataset, "test", seed=cfg.seed)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    smin, smax = run.sigma_range
    if train.is_image and bpd_n:
        out["bits_per_dim"] = dataset_bits_per_dim(run.denoiser, test.x[:bpd_n], levels=LEVELS[cfg.dataset],
                                                   sigma_min=smin, sigma_max=smax, generator=gen, progress=progress,
                                                   batch_size=max(1, math.ceil(min(bpd_n, len(test)) / 10)))
    elif bpd_n:
        out["test_loglik"] = _test_loglik(run, test.x[:bpd_n], generator=gen, progress=progress)
    timings["likelihood"] = time.perf_counter() - t0
    gm = true_density(cfg.dataset)
    if gm is not None:
        out["expectation_gap"] = expectation_gap(run.denoiser, gm, test.x[:2000], generator=gen).to_dict()
    out["seconds"] = timings
    save_tensors(run.path / "samples.safetensors", {"x": x} if y is None else {"x": x, "y": y})
    save_json(run.path / "evaluation.json", out)
    return out


def evaluate_run(run_dir, *, device: str = "cpu", **options) -> dict:
    """:func:`evaluate` on the run in ``run_dir`` opened on ``device``."""
    return evaluate(open_run(run_dir, device=device), **options)


# ----------------------------------------------------------------------------- likelihood, encode


def _points(run: Run, split: str, n: int) -> tuple[Tensor, bool, int]:
    """(the first n points of a split, whether it is images, how many the split holds)."""
    from .data import load_dataset

    data = load_dataset(run.config.dataset, split, seed=run.config.seed)
    return data.x[:n], data.is_image, len(data)


def _unconditional(run: Run):
    """The model p(x): the null-label branch of a conditional run."""
    from .guidance import ClassifierFree

    return ClassifierFree(run.denoiser, 0.0) if run.config.conditional else run.denoiser


def likelihood(run: Run, *, n: int = 100, split: str = "test", probes: int = 1, rtol: float = 1e-4,
               batch_size: int | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Test bits/dim (images, dequantized, Hutchinson with ``probes``) or log-likelihood in nats per point
    (exact divergence up to 64 dimensions) through the PF-ODE; writes ``likelihood.json``. ``batch_size``
    defaults to a tenth of the points so that the progress bar moves."""
    from .evaluate import dataset_bits_per_dim, true_density
    from .likelihood import evaluate as stream
    from .likelihood import log_likelihood

    check_writable(run.path)
    den = _unconditional(run)
    x, is_image, _ = _points(run, split, n)
    bs = batch_size or max(1, math.ceil(len(x) / 10))
    smin, smax = run.sigma_range
    g = torch.Generator().manual_seed(seed)
    out = {"dataset": run.config.dataset, "split": split, "sigma_min": smin, "sigma_max": smax, "rtol": rtol}
    if is_image:
        out["bits_per_dim"] = dataset_bits_per_dim(den, x, levels=LEVELS[run.config.dataset], sigma_min=smin,
                                                   sigma_max=smax, probes=probes, rtol=rtol, atol=rtol,
                                                   batch_size=bs, generator=g, progress=progress)
    else:
        div = "exact" if x[0].numel() <= 64 else "hutchinson"
        if div == "exact" and probes != 1:
            raise ValueError(f"probes={probes} does not apply: {x[0].numel()}-dimensional points get the exact "
                             "divergence (probes are for the Hutchinson estimate)")

        def per_batch(xb):
            return log_likelihood(den, xb.to(run.device), sigma_min=smin, sigma_max=smax, divergence=div,
                                  probes=probes, rtol=rtol, atol=rtol, generator=g).cpu()

        s = stream(per_batch, x, batch_size=bs, progress=progress, desc="log-likelihood")
        out["log_likelihood"] = {"mean": s.mean, "stderr": s.stderr, "n": s.n, "divergence": div}
        gm = true_density(run.config.dataset)
        if gm is not None:
            out["log_likelihood"]["true"] = float(gm.log_prob(x.double(), smin).mean())
    save_json(run.path / "likelihood.json", out)
    return out


def _info_dict(info) -> dict:
    if not is_dataclass(info):
        return {}
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in asdict(info).items()
            if not hasattr(v, "shape") or getattr(v, "ndim", 1) == 0}


def round_trip(run: Run, *, n: int = 16, split: str = "test", rtol: float = 1e-5, steps: int | None = None,
               sampler: str = "heun", batch_size: int | None = None, progress: bool = False) -> dict:
    """Encode data to the latent at sigma_max through the PF-ODE and decode it back (adaptive solver at
    ``rtol``, or ``sampler`` on a log-uniform grid of ``steps``); writes ``latents.safetensors`` (x, z,
    x_rec) and ``encode.json``; returns the relative round-trip errors and the latent's spread."""
    from .likelihood import decode, encode

    check_writable(run.path)
    den = _unconditional(run)
    x = _points(run, split, n)[0].to(run.device)
    smin, smax = run.sigma_range
    kw: dict = {"rtol": rtol, "atol": rtol, "sigma_min": smin, "sigma_max": smax}
    grid = None
    if steps is not None:
        grid = torch.exp(torch.linspace(math.log(smin), math.log(smax), steps + 1, dtype=torch.float64))
    bs = batch_size or max(1, math.ceil(len(x) / 8))
    zs, recs, infos = [], [], ([], [])
    bar = _bar(progress, len(x), "encode + decode", "point")
    t0 = time.perf_counter()
    for i in range(0, len(x), bs):
        xb = x[i:i + bs]
        if grid is None:
            z, a = encode(den, xb, return_info=True, **kw)
            xr, b = decode(den, z, return_info=True, **kw)
        else:
            z, a = encode(den, xb, sigmas=grid, sampler=sampler, return_info=True)
            xr, b = decode(den, z, sigmas=grid.flip(0), sampler=sampler, return_info=True)
        zs.append(z)
        recs.append(xr)
        infos[0].append(_info_dict(a))
        infos[1].append(_info_dict(b))
        if bar is not None:
            bar.update(len(xb))
    if bar is not None:
        bar.close()
    secs = time.perf_counter() - t0
    z, x_rec = torch.cat(zs), torch.cat(recs)
    err = ((x_rec - x).flatten(1).double().norm(dim=1) / x.flatten(1).double().norm(dim=1).clamp_min(1e-12)).cpu()
    out = {"n": int(x.shape[0]), "split": split, "sigma_min": smin, "sigma_max": smax, "seconds": secs,
           "relative_error_mean": float(err.mean()), "relative_error_max": float(err.max()),
           "latent_std_over_sigma_max": float((z / smax).flatten(1).double().cpu().std()),
           "encode": infos[0], "decode": infos[1]}
    save_tensors(run.path / "latents.safetensors", {"x": x, "z": z, "x_rec": x_rec})
    save_json(run.path / "encode.json", out)
    return out


def split_size(run: Run, split: str) -> int:
    """How many points the run's data set holds in ``split``."""
    return _points(run, split, 0)[2]
