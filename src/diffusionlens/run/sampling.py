"""Sampling a run: batch-invariant per-sample noise, one pilot per condition, samples written to files."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from .._util import device_of
from ..samplers import DEFAULT_SAMPLER
from ._core import LEVELS, Run, progress_bar, sampling_range
from .files import check_writable, output_stem, save_tensors


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
    """Grid intervals giving about ``nfe`` evaluations (from the sampler's spec)."""
    from ..samplers import SAMPLERS

    return SAMPLERS[sampler].spec.steps_for_nfe(nfe)


class _Conditions:
    """The denoiser of each condition sampled: one (None) for unconditional runs, one per class otherwise."""

    def __init__(self, denoiser, conditional: bool, num_classes: int, guidance: float, label: int | None):
        from ..guidance import ClassifierFree

        self.denoiser, self.guidance = denoiser, guidance
        self.guided = ClassifierFree(denoiser, guidance) if conditional else None
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


def class_denoisers(denoiser, num_classes: int, guidance: float = 1.0) -> list:
    """One denoiser per class of a conditional model, its label bound (guided with weight ``guidance``):
    what a per-class pilot is solved on (the solvers call it on subsets of the pilot batch, so labels
    cannot be bound by position)."""
    conds = _Conditions(denoiser, True, num_classes, guidance, None)
    return [conds.of(c) for c in conds.classes]


def _pilots(conds: _Conditions, shape, smin, smax, *, teleport: bool, cache, dev, progress: bool = False) -> list:
    """The (denoiser, ErrorDensity) pilot of each condition, solved once for all batches (and across calls
    through ``cache``): the pilot grids' measurements, and each condition's data mean."""
    from ..samplers import error_density

    key = ("pilots", tuple(conds.classes), conds.guidance, teleport)
    pilots = None if cache is None else cache.get(key)
    if pilots is None:
        pilots = []
        bar = progress_bar(progress, len(conds.classes), "pilot solve", "condition")
        for c in conds.classes:
            if c is None:
                dens = error_density(conds.of(c), shape, smin, smax, device=dev, pilot=256 if teleport else 64)
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
    return pilots


def _resolve(conds: _Conditions, shape, smin, smax, *, sampler, steps, grid, analytic_start, gauss, plan, cache, dev,
             progress):
    """The run's grid and start, resolved once for all batches (``samplers.resolve``), and the data mean of each
    condition for a mean start ({condition: mean}, or None where the start needs none or the plan has them)."""
    from ..samplers import PILOT_GRIDS, SAMPLERS, Grid, MeanStart, Teleport, data_mean, resolve

    spec = SAMPLERS[sampler].spec
    pilot, means = None, None
    if grid is not None and Grid.parse(grid) in PILOT_GRIDS and not spec.adaptive:
        pilot = _pilots(conds, shape, smin, smax, teleport=gauss is not None, cache=cache, dev=dev, progress=progress)
        means = {c: p.data_mean for c, (_, p) in zip(conds.classes, pilot)}
    if gauss is not None:
        start = Teleport(gauss, analytic=bool(analytic_start))
    elif analytic_start:
        if means is None:
            means = {c: data_mean(conds.of(c), shape, smax, device=dev) for c in conds.classes}
        start = MeanStart(means[conds.classes[0]])  # per batch: each sample's condition's mean
    else:
        start = None  # the plan's tuned start where it has one, else the plain start
    r = resolve(conds.denoiser, shape, sampler, steps=None if spec.adaptive else steps, grid=grid, start=start,
                sigma_min=smin, sigma_max=smax, plan=plan, device=dev, pilot=pilot)
    if isinstance(r.start, MeanStart) and means is None and plan is not None and plan.class_means is not None:
        means = {c: plan.class_means[c] for c in conds.classes if c is not None}
    return r, means


def usable_plan(plan, cfg, guidance: float):
    """The stored plan where it was measured for these samples: a conditional run's plan is tuned unguided."""
    if plan is None or (plan.class_means is not None) != bool(cfg.conditional):
        return None
    return plan if not cfg.conditional or guidance == 1.0 else None


@torch.no_grad()
def generate(denoiser, cfg, n: int, *, sampler: str = DEFAULT_SAMPLER, steps: int = 16, seed: int = 0,
             batch_size: int = 1000, guidance: float = 1.0, grid: str | None = None, label: int | None = None,
             analytic_start: bool = False, progress: bool = False, teleport: bool = False,
             pilot_cache: dict | None = None, plan=None) -> tuple[Tensor, Tensor | None, float]:
    """n samples (n, *data_shape) of a trained denoiser, their labels (conditional runs) and the NFE per sample.

    Sample i's initial noise and sampler noise depend only on ``seed`` and i (per-sample streams), so
    the result does not depend on ``n`` or ``batch_size`` and two samplers given the same seed start
    from the same noise. Conditional runs: labels cycle through the classes (or are all ``label``),
    guided with weight ``guidance``. The grid and the start are resolved once for all batches
    (``samplers.resolve``): the pilot grids (``"fitted"``, ``"fitted-stop"``, ...) from one pilot (one per
    class, pooled); ``analytic_start`` replaces the first evaluation by the data mean (per class);
    ``teleport`` (unconditional, a ``-stop`` grid) starts below sigma_max by the flow of the Gaussian
    measured on the model. ``pilot_cache``: a dict kept across calls on the same model and conditions, so
    the (deterministic) pilots are solved once. ``plan``: the run's stored sampling plan, whose tuned grid
    and start the sampler uses where it has one for this budget and no grid is asked for (a conditional
    run's plan, tuned per class without guidance, at guidance 1 only).
    """
    from ..data import load_dataset
    from ..samplers import PILOT_GRIDS, SAMPLERS, Grid, MeanStart, gaussian_model, noise_seeds, randn, sample
    from .students import own_sampling

    if getattr(cfg, "objective", None) == "analog-bits":
        raise ValueError("an analog-bits run draws tokens with diffusionlens.discrete.analog.sample_run (any "
                         "continuous sampler on the bits, then thresholding); sample and evaluate do not read it")
    if own_sampling(denoiser) is not None:  # a distilled, blurring or transport run: its own sampling
        asked = {"grid": grid, "analytic_start": analytic_start, "teleport": teleport}
        if any(asked.values()):
            bad = ", ".join(f"{k}={v!r}" for k, v in asked.items() if v)
            raise ValueError(f"a {denoiser.kind} run samples its own way (steps = evaluations); {bad} does not apply")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        return generate_own(denoiser, cfg, n, steps=steps, seed=seed, batch_size=batch_size,
                            deterministic=SAMPLERS[sampler].spec.deterministic, progress=progress)
    _check_count(n)
    if teleport and (cfg.conditional or grid is None or Grid.parse(grid) not in PILOT_GRIDS
                     or Grid.parse(grid) is Grid.FITTED):
        raise ValueError("teleport needs an unconditional run and a -stop grid such as 'fitted-stop' (one Gaussian "
                         f"model of the data, the start chosen on the pilot); got conditional={cfg.conditional}, "
                         f"grid={grid!r}")
    data = load_dataset(cfg.dataset, "test", seed=cfg.seed, n=2 if cfg.dataset not in LEVELS else None)
    shape = tuple(data.data_shape)
    smin, smax = sampling_range(cfg)
    dev = device_of(denoiser)
    labels = None
    if cfg.conditional:
        labels = torch.full((n,), int(label)) if label is not None else torch.arange(n) % data.num_classes
    conds = _Conditions(denoiser, cfg.conditional, data.num_classes if cfg.conditional else 0, guidance, label)
    gauss = None
    if teleport:
        gauss = None if pilot_cache is None else pilot_cache.get("gaussian")
        if gauss is None:
            gauss = gaussian_model(denoiser, shape, smax, device=dev)
            if pilot_cache is not None:
                pilot_cache["gaussian"] = gauss
    r, means = _resolve(conds, shape, smin, smax, sampler=sampler, steps=steps, grid=grid,
                        analytic_start=analytic_start, gauss=gauss, plan=usable_plan(plan, cfg, guidance),
                        cache=pilot_cache, dev=dev, progress=progress)
    g = torch.Generator().manual_seed(seed)
    noise_ids, sampler_ids = noise_seeds(g, n), noise_seeds(g, n)  # two per-sample streams: start, sampler
    out, nfe = [], 0.0
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        noise = randn((b,) + shape, noise_ids[i:i + b]).to(dev)
        yb = None if labels is None else labels[i:i + b]
        start = r.start
        if yb is not None and means is not None and isinstance(start, MeanStart):
            start = MeanStart(torch.stack([means[int(c)] for c in yb]))
        x, info = sample(conds.batch(None if yb is None else yb.to(dev)), noise, sampler=r.sampler,
                         grid=r.sigmas, start=start, sigma_max=r.sigma_max,
                         generator=sampler_ids[i:i + b].to(dev), return_info=True, progress=progress, **r.options)
        out.append(_finite(x, sampler, i))
        nfe = info.nfe
    return torch.cat(out), labels, nfe


def _check_count(n) -> None:
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"number of samples must be an integer >= 1, got {n!r}")


def _finite(x: Tensor, what: str, i: int) -> Tensor:
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"sampler {what!r} produced a non-finite sample (batch starting at {i})")
    return x.cpu()


@torch.no_grad()
def generate_own(model, cfg, n: int, *, steps: int, seed: int = 0, batch_size: int = 1000, deterministic: bool = True,
                 progress: bool = False) -> tuple[Tensor, None, float]:
    """:func:`generate` for a model that samples its own way (:func:`diffusionlens.run.students.own_sampling`):
    ``steps`` of its deterministic or stochastic sampler (where it has both), same per-sample noise streams."""
    from ..data import load_dataset
    from ..samplers import noise_seeds, randn

    _check_count(n)
    model.check_steps(steps)
    shape = tuple(load_dataset(cfg.dataset, "test", seed=cfg.seed, n=2 if cfg.dataset not in LEVELS else None)
                  .data_shape)
    dev = device_of(model)
    g = torch.Generator().manual_seed(seed)
    noise_ids, sampler_ids = noise_seeds(g, n), noise_seeds(g, n)
    out, nfe = [], 0.0
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        noise = randn((b,) + shape, noise_ids[i:i + b]).to(dev)
        x, info = model.sample(noise, steps, generator=sampler_ids[i:i + b].to(dev), progress=progress,
                               deterministic=deterministic)
        out.append(_finite(x, model.label(deterministic), i))
        nfe = info.nfe
    return torch.cat(out), None, nfe


def sample_to_files(run: Run, n: int, *, out=None, progress: bool = False, **options) -> dict:
    """Sample a run (options of :func:`generate`) and write ``<stem>.safetensors`` ('x', and 'y' for
    conditional runs) and a ``<stem>.png`` figure; returns {"nfe", "seconds", "stem"}."""
    from .._plot import sample_figure
    from ..data import load_dataset

    sampler, steps = options.get("sampler", DEFAULT_SAMPLER), options.get("steps", 16)
    stem = output_stem(out, run.path / f"samples-{sampler}-{steps}")
    check_writable(stem.parent)
    t0 = time.perf_counter()
    x, y, nfe = generate(run.denoiser, run.config, n, progress=progress, plan=run.plan, **options)
    secs = time.perf_counter() - t0
    save_tensors(stem.with_name(stem.name + ".safetensors"), {"x": x} if y is None else {"x": x, "y": y})
    test = load_dataset(run.config.dataset, "test", seed=run.config.seed)
    guided = f", guidance {options.get('guidance', 1.0):g}" if run.config.conditional else ""
    sample_figure(x, str(stem) + ".png", reference=test.x, title=f"{sampler}, NFE {nfe:g}{guided}")
    return {"nfe": nfe, "seconds": secs, "stem": stem}
