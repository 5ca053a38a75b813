"""Models that sample their own way: a progressive-distillation student set, a consistency model, a
blurring-diffusion denoiser and an interpolant from a non-Gaussian source.

A run whose config names a distillation, consistency or blurring objective, or an interpolant from a
source that is not Gaussian noise, opens (:func:`open_model`) as one of these wrappers around its EMA
model. Each is still a denoiser-shaped callable (its default
student's D, the consistency function f ~ the flow's end point, or the blurring model's E[x0 | x_hat],
so figures can call it) and carries its own sampling, which :func:`diffusionlens.run.generate` uses in
place of the generic samplers: ``--steps k`` is the number of network evaluations. The generic samplers
would be silently wrong for them, so grid, start and plan options are refused rather than ignored.

- progressive: the student of k steps on its own Euler/DDIM grid, every other level of the teacher's
  halvable Karras grid (:func:`diffusionlens.distill.halvable_grid`); students of every round are
  kept in the checkpoint.
- consistency: multistep consistency sampling (:func:`diffusionlens.distill.consistency_sample`) on
  the levels stored in the config or their default (:func:`diffusionlens.distill.objectives.sampling_levels`).
- blurring: DDIM steps or the exact-posterior ancestral steps per DCT coefficient
  (:func:`diffusionlens.frequency.blurring_sample`) on the Karras grid of the run's noise range; a
  deterministic ``--sampler`` picks the first, a stochastic one the second.
- transport: source samples (another data set's, or degraded train images) carried by Euler steps of
  the learned velocity (InDI for a paired, degraded source).

Every wrapper states ``kind``, ``student`` (a few-step student of a teacher), ``steps`` (the step
counts it has, None for any), ``default_steps``, ``variants`` (the determinism of each of its
samplers), ``label`` (a sampler's name in tables), ``sweep_steps`` (the step counts of its
quality-vs-NFE curves), ``why_not_a_denoiser`` (what the report's Gaussian-denoiser views say
instead) and ``sample(noise, steps, generator, progress, deterministic)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

DISTILLED = ("progressive-distillation", "consistency-distillation", "consistency-training")
"""Objectives whose runs are few-step students."""


@dataclass(frozen=True)
class OwnInfo:
    """What :func:`diffusionlens.run.generate` reads of a sampling: the evaluations per sample."""

    nfe: float


class ProgressiveStudents(nn.Module):
    """The students of a progressive distillation by step count; D of the fewest-step one."""

    kind = "progressive"
    student = True  # distilled from a teacher
    variants = (True,)
    why_not_a_denoiser = "a distilled run's model is a few-step sampler, not the denoiser this view reads"

    def __init__(self, students: dict[int, nn.Module], grid: Tensor):
        super().__init__()
        self.students = nn.ModuleDict({str(k): v for k, v in sorted(students.items())})
        self.grid = grid
        self.steps = tuple(sorted(students))
        self.default_steps = self.steps[0]

    def forward(self, x, sigma, **kwargs):
        return self.students[str(self.default_steps)](x, sigma, **kwargs)

    def check_steps(self, steps: int) -> int:
        if steps not in self.steps:
            raise ValueError(f"--steps {steps}: this progressive-distillation run has students of "
                             f"{', '.join(map(str, self.steps))} steps")
        return steps

    def grid_of(self, steps: int) -> Tensor:
        n = len(self.grid) - 1
        return self.grid[:: n // self.check_steps(steps)]

    def label(self, deterministic: bool = True) -> str:
        return f"{self.kind} student"

    def sweep_steps(self, nfes) -> tuple[int, ...]:
        return self.steps

    @torch.no_grad()
    def sample(self, noise: Tensor, steps: int, generator=None, progress: bool = False,
               deterministic: bool = True) -> tuple[Tensor, OwnInfo]:
        from ..samplers import sample

        grid = self.grid_of(steps)
        x = sample(self.students[str(steps)], noise, sampler="euler", grid=grid.to(noise.device), generator=generator,
                   progress=progress)
        return x, OwnInfo(float(steps))


class ConsistencyModel(nn.Module):
    """A consistency function with its multistep sampling levels; D = f (the one-step map)."""

    kind = "consistency"
    student = True
    variants = (False,)
    why_not_a_denoiser = ProgressiveStudents.why_not_a_denoiser
    label = ProgressiveStudents.label

    def __init__(self, f: nn.Module, cfg):
        super().__init__()
        self.f, self.cfg = f, cfg
        self.steps = None  # any number of steps
        self.default_steps = 1

    def forward(self, x, sigma, **kwargs):
        return self.f(x, sigma, **kwargs)

    def check_steps(self, steps: int) -> int:
        self.levels(steps)
        return steps

    def sweep_steps(self, nfes) -> tuple[int, ...]:
        return (1, 2, 4, 8)  # its few-step regime, whatever the samplers' budgets

    def levels(self, steps: int) -> list[float]:
        from ..distill.objectives import sampling_levels

        return sampling_levels(self.cfg, steps)

    @torch.no_grad()
    def sample(self, noise: Tensor, steps: int, generator=None, progress: bool = False,
               deterministic: bool = True) -> tuple[Tensor, OwnInfo]:
        from ..distill import consistency_sample

        x = consistency_sample(self.f, noise, self.levels(steps), sigma_min=self.f.sigma_min, generator=generator)
        return x, OwnInfo(float(steps))


class BlurringModel(nn.Module):
    """A blurring-diffusion denoiser with its own sampler: ``steps`` intervals of the Karras grid of the
    run's noise range, one evaluation each; DDIM (deterministic) or exact-posterior ancestral steps."""

    kind = "blurring"
    student = False
    variants = (True, False)
    why_not_a_denoiser = "blurring diffusion corrupts frequency by frequency: the views of a Gaussian denoiser do " \
                         "not apply"
    steps = None  # any number of steps
    default_steps = 16

    def __init__(self, den: nn.Module, cfg):
        from ..frequency import Blur
        from ._core import sampling_range

        super().__init__()
        self.den, self.sigma_range, self.blur = den, sampling_range(cfg), Blur()

    def forward(self, x, sigma, **kwargs):
        return self.den(x, sigma, **kwargs)

    def check_steps(self, steps: int) -> int:
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"--steps must be an integer >= 1, got {steps!r}")
        return steps

    def label(self, deterministic: bool = True) -> str:
        return f"blurring {'DDIM' if deterministic else 'ancestral'}"

    def sweep_steps(self, nfes) -> tuple[int, ...]:
        return tuple(nfes)

    @torch.no_grad()
    def sample(self, noise: Tensor, steps: int, generator=None, progress: bool = False,
               deterministic: bool = True) -> tuple[Tensor, OwnInfo]:
        from ..frequency import blurring_sample
        from ..processes import karras_grid

        grid = karras_grid(self.check_steps(steps), *self.sigma_range)
        x = blurring_sample(self.den, noise, grid, self.blur, stochastic=not deterministic, generator=generator)
        return x, OwnInfo(float(steps))


class SourceTransport(nn.Module):
    """An interpolant run whose source is not Gaussian (another data set, or degraded copies of the data): its
    samples are source samples carried to the target by ``steps`` Euler steps of the learned velocity (for a
    paired, degraded source these are InDI restorations, one step being the MMSE regressor). Sample i's
    source is drawn with its own seed: a degraded source degrades train image seed mod n (so the test split
    stays unseen), a data-set source takes one of its train samples."""

    kind = "transport"
    student = False
    variants = (True,)
    why_not_a_denoiser = "this run transports a non-Gaussian source: the views of a Gaussian denoiser do not apply"
    steps = None  # any number of steps
    default_steps = 16

    def __init__(self, den: nn.Module, cfg, spec: str):
        from ..data import load_dataset
        from ..interpolants import net_velocity
        from ..interpolants.objective import source_of

        super().__init__()
        self.den, self.spec = den, spec
        train = load_dataset(cfg.dataset, "train", seed=cfg.seed)
        self.pool, self.source = train.x.float(), source_of(spec, train)
        self.velocity = net_velocity(den.net)

    @property
    def net(self) -> nn.Module:
        return self.den.net  # the velocity network, as on the run's Denoiser

    def forward(self, x, sigma, **kwargs):
        return self.den(x, sigma, **kwargs)

    check_steps = BlurringModel.check_steps

    def label(self, deterministic: bool = True) -> str:
        return f"transport from {self.spec}"

    def sweep_steps(self, nfes) -> tuple[int, ...]:
        return tuple(nfes)

    def sources(self, seeds: Tensor) -> Tensor:
        """One source sample per 64-bit seed (batch,), independent of the batch it is drawn in."""
        out = []
        for s in seeds.tolist():
            g = torch.Generator().manual_seed(s % (2**63))
            x0 = self.pool[s % len(self.pool)][None]
            out.append(self.source(x0, g))
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, noise: Tensor, steps: int, generator=None, progress: bool = False,
               deterministic: bool = True) -> tuple[Tensor, OwnInfo]:
        from ..interpolants import transport

        if not isinstance(generator, Tensor):
            raise TypeError("a transport run draws its sources from per-sample seeds (the run layer's generate)")
        x1 = self.sources(generator.cpu()).to(device=noise.device, dtype=noise.dtype)
        out = transport(self.velocity, x1, steps=self.check_steps(steps), method="euler")
        return out.x, OwnInfo(out.nfe)


def open_model(path, den, cfg, device="cpu"):
    """The model a run samples: ``den`` itself for an ordinary run; the wrapper of a distilled or blurring one
    (the progressive students are read from the newest checkpoint)."""
    from .interpolants import source_spec

    objective = getattr(cfg, "objective", None)
    if objective == "blurring":
        return BlurringModel(den, cfg).eval()
    spec = source_spec(cfg) if objective is not None else None
    if spec is not None and spec != "gaussian":
        return SourceTransport(den, cfg, spec).eval()
    if objective not in DISTILLED:
        return den
    if cfg.objective != "progressive-distillation":
        return ConsistencyModel(den, cfg).eval()
    from ..distill import halvable_grid
    from ..distill.objectives import sigma_range
    from ..distill.progressive import _rounds
    from ..nets import build_net
    from ..training.checkpoint import latest_checkpoint, load_checkpoint

    opts = cfg.objective_options or {}
    steps, final = int(opts.get("steps", 16)), int(opts.get("final_steps", 1))
    meta, tensors = load_checkpoint(latest_checkpoint(path))
    rnd = int((meta.get("objective") or {}).get("round", _rounds(steps, final) - 1))
    students = {steps >> (rnd + 1): den}  # the network of the round in progress (the final one when done)
    prefix = "objective/students/"
    for key in tensors:
        if key.startswith(prefix):
            students.setdefault(int(key[len(prefix):].split("/", 1)[0]), None)
    for k in [k for k, v in students.items() if v is None]:
        net = build_net(cfg.net)
        p = f"{prefix}{k}/"
        net.load_state_dict({key[len(p):]: v for key, v in tensors.items() if key.startswith(p)})
        students[k] = cfg.denoiser(net.to(device).eval().requires_grad_(False))
    return ProgressiveStudents(students, halvable_grid(steps, *sigma_range(cfg))).eval()


def own_sampling(den):
    """The model's own ``sample(noise, steps, generator, progress, deterministic)`` when it has one (a distilled
    or blurring run), else None."""
    return den.sample if isinstance(den, (ProgressiveStudents, ConsistencyModel, BlurringModel, SourceTransport)) \
        else None


def default_steps(den, fallback: int = 16) -> int:
    """The step count a run samples with when none is asked for: a distilled model's fewest, else ``fallback``."""
    return den.default_steps if own_sampling(den) is not None else fallback


def own_sweep(run, n: int, nfes, *, seed: int = 0, progress: bool = False) -> dict:
    """Quality against NFE of a run that samples its own way, each of its samplers one curve, same noise and
    metric as the samplers' sweep: a student at the step counts it has (any: 1, 2, 4, 8), a blurring model
    at ``nfes``."""
    from ..evaluate import headline_scorer
    from .sampling import generate_own

    den = run.denoiser
    steps = den.sweep_steps(nfes)
    score = headline_scorer(run.config.dataset, seed=seed)
    curves = {}
    for deterministic in den.variants:
        curve = curves.setdefault(den.label(deterministic), [])
        for k in steps:
            xs, _, used = generate_own(den, run.config, n, steps=k, seed=seed, deterministic=deterministic,
                                       progress=progress)
            curve.append([used, score(xs)])
    return curves


def beside_teacher(run, n: int, *, seed: int = 0) -> list[tuple[str, Tensor, float]]:
    """(title, samples, headline metric) of a distilled run at 1, 2 and 4 steps (those it has), then of its
    teacher at the default sampler and 16 steps (a run teacher), or exact samples (the oracle), same noise."""
    from ..evaluate import headline_scorer, true_density
    from ..samplers import DEFAULT_SAMPLER
    from ._core import open_run
    from .sampling import generate

    den, cfg = run.denoiser, run.config
    score = headline_scorer(cfg.dataset, seed=seed)
    steps = [k for k in (1, 2, 4) if den.steps is None or k in den.steps]
    out = []
    for k in steps:
        x, _, _ = generate(den, cfg, n, steps=k, seed=seed)
        out.append((f"{den.kind} student, {k} step{'s' if k > 1 else ''}", x, score(x)))
    teacher = (cfg.objective_options or {}).get("teacher")
    if teacher == "oracle":
        x = true_density(cfg.dataset).sample(n, torch.Generator().manual_seed(seed)).float()
        out.append(("exact samples (the oracle teacher)", x, score(x)))
    elif teacher is not None:
        t = open_run(teacher, device=run.device, plan=False)
        x, _, nfe = generate(t.denoiser, t.config, n, sampler=DEFAULT_SAMPLER, steps=16, seed=seed)
        out.append((f"teacher, {DEFAULT_SAMPLER} NFE {nfe:g}", x, score(x)))
    return out
