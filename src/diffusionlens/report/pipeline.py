"""Run-level evaluation and the report: load a trained run, sample it, score it, draw it, write HTML.

Run directory (see :mod:`diffusionlens.training.loop` for what training writes)::

    run_dir/evaluation.json     every number of the evaluation (written atomically)
    run_dir/samples.safetensors the samples that were scored ("x", and "y" for conditional runs)
    run_dir/report.html         the report; figures beside it as PNG:
    run_dir/fig_samples.png, fig_loss.png, fig_quality_vs_nfe.png, fig_denoising.png,
    run_dir/fig_weighting.png, fig_expectation_gap.png (oracle and ring8 data only)

Sampling uses the noise-level range the model was trained on, clipped to [0.002, 80]
(``sampling_range``), and a ``torch.Generator`` seeded by ``seed`` for the initial noise.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from .._util import device_of
from ..samplers import DEFAULT_SAMPLER
from ..training.checkpoint import atomic_write

__all__ = ["sampling_range", "generate", "evaluate_run", "sweep_entry", "DEFAULT_SWEEP",
           "DEFAULT_NFE"]

DEFAULT_SWEEP = ("euler", "dpmpp_2m", "unipc", "deis", "unipc@fitted-stop")
"""Entries of the quality-vs-NFE sweep: samplers on their recommended grids, and UniPC on the fitted grid
with its measured stop (on the digits model, benchmarks/results/grids.md, UniPC's FD at NFE 8 falls from
5.1 to 1.95; in the main job's sweep that is what the recommended grids reach at NFE 32)."""
DEFAULT_NFE = (4, 8, 16, 32)
LEVELS = {"digits": 17, "mnist": 256}  # values per pixel: digits are 0..16, MNIST 0..255


def sampling_range(cfg) -> tuple[float, float]:
    """(sigma_min, sigma_max) for sampling a model trained with ``cfg``: its training range within [0.002, 80]."""
    from ..training import make_loss

    lo, hi = make_loss(cfg).sigma_range
    return max(0.002, lo), min(80.0, hi)


def sweep_entry(entry: str) -> tuple[str, str | None]:
    """A sweep entry, ``"sampler"`` or ``"sampler@grid"`` (a :class:`diffusionlens.samplers.Grid` value), as
    (sampler, grid or None for the sampler's recommended grid); raises ValueError naming a bad part."""
    from ..samplers import SAMPLERS, Grid

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


@torch.no_grad()
def generate(denoiser, cfg, n: int, *, sampler: str = DEFAULT_SAMPLER, steps: int = 16, seed: int = 0,
             batch_size: int = 1000, guidance: float = 1.0, grid: str | None = None, label: int | None = None,
             analytic_start: bool = False, progress: bool = False, teleport: bool = False,
             pilot_cache: dict | None = None) -> tuple[Tensor, Tensor | None, float]:
    """n samples (n, *data_shape) of a trained denoiser, their labels (conditional runs) and the NFE per sample.

    Conditional runs: labels cycle through the classes (or are all ``label``), guided with weight
    ``guidance`` (1 = the conditional model). The initial noise of sample i depends only on ``seed``
    and i's batch, so two samplers given the same seed start from the same noise. ``grid="fitted"`` and
    ``"fitted-stop"`` run one pilot for all batches (one per class for conditional runs);
    ``analytic_start`` replaces the first evaluation by the data mean measured on the pilot (per class
    for conditional runs), one NFE fewer. ``teleport`` (unconditional runs, ``grid="fitted-stop"``):
    start below sigma_max by the flow of the Gaussian measured on the model
    (:func:`diffusionlens.samplers.gaussian_model`), the start chosen with the stop on a 256-sample pilot.
    ``pilot_cache``: a dict kept across calls on the same model, sampling range and conditions (e.g. the
    NFE budgets of one sweep), so that the pilots are solved once; they are deterministic, so the samples
    are the same with or without it.
    """
    from ..data import load_dataset
    from ..guidance import ClassifierFree
    from ..samplers import ORDER, ErrorDensity, data_mean, error_density, gaussian_model, sample, stop_grid

    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"number of samples must be an integer >= 1, got {n!r}")
    data = load_dataset(cfg.dataset, "test", seed=cfg.seed, n=2 if cfg.dataset not in LEVELS else None)
    shape = tuple(data.data_shape)
    smin, smax = sampling_range(cfg)
    g = torch.Generator().manual_seed(seed)
    labels = None
    if cfg.conditional:
        labels = torch.full((n,), int(label)) if label is not None else torch.arange(n) % data.num_classes
    guided = ClassifierFree(denoiser, guidance) if cfg.conditional else None
    out, nfe = [], 0.0
    dev = device_of(denoiser)
    # the denoiser of each condition: one (None) for unconditional runs, one per class sampled otherwise
    classes = [None] if guided is None else ([int(label)] if label is not None else list(range(data.num_classes)))

    def den_of(c):
        if c is None:
            return denoiser
        return lambda x, s: guided(x, s, y=torch.full((x.shape[0],), c, dtype=torch.long, device=x.device))

    if teleport and (cfg.conditional or grid != "fitted-stop"):
        raise ValueError("teleport needs an unconditional run and grid 'fitted-stop' (one Gaussian model of the "
                         f"data, the start chosen on the pilot); got conditional={cfg.conditional}, grid={grid!r}")
    gauss = None
    if teleport:
        gauss = None if pilot_cache is None else pilot_cache.get("gaussian")
        if gauss is None:
            gauss = gaussian_model(denoiser, shape, smax, device=dev)
            if pilot_cache is not None:
                pilot_cache["gaussian"] = gauss
    means = None
    if grid in ("fitted", "fitted-stop") and sampler != "adaptive":  # one pilot for all batches
        # (per class: the solver calls the denoiser on subsets of the pilot batch, so labels cannot be bound
        # by position)
        key = ("pilots", tuple(classes), guidance, teleport)
        pilots = None if pilot_cache is None else pilot_cache.get(key)
        if pilots is None:
            pilots = [(den_of(c), error_density(den_of(c), shape, smin, smax, device=dev,
                                                pilot=256 if teleport else 64) if c is None else
                       error_density(den_of(c), shape, smin, smax, pilot=max(8, 64 // len(classes)), device=dev,
                                     generator=torch.Generator().manual_seed(c))) for c in classes]
            if pilot_cache is not None:
                pilot_cache[key] = pilots
        dens = pilots[0][1] if guided is None else ErrorDensity.average([p for _, p in pilots])
        grid = (dens.grid(steps, ORDER.get(sampler, 3)) if grid == "fitted"
                else stop_grid(denoiser, dens, sampler, steps, pilots=None if teleport else pilots,
                               analytic_start=analytic_start, teleport=gauss))
        means = {c: p.data_mean for c, (_, p) in zip(classes, pilots)}
    if analytic_start and means is None:
        means = {c: data_mean(den_of(c), shape, smax, device=dev) for c in classes}
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        noise = torch.randn((b,) + shape, generator=g).to(dev)
        den = denoiser
        mean = None
        if guided is not None:
            yb = labels[i:i + b].to(dev)

            def den(x, s, _yb=yb):
                return guided(x, s, y=_yb)
            if analytic_start:
                mean = torch.stack([means[int(c)] for c in labels[i:i + b]])  # each sample its class's mean
        elif analytic_start and gauss is None:
            mean = means[None]
        x, info = sample(den, noise, sampler=sampler, steps=steps, sigma_min=smin, sigma_max=smax, grid=grid,
                         generator=torch.Generator().manual_seed(seed + 1 + i), return_info=True, progress=progress,
                         analytic_start=analytic_start, data_mean=mean, teleport=False if gauss is None else gauss)
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"sampler {sampler!r} produced a non-finite sample (batch starting at {i})")
        out.append(x.cpu())
        nfe = info.nfe
    return torch.cat(out), labels, nfe


def _score(samples: Tensor, cfg, *, seed: int) -> tuple[float, dict]:
    """(headline metric, all metrics) of samples: Fréchet distance for images, SW2 otherwise."""
    from ..evaluate import evaluate_samples

    ev = evaluate_samples(samples, cfg.dataset, seed=seed)
    return (ev["fd"] if "fd" in ev else ev["sw2"]), ev


def evaluate_run(run_dir, *, n_samples: int | None = None, sampler: str = DEFAULT_SAMPLER, steps: int = 16,
                 seed: int = 0, sweep: tuple[str, ...] = DEFAULT_SWEEP, nfes: tuple[int, ...] = DEFAULT_NFE,
                 bpd_n: int = 100, guidance: float = 1.0, device: str = "cpu", progress: bool = True) -> dict:
    """Evaluate a trained run and write ``run_dir/evaluation.json`` and ``samples.safetensors``.

    Args:
        n_samples: samples to score (default: the size of the train split for images — so the
            train-vs-test floor is measured at the same sample size — and 5,000 otherwise).
        sampler, steps: the headline sampler and its grid size.
        sweep, nfes: entries (``"sampler"`` or ``"sampler@grid"``, :func:`sweep_entry`) and NFE budgets of
            the quality-vs-NFE curve (empty ``sweep`` skips it).
        bpd_n: test images for bits/dim (0 skips); for points, test points for the model's PF-ODE log-likelihood.
    """
    from safetensors.torch import save_file

    from ..data import load_dataset
    from ..evaluate import dataset_bits_per_dim, expectation_gap, headline_scorer, true_density
    from ..samplers import SAMPLERS
    from ..training import load_denoiser

    run_dir = Path(run_dir)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    entries = {e: sweep_entry(e) for e in sweep}
    if any(not (isinstance(k, int) and k >= 1) for k in nfes):
        raise ValueError(f"NFE budgets must be integers >= 1, got {list(nfes)}")
    den, cfg = load_denoiser(run_dir, device=device)
    train = load_dataset(cfg.dataset, "train", seed=cfg.seed)
    n = n_samples if n_samples is not None else (len(train) if train.is_image else 5000)
    t0 = time.perf_counter()
    x, y, nfe = generate(den, cfg, n, sampler=sampler, steps=steps, seed=seed, guidance=guidance, progress=progress)
    sample_s = time.perf_counter() - t0
    headline, metrics = _score(x, cfg, seed=seed)
    out = {"dataset": cfg.dataset, "sampler": sampler, "steps": steps, "nfe": nfe, "n_samples": n,
           "sampling_seconds": sample_s, "guidance": guidance if cfg.conditional else None,
           "sigma_range": list(sampling_range(cfg)), "metrics": metrics,
           "headline": {"name": "fd" if train.is_image else "sw2", "value": headline}}
    result = run_dir / "result.json"
    if result.exists():
        out["training"] = _training_summary(run_dir, json.loads(result.read_text()))
    # quality vs NFE, several samplers, same noise, same metric
    curves: dict[str, list] = {}
    jobs = [(s, k) for s in sweep for k in nfes]
    bar = None
    if progress and jobs:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="quality vs NFE", unit="run")
    score = headline_scorer(cfg.dataset, seed=seed) if jobs else None
    t0 = time.perf_counter()
    pilot_cache: dict = {}  # one pilot for every fitted-grid entry and NFE of the sweep
    for s, k in jobs:
        name, grid = entries[s]
        xs, _, used = generate(den, cfg, n, sampler=name, steps=steps_for_nfe(name, k), seed=seed, guidance=guidance,
                               grid=grid, pilot_cache=pilot_cache)
        curves.setdefault(s, []).append([used, score(xs)])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(sampler=s, nfe=f"{used:g}")
    if bar is not None:
        bar.close()
    out["quality_vs_nfe"] = curves
    timings = {"headline_sampling": sample_s, "sweep": time.perf_counter() - t0}
    test = load_dataset(cfg.dataset, "test", seed=cfg.seed)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    smin, smax = sampling_range(cfg)
    if train.is_image and bpd_n:
        out["bits_per_dim"] = dataset_bits_per_dim(den, test.x[:bpd_n], levels=LEVELS[cfg.dataset], sigma_min=smin,
                                                sigma_max=smax, generator=gen, progress=progress)
    elif bpd_n:
        from ..likelihood import log_likelihood

        xt = test.x[:bpd_n]
        ll = log_likelihood(den, xt.to(device_of(den)), sigma_min=smin, sigma_max=smax, generator=gen, rtol=1e-4,
                            atol=1e-4, divergence="exact" if xt[0].numel() <= 16 else "hutchinson").cpu().double()
        rec = {"mean": float(ll.mean()), "stderr": float(ll.std() / math.sqrt(len(ll))), "n": len(ll),
               "sigma_min": smin}
        gm = true_density(cfg.dataset)
        if gm is not None:  # the same quantity under the truth: log p_{sigma_min}(x) of the exact mixture
            rec["true"] = float(gm.log_prob(xt.double(), smin).mean())
        out["test_loglik"] = rec
    timings["likelihood"] = time.perf_counter() - t0
    gm = true_density(cfg.dataset)
    if gm is not None:
        out["expectation_gap"] = expectation_gap(den, gm, test.x[:2000], generator=gen).to_dict()
    out["seconds"] = timings
    tensors = {"x": x.contiguous()}
    if y is not None:
        tensors["y"] = y.contiguous()
    tmp = run_dir / "samples.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(run_dir / "samples.safetensors")
    atomic_write(run_dir / "evaluation.json", json.dumps(out, indent=1).encode())
    return out


def _training_summary(run_dir: Path, result: dict) -> dict:
    """result.json, with the loss and throughput taken from metrics.jsonl when the last session ran no
    step (a resumed run that had already reached its budget records them as null)."""
    path = run_dir / "metrics.jsonl"
    if (result.get("loss") is not None and result.get("images_per_s") is not None) or not path.is_file():
        return result
    recs = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("loss") is not None:
            recs.append(rec)
    if recs:
        ips = sorted(r["images_per_s"] for r in recs if r.get("images_per_s") is not None)
        result = dict(result, loss=recs[-1]["loss"] if result.get("loss") is None else result["loss"])
        if result.get("images_per_s") is None and ips:
            result["images_per_s"] = ips[len(ips) // 2]
    return result

