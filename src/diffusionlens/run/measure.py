"""Measuring a run: sample quality against floors, quality vs NFE, likelihood, the encode/decode round trip."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, is_dataclass

import torch
from torch import Tensor

from .._util import device_of, read_jsonl
from ..samplers import DEFAULT_SAMPLER
from ._core import LEVELS, Run, open_run, progress_bar
from .files import check_writable, save_json, save_tensors
from .plan import has_tuned
from .sampling import generate, steps_for_nfe, sweep_entry, usable_plan
from .students import default_steps, own_sampling, own_sweep

DEFAULT_SWEEP = ("euler", "dpmpp_2m", "unipc", "deis", "unipc@fitted-stop")
"""Entries of the quality-vs-NFE sweep: samplers on their recommended grids, and UniPC on the fitted grid
with its measured stop (benchmarks/results/grids.md)."""
DEFAULT_NFE = (4, 8, 16)
"""Budgets of the quality-vs-NFE sweep: where samplers differ (from about 32 evaluations they all come close to
the converged solution)."""
SWEEP_SAMPLES = 500
"""Samples per point of the quality-vs-NFE curve by default (its floor is measured at the same size)."""


def _sweep(run: Run, n: int, *, sweep, nfes, seed: int, guidance: float, progress: bool) -> dict:
    """Quality vs NFE on ``n`` samples: every entry at every budget, same noise, same metric. Entries on their
    named grids ignore the stored plan (they are the untuned baselines); a ``sampler@fitted-stop`` entry takes
    the plan's tuned configuration where it has one for that budget (its start may be the analytic or the
    teleported one), and solves its own pilot otherwise."""
    from ..evaluate import headline_scorer

    if own_sampling(run.denoiser) is not None and sweep:  # a run that samples its own way: its own samplers
        return own_sweep(run, n, nfes, seed=seed, progress=progress)
    entries = {e: sweep_entry(e) for e in sweep}
    jobs = [(s, k) for s in sweep for k in nfes]
    if not jobs:
        return {}
    score = headline_scorer(run.config.dataset, seed=seed)
    curves: dict[str, list] = {}
    cache: dict = {}  # one pilot for every fitted-grid entry and NFE of the sweep
    bar = progress_bar(progress, len(jobs), "quality vs NFE", "run")
    for s, k in jobs:
        name, grid = entries[s]
        steps, plan = steps_for_nfe(name, k), None
        usable = usable_plan(run.plan, run.config, guidance)
        if grid == "fitted-stop" and has_tuned(usable, name, k):  # the stored plan's, measured once by tune
            grid, steps, plan = None, k, usable
        xs, _, used = generate(run.denoiser, run.config, n, sampler=name, steps=steps, seed=seed,
                               guidance=guidance, grid=grid, pilot_cache=cache, plan=plan)
        curves.setdefault(s, []).append([used, score(xs)])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(sampler=s, nfe=f"{used:g}")
    if bar is not None:
        bar.close()
    return curves


def _test_loglik(run: Run, x: Tensor, *, generator, progress: bool) -> dict:
    """The model's PF-ODE log-likelihood of points x (nats), next to the truth where it is known."""
    from ..evaluate import true_density
    from ..likelihood import default_divergence, log_likelihood
    from ..likelihood import evaluate as stream

    smin, smax = run.sigma_range
    div = default_divergence(x[0].numel())

    def per_batch(xb):
        return log_likelihood(run.denoiser, xb.to(device_of(run.denoiser)), sigma_min=smin, sigma_max=smax,
                              generator=generator, rtol=1e-4, atol=1e-4, divergence=div).cpu().double()

    s = stream(per_batch, x, batch_size=max(1, math.ceil(len(x) / 10)), progress=progress, desc="log-likelihood")
    rec = {"mean": s.mean, "stderr": s.stderr, "n": s.n, "sigma_min": smin}
    gm = true_density(run.config.dataset)
    if gm is not None:  # the same quantity under the truth: log p_{sigma_min}(x) of the exact mixture
        rec["true"] = float(gm.log_prob(x.double(), smin).mean())
    return rec


def _training_summary(run_dir, result: dict) -> dict:
    """result.json, with the loss taken from metrics.jsonl when the last session ran no step (a resumed run
    that had already reached its budget records it as null)."""
    path = run_dir / "metrics.jsonl"
    if result.get("loss") is not None or not path.is_file():
        return result
    losses = [rec["loss"] for rec in read_jsonl(path) if rec.get("loss") is not None]
    return dict(result, loss=losses[-1]) if losses else result


def evaluate(run: Run, *, n_samples: int | None = None, sampler: str = DEFAULT_SAMPLER, steps: int | None = None,
             seed: int = 0, sweep: tuple[str, ...] = DEFAULT_SWEEP, nfes: tuple[int, ...] = DEFAULT_NFE,
             sweep_samples: int | None = None, bpd_n: int = 100, guidance: float = 1.0,
             progress: bool = True) -> dict:
    """Evaluate a trained run and write ``evaluation.json`` and ``samples.safetensors`` into its directory.

    Args:
        n_samples: samples to score (default: the size of the train split for images — so the
            train-vs-test floor is measured at the same sample size — and 5,000 otherwise).
        sampler, steps: the headline sampler and its grid size (default 16; a distilled run samples its own
            way, with its fewest steps by default).
        sweep, nfes: entries (``"sampler"`` or ``"sampler@grid"``, :func:`sweep_entry`) and NFE budgets of
            the quality-vs-NFE curve (empty ``sweep`` skips it).
        sweep_samples: samples per point of the curve (default: ``n_samples`` up to ``SWEEP_SAMPLES``); the
            curve's floor, the same metric between real data of that size, is stored beside it.
        bpd_n: test images for bits/dim (0 skips); for points, test points for the model's PF-ODE log-likelihood.
    """
    from ..data import load_dataset
    from ..evaluate import (
        dataset_bits_per_dim,
        evaluate_samples,
        expectation_gap,
        headline_floor,
        pixel_baselines,
        true_density,
    )
    from ..samplers import SAMPLERS

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    for e in sweep:
        sweep_entry(e)
    if any(not (isinstance(k, int) and k >= 1) for k in nfes):
        raise ValueError(f"NFE budgets must be integers >= 1, got {list(nfes)}")
    if sweep_samples is not None and not (isinstance(sweep_samples, int) and sweep_samples >= 2):
        raise ValueError(f"sweep_samples must be an integer >= 2, got {sweep_samples!r}")
    steps = default_steps(run.denoiser) if steps is None else steps
    if own_sampling(run.denoiser) is not None:
        run.denoiser.check_steps(steps)
    check_writable(run.path)
    cfg = run.config
    train = load_dataset(cfg.dataset, "train", seed=cfg.seed)
    n = n_samples if n_samples is not None else (len(train) if train.is_image else 5000)
    k = min(n, SWEEP_SAMPLES) if sweep_samples is None else sweep_samples
    if train.is_image and k > len(train):  # its floor compares k train images with the test split
        raise ValueError(f"sweep_samples={k} is more than the {len(train)} train images its floor needs")
    t0 = time.perf_counter()
    x, y, nfe = generate(run.denoiser, cfg, n, sampler=sampler, steps=steps, seed=seed, guidance=guidance,
                         progress=progress, plan=run.plan)
    sample_s = time.perf_counter() - t0
    metrics = evaluate_samples(x, cfg.dataset, seed=seed)
    name = "fd" if "fd" in metrics else "sw2"
    own = own_sampling(run.denoiser) is not None
    used = run.denoiser.label(SAMPLERS[sampler].spec.deterministic) if own else sampler
    out = {"dataset": cfg.dataset, "sampler": used, "steps": steps, "nfe": nfe, "n_samples": n,
           "sampling_seconds": sample_s, "guidance": guidance if cfg.conditional else None,
           "sigma_range": list(run.sigma_range), "metrics": metrics,
           "headline": {"name": name, "value": metrics[name]}, "plan": run.plan is not None}
    result = run.path / "result.json"
    if result.exists():
        out["training"] = _training_summary(run.path, json.loads(result.read_text()))
    t0 = time.perf_counter()
    out["quality_vs_nfe"] = _sweep(run, k, sweep=sweep, nfes=nfes, seed=seed, guidance=guidance, progress=progress)
    if out["quality_vs_nfe"]:
        out["quality_vs_nfe_samples"] = k
        out["quality_vs_nfe_floor"] = metrics[f"{name}_floor"] if k == n else headline_floor(cfg.dataset, k,
                                                                                              seed=seed)
    timings = {"headline_sampling": sample_s, "sweep": time.perf_counter() - t0}
    test = load_dataset(cfg.dataset, "test", seed=cfg.seed)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    smin, smax = run.sigma_range
    if own:
        bpd_n = 0  # the probability-flow likelihood reads the model as a Gaussian denoiser, which these are not
    if train.is_image and bpd_n:
        out["bits_per_dim"] = dataset_bits_per_dim(run.denoiser, test.x[:bpd_n], levels=LEVELS[cfg.dataset],
                                                   sigma_min=smin, sigma_max=smax, generator=gen, progress=progress,
                                                   batch_size=max(1, math.ceil(min(bpd_n, len(test)) / 10)))
        out["bits_per_dim"]["baselines"] = pixel_baselines(train.x, test.x, levels=LEVELS[cfg.dataset])
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
    from ..data import load_dataset

    data = load_dataset(run.config.dataset, split, seed=run.config.seed)
    return data.x[:n], data.is_image, len(data)


def _unconditional(run: Run):
    """The model p(x): the null-label branch of a conditional run."""
    from ..guidance import ClassifierFree

    return ClassifierFree(run.denoiser, 0.0) if run.config.conditional else run.denoiser


def likelihood(run: Run, *, n: int = 100, split: str = "test", probes: int = 1, rtol: float = 1e-4,
               batch_size: int | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Test bits/dim (images, dequantized, Hutchinson with ``probes``) or log-likelihood in nats per point
    (exact divergence up to 64 dimensions) through the PF-ODE; writes ``likelihood.json``. ``batch_size``
    defaults to a tenth of the points so that the progress bar moves."""
    from ..evaluate import dataset_bits_per_dim, true_density
    from ..likelihood import default_divergence, log_likelihood
    from ..likelihood import evaluate as stream

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
        div = default_divergence(x[0].numel())
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
    from ..likelihood import decode, encode

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
    bar = progress_bar(progress, len(x), "encode + decode", "point")
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
