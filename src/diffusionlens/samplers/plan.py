"""A sampling plan: what a pilot measured on one model, stored with it, so that the tuned configuration
is what :func:`~diffusionlens.samplers.sample` gives by default.

:func:`tune` solves the pilot once (:func:`~diffusionlens.samplers.error_density`: the error density and
the data mean; :func:`~diffusionlens.samplers.gaussian_model`: the Gaussian moments of the teleported
start) and, for each (sampler, NFE) asked for, chooses on the pilot between the fitted grid with its stop
and the analytic start (:class:`MeanStart`) and the same with a teleported start (:class:`Teleport`),
keeping whichever reproduces the pilot's exact solutions better. :meth:`SamplingPlan.save` writes
``plan.safetensors`` (tensors) then ``plan.json`` (everything else, with the tensor file's SHA-256), each
through a temporary file and ``os.replace``; :meth:`SamplingPlan.load` never unpickles and fails with one
line naming the file when either is unreadable or inconsistent.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from .._util import atomic_write
from .fitted import ErrorDensity, Trial, error_density, search_stops, start_candidates, stop_candidates
from .gaussian import GaussianModel, gaussian_model
from .registry import DEFAULT_SAMPLER, resolve_sampler
from .resolve import DEFAULT_STEPS, SIGMA_MAX, SIGMA_MIN, Resolved
from .starts import MeanStart, NoiseStart, Teleport

__all__ = ["Tuned", "SamplingPlan", "tune", "PLAN_JSON", "PLAN_TENSORS", "DEFAULT_NFES", "TUNED_SAMPLERS"]

PLAN_JSON = "plan.json"
PLAN_TENSORS = "plan.safetensors"
FORMAT = "diffusionlens-sampling-plan"
VERSION = 1
DEFAULT_NFES = (6, 8, 10, 12, 16, 24, 32)
"""The NFE budgets :func:`tune` measures by default."""
TUNED_SAMPLERS = (DEFAULT_SAMPLER, "unipc")
"""The samplers :func:`tune` measures by default: the default one and UniPC, the most accurate of the
multistep samplers from about 16 steps (benchmarks/samplers.md); ``sample(plan=plan)`` without a sampler
takes whichever had the smaller pilot error at the budget."""


@dataclass(frozen=True)
class Tuned:
    """One tuned configuration: ``sampler`` at ``nfe`` evaluations runs ``steps`` intervals of ``sigmas``
    from a mean start (``start="mean"``) or a teleported one (``"teleport"``, from ``sigmas[0]``);
    ``pilot_rmse`` is its error against the pilot's exact solutions."""

    sampler: str
    nfe: int
    steps: int
    start: str
    sigmas: Tensor
    pilot_rmse: float


@dataclass(frozen=True)
class SamplingPlan:
    """What :func:`tune` measured on one model (see the module docstring).

    Attributes:
        shape: one sample's shape. sigma_min, sigma_max: the range the pilot covered.
        density: the pilot's error density (without the pilot's samples; it cuts fitted grids of any length).
        data_mean: (*shape) float64 E[x0]. gaussian: the data's :class:`GaussianModel`, or None.
        tuned: {(sampler, nfe): :class:`Tuned`}.
        class_means: (conditions, *shape) float64 E[x0 | condition] of a plan tuned on a conditional model
            (``tune(conditions=...)``), else None. Its mean start takes each sample's condition's mean:
            pass ``MeanStart(class_means[labels])`` per batch.
    """

    shape: tuple
    sigma_min: float
    sigma_max: float
    density: ErrorDensity
    data_mean: Tensor
    gaussian: GaussianModel | None = None
    tuned: dict = field(default_factory=dict)
    class_means: Tensor | None = None

    def lookup(self, sampler: str, *, steps: int | None = None, nfe: int | None = None, start=None,
               options: dict | None = None) -> Resolved | None:
        """The tuned configuration for ``sampler`` at this budget (``nfe``, or the NFE of ``steps``, or of
        the default steps), or None when the plan has none or the request asks for something else
        (sampler options, or a plain start)."""
        fn, spec = resolve_sampler(sampler)
        if options or isinstance(start, NoiseStart):
            return None
        if nfe is None:
            nfe = spec.nfe(DEFAULT_STEPS if steps is None else steps)
        t = self.tuned.get((spec.name, nfe))
        if t is None or (isinstance(start, MeanStart) and t.start != "mean"):
            return None
        if isinstance(start, MeanStart) and start.mean is not None:
            st = start
        elif t.start == "mean":
            st = MeanStart(self.data_mean)
        else:
            st = Teleport(self.gaussian, analytic=True, first=float(t.sigmas[0]))
        return Resolved(fn, spec, t.sigmas.clone(), st, self.sigma_max)

    def best_sampler(self, nfe: int) -> str | None:
        """The tuned sampler with the smallest pilot error at ``nfe`` evaluations, or None."""
        at = [t for (_, n), t in self.tuned.items() if n == nfe]
        return min(at, key=lambda t: t.pilot_rmse).sampler if at else None

    # ------------------------------------------------------------------ files

    def save(self, run_dir) -> None:
        """Write ``plan.safetensors`` then ``plan.json`` into ``run_dir`` (each atomically)."""
        from safetensors.torch import save

        run_dir = Path(run_dir)
        tensors = {"density/mesh": self.density.mesh, "density/n": self.density.n, "data_mean": self.data_mean}
        if self.class_means is not None:
            tensors["class_means"] = self.class_means
        if self.gaussian is not None:
            tensors |= {"gaussian/mean": self.gaussian.mean, "gaussian/eigvals": self.gaussian.eigvals,
                        "gaussian/eigvecs": self.gaussian.eigvecs}
        for (name, nfe), t in self.tuned.items():
            tensors[f"grid/{name}/{nfe}"] = t.sigmas
        blob = save({k: v.detach().to("cpu", torch.float64).contiguous() for k, v in tensors.items()})
        meta = {
            "format": FORMAT, "version": VERSION, "tensors": PLAN_TENSORS,
            "sha256": hashlib.sha256(blob).hexdigest(), "shape": list(self.shape),
            "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "pilot_nfe": self.density.pilot_nfe,
            "gaussian_sigma": None if self.gaussian is None else self.gaussian.sigma,
            "tuned": [{"sampler": t.sampler, "nfe": t.nfe, "steps": t.steps, "start": t.start,
                       "pilot_rmse": t.pilot_rmse} for t in self.tuned.values()],
        }
        atomic_write(run_dir / PLAN_TENSORS, blob)
        atomic_write(run_dir / PLAN_JSON, (json.dumps(meta, indent=1) + "\n").encode())

    @classmethod
    def load(cls, run_dir) -> SamplingPlan | None:
        """The plan stored in ``run_dir``, or None when there is none; ValueError naming the file when
        it is unreadable, of another format, or inconsistent with its tensor file."""
        from safetensors.torch import load

        jpath = Path(run_dir) / PLAN_JSON
        if not jpath.exists():
            return None
        try:
            meta = json.loads(jpath.read_text())
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError(f"not a version-{VERSION} sampling plan")
            tpath = jpath.parent / PLAN_TENSORS
            blob = tpath.read_bytes()
            if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
                raise ValueError(f"{tpath} does not match its SHA-256 in the plan")
            ts = load(blob)
            shape = tuple(int(v) for v in meta["shape"])
            dens = ErrorDensity(float(meta["sigma_min"]), float(meta["sigma_max"]), ts["density/mesh"],
                                ts["density/n"], float(meta["pilot_nfe"]), data_mean=ts["data_mean"])
            gauss = None
            if "gaussian/mean" in ts:
                gauss = GaussianModel(ts["gaussian/mean"], ts["gaussian/eigvals"], ts["gaussian/eigvecs"],
                                      meta["gaussian_sigma"])
            tuned = {}
            for e in meta["tuned"]:
                t = Tuned(str(e["sampler"]), int(e["nfe"]), int(e["steps"]), str(e["start"]),
                          ts[f"grid/{e['sampler']}/{e['nfe']}"], float(e["pilot_rmse"]))
                if t.start not in ("mean", "teleport") or t.sigmas.shape != (t.steps + 1,) or (
                        t.start == "teleport" and gauss is None):
                    raise ValueError(f"inconsistent entry for {t.sampler} at NFE {t.nfe}")
                tuned[(t.sampler, t.nfe)] = t
            if tuple(ts["data_mean"].shape) != shape:
                raise ValueError(f"data_mean has shape {tuple(ts['data_mean'].shape)}, the plan says {shape}")
            class_means = ts.get("class_means")
            if class_means is not None and tuple(class_means.shape[1:]) != shape:
                raise ValueError(f"class_means has shape {tuple(class_means.shape)}, the plan says (C, *{shape})")
        except Exception as e:  # any failure to read names the file in one line
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"unreadable sampling plan {jpath}: {msg}") from None
        return cls(shape, dens.sigma_min, dens.sigma_max, dens, ts["data_mean"], gauss, tuned, class_means)


def tune(
    denoiser,
    shape,
    samplers=TUNED_SAMPLERS,
    nfes=None,
    *,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    teleport: bool = True,
    pilot: int = 256,
    device=None,
    dtype: torch.dtype = torch.float32,
    conditions: list | None = None,
    screen: int | None = 32,
    progress: bool = False,
) -> SamplingPlan:
    """Measure the pilot once and tune each (deterministic, fixed-grid) sampler at each NFE budget:
    ``samplers`` names them, each tuned at ``nfes`` (default ``DEFAULT_NFES``), or maps each to its own
    budgets ({"unipc": (4, 8), "deis": (16,)}).

    For each budget one search on the pilot (:func:`~diffusionlens.samplers.fitted.search_stops`, as
    :func:`stop_grid` runs it) chooses the fitted grid's last level together with its start: the analytic
    mean start or, with ``teleport``, the teleported one with its first level. ``pilot``: samples of the pilot
    (two levels are chosen on it with the teleported start: 256 keeps that from overfitting). The
    denoiser is called on subsets of the pilot batch, so conditioning cannot be bound by position.

    ``conditions``: for a conditional model, one denoiser per condition (e.g. bound to each class): the
    pilot is split among them (at least 8 samples each; condition i's noise from seed i), the stops are
    chosen on the pooled pilots with each condition's own mean start, the fitted family comes from their
    average density, and the plan keeps the per-condition means (``class_means``). No teleported start:
    one Gaussian would not describe every condition.

    The budgets are tuned in increasing order, each searching only the levels the previous one leaves
    possible (:func:`_narrowed`), every candidate screened on ``screen`` pilot samples and the best few of
    both starts measured on the whole pilot (``stop_grid(screen=...)``; None: every candidate on all of it).
    """
    specs = _requested(samplers, nfes)
    with torch.no_grad():
        dens, pilots = _pilot(denoiser, shape, sigma_min, sigma_max, pilot, conditions, device, dtype)
        teleport = teleport and conditions is None  # one Gaussian would not describe every condition
        gauss = gaussian_model(denoiser, shape, sigma_max, device=device, dtype=dtype) if teleport else None
    if gauss is not None:  # row-major, as it loads: a plan samples the same before and after a save
        gauss = replace(gauss, eigvecs=gauss.eigvecs.contiguous())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(b) for *_, b in specs), desc="tune", unit="budget")
    tuned = {}
    for fn, spec, budgets in specs:
        tuned.update(_tune_budgets(fn, spec, budgets, dens, pilots or [(denoiser, dens)], gauss, screen, bar))
    if bar is not None:
        bar.close()
    class_means = None if pilots is None else torch.stack([p.data_mean for _, p in pilots])
    mean = dens.data_mean if pilots is None else class_means.mean(0)
    light = ErrorDensity(dens.sigma_min, dens.sigma_max, dens.mesh, dens.n, dens.pilot_nfe, data_mean=mean)
    return SamplingPlan(tuple(shape), sigma_min, sigma_max, light, mean, gauss, tuned, class_means)


def _requested(samplers, nfes) -> list:
    """(function, spec, sorted budgets) of each sampler ``tune`` was asked for, each checked."""
    if isinstance(samplers, Mapping):
        if nfes is not None:
            raise ValueError("nfes is given per sampler when samplers is a mapping {sampler: budgets}")
        wanted = list(samplers.items())
    else:
        wanted = [(s, DEFAULT_NFES if nfes is None else nfes) for s in samplers]
    specs = []
    for s, budgets in wanted:
        fn, spec = resolve_sampler(s)
        if not spec.deterministic or spec.adaptive or spec.order is None:
            raise ValueError(f"tune takes deterministic fixed-grid samplers with an order, got {spec.name!r}")
        budgets = sorted({int(n) for n in budgets})
        if not budgets or budgets[0] < 2:
            raise ValueError(f"NFE budgets must be integers >= 2 (the analytic start saves one), got {budgets} "
                             f"for {spec.name!r}")
        specs.append((fn, spec, budgets))
    return specs


def _pilot(denoiser, shape, sigma_min, sigma_max, pilot: int, conditions, device, dtype):
    """(error density, per-condition pilots or None): one pilot, or one per condition (seed i, at least 8
    samples each) whose densities are averaged."""
    if conditions is None:
        return error_density(denoiser, shape, sigma_min, sigma_max, pilot=pilot, device=device, dtype=dtype), None
    pilots = [(c, error_density(c, shape, sigma_min, sigma_max, pilot=max(8, pilot // len(conditions)),
                                generator=torch.Generator().manual_seed(i), device=device, dtype=dtype))
              for i, c in enumerate(conditions)]
    if not pilots:
        raise ValueError("conditions must not be empty")
    return ErrorDensity.average([p for _, p in pilots]), pilots


def _tune_budgets(fn, spec, budgets: list, dens: ErrorDensity, pilots: list, gauss, screen, bar) -> dict:
    """{(sampler, nfe): Tuned} of one sampler, its budgets in increasing order, each search narrowed by the
    choice at the budget before (:func:`_narrowed`)."""
    tuned, previous = {}, None
    for nfe in budgets:
        steps = spec.steps_for_nfe(nfe + 1)
        if steps < 2:
            continue
        lasts, firsts = _narrowed(previous, dens.sigma_min, dens.sigma_max)
        trials = [Trial("mean", dens.sigma_max, c) for c in lasts]
        if gauss is not None:
            trials += [Trial("teleport", f, c) for f in firsts for c in lasts if c < f]
        best, errors = search_stops(fn, steps, trials, density=dens, pilots=pilots, order=spec.order,
                                    teleport=gauss, screen=screen)
        if best is None:
            raise FloatingPointError(f"sampler {spec.name!r} diverged on the pilot at every tried grid for {nfe} NFE")
        previous, grid = best
        tuned[(spec.name, nfe)] = Tuned(spec.name, nfe, steps, previous.start, grid, errors[previous])
        if bar is not None:
            bar.set_postfix_str(f"{spec.name} at {nfe} NFE")
            bar.update(1)
    return tuned


def _narrowed(previous: Trial | None, sigma_min: float, sigma_max: float) -> tuple[list, list]:
    """The stop and start candidates at the next budget, given the trial chosen at the previous one.

    More steps shrink the integration error while the error of the final jump from sigma_L and of the
    Gaussian flow down to the first level stay what they are, so as the budget grows the best last level
    falls and the best first level rises: the search keeps the candidates at or below the previous last
    level and at or above the previous first, with one candidate of margin either side (an argument, not a
    theorem: tests/test_stop_grid.py checks on an oracle mixture that the exhaustive optimum stays inside)."""
    lasts, firsts = stop_candidates(sigma_min, sigma_max), start_candidates(sigma_max)
    if previous is None:
        return lasts, firsts
    last, first = previous.last, previous.first
    i = min(range(len(lasts)), key=lambda k: abs(math.log(lasts[k] / last)))
    j = min(range(len(firsts)), key=lambda k: abs(math.log(firsts[k] / first)))
    return lasts[:i + 2], firsts[:j + 2]
