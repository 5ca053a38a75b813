"""The velocity objective of an interpolant (flow matching / stochastic interpolants), on the
training loop, and a small fitting routine for pairs that live outside a data set (reflow).

Per sample: ||v(x_t, t) - (alpha' x0 + beta' x1 + gamma' z)||^2 (mean over coordinates), t uniform
in [t_min, t_max], x1 from the objective's source re-paired by its coupling.

Named objectives (``TrainConfig.objective``), their settings in ``TrainConfig.objective_options``:

- ``interpolant``: ``source`` (``gaussian``, a data set name, or ``degraded:KIND[:LEVEL]``, default
  gaussian), ``coupling`` (independent, ot, sinkhorn, paired; default independent, paired for a
  degraded source), ``path`` (linear, trig) and ``noise`` (gamma's scale) of the :class:`Interpolant`;
  ``interpolant+ot`` and ``interpolant+sinkhorn`` are the same with that coupling (older runs' names);
- ``reflow``: ``teacher`` (an interpolant run with a Gaussian source), ``pairs`` (how many (sample,
  source) pairs the teacher's flow makes, once, when the objective is built), ``solve_steps`` (its
  Heun steps): the next rectified flow (:mod:`.reflow`), starting from the teacher's weights when the
  networks agree. The network is called
as ``net(x_t, t)``: for the linear Gaussian-source case this is exactly what
:class:`~diffusionlens.model.Denoiser` feeds a ``Param.VELOCITY`` network of the ``flow`` process
(x_in = s x_hat = x_t, conditioning t), so such a run is also a canonical denoiser and the run
layer, samplers and report apply unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..objectives.base import Batch, Objective, Streams
from .core import Interpolant
from .couplings import COUPLINGS, DEGRADATIONS, MAX_OT_BATCH, Degraded, Gaussian, TableSource, couple

__all__ = ["VelocityMatching", "PairTable", "velocity_loss", "net_velocity", "fit", "build", "build_independent",
           "build_ot", "build_sinkhorn", "build_reflow", "source_of", "interpolant_options", "ALIASES"]


def velocity_loss(net, interpolant: Interpolant, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor | None) -> Tensor:
    """Per-sample mean squared error of ``net(x_t, t)`` against the interpolant's velocity target."""
    pred = net(interpolant.sample(x0, x1, t, z), t)
    return (pred - interpolant.target(x0, x1, t, z)).flatten(1).pow(2).mean(1)


def net_velocity(net) -> Callable[[Tensor, Tensor], Tensor]:
    """The velocity field v(x, t) = net(x, t) of a network trained by this objective (no gradients)."""

    def v(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return net(x, t.to(x.dtype))

    return v


@dataclass(frozen=True, eq=False)
class VelocityMatching(Objective):
    """Velocity regression on an interpolant between the batch (targets) and ``source`` samples.

    Streams: ``t`` (times), ``noise`` (source samples and z), ``coupling`` (Sinkhorn's draws). The
    coupling is computed on the global batch, so every rank pairs the same way.
    """

    interpolant: Interpolant = field(default_factory=Interpolant)
    source: Callable = field(default_factory=Gaussian)
    coupling: str = "independent"
    t_min: float = 0.0
    t_max: float = 1.0
    streams = ("t", "noise", "coupling")

    def __post_init__(self):
        if self.coupling not in COUPLINGS:
            raise ValueError(f"unknown coupling {self.coupling!r}; choose one of: {', '.join(COUPLINGS)}")
        if (self.coupling == "paired") != bool(getattr(self.source, "paired", False)):
            raise ValueError(f"the 'paired' coupling goes with a paired source (a degraded copy of x0) and only "
                             f"with one; got coupling {self.coupling!r} with source {type(self.source).__name__}")
        if not (0 <= self.t_min < self.t_max <= 1):
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        if batch.labels is not None:
            raise ValueError("the interpolant objective is unconditional; train without labels")
        x0 = batch.x0
        x1 = couple(self.coupling, x0, self.source(x0, rng["noise"]), rng["coupling"])
        t = self.t_min + (self.t_max - self.t_min) * torch.rand(batch.size, generator=rng["t"], dtype=torch.float64)
        t = t.to(dtype=x0.dtype, device=x0.device)
        z = torch.randn(x0.shape, generator=rng["noise"], dtype=x0.dtype).to(x0.device) \
            if self.interpolant.noise else None
        net = getattr(model, "net", model)  # the training loop hands over the run's Denoiser
        loc = batch.local
        return velocity_loss(net, self.interpolant, loc(x0), loc(x1), loc(t), None if z is None else loc(z))


def fit(net, draw: Callable[[int, torch.Generator], tuple[Tensor, Tensor]], *, interpolant: Interpolant | None = None,
        steps: int = 500, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
        progress: bool = False, budget_s: float | None = None) -> list[float]:
    """Train ``net(x_t, t)`` by velocity regression on pairs ``draw(n, generator) -> (x0, x1)``, with Adam;
    returns the losses. For pairs that are not a data set (reflow's (sample, source) table).
    ``budget_s``: also stop after this much CPU time of this process (machines shared with other jobs)."""
    import time

    from tqdm.auto import tqdm

    interpolant = interpolant or Interpolant()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    start = time.process_time()
    for _ in tqdm(range(steps), disable=not progress, desc="fit velocity"):
        if budget_s is not None and time.process_time() - start > budget_s:
            break
        x0, x1 = draw(batch_size, g)
        t = torch.rand(batch_size, generator=g, dtype=torch.float64).to(x0.dtype)
        z = torch.randn(x0.shape, generator=g, dtype=x0.dtype) if interpolant.noise else None
        loss = velocity_loss(net, interpolant, x0, x1, t, z).mean()
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite velocity loss at fitting step {len(losses)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


ALIASES = {"interpolant+ot": "ot", "interpolant+sinkhorn": "sinkhorn"}
"""Older objective names that fix the coupling."""

_KNOWN = {"source", "coupling", "path", "noise"}


def source_of(spec: str, data):
    """The source a spec names, checked against the target ``data`` (a :class:`~diffusionlens.data.Data`):
    ``gaussian``, a data set name (its training split; ``dataset:NAME`` also reads), or
    ``degraded:KIND[:LEVEL]`` (:data:`~.couplings.DEGRADATIONS`)."""
    from ..data import DATASETS, load_dataset

    if not isinstance(spec, str):
        raise TypeError(f"source must be a string, got {spec!r}")
    kind, _, arg = spec.partition(":")
    if spec == "gaussian":
        return Gaussian()
    if spec in DATASETS or (kind == "dataset" and arg in DATASETS):
        name = arg if kind == "dataset" else spec
        table = load_dataset(name, "train").x
        if table.shape[1:] != data.x.shape[1:] or table.is_floating_point() != data.x.is_floating_point():
            raise ValueError(f"source data set {name!r} has samples of shape {tuple(table.shape[1:])}, the target's "
                             f"are {tuple(data.x.shape[1:])}: an interpolant needs both of one shape")
        return TableSource(table)
    if kind == "degraded":
        name, _, level = arg.partition(":")
        if name not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {name!r} in source {spec!r}; choose one of: "
                             f"{', '.join(DEGRADATIONS)}")
        try:
            src = Degraded(name, float(level) if level else None)
        except ValueError:
            raise ValueError(f"degradation level {level!r} in source {spec!r} is not a number") from None
        src(data.x[:2].to(torch.float32), torch.Generator().manual_seed(0))  # shape and level checks, now
        return src
    raise ValueError(f"unknown source {spec!r}; use gaussian, a data set name ({', '.join(DATASETS[:4])}, ...) or "
                     f"degraded:KIND[:LEVEL] with KIND one of {', '.join(DEGRADATIONS)}")


def interpolant_options(cfg) -> dict:
    """The interpolant objective's settings with their defaults: source, coupling, path, noise."""
    opts = dict(cfg.objective_options or {})
    unknown = sorted(set(opts) - _KNOWN)
    if unknown:
        raise ValueError(f"unknown objective_options {unknown} for objective {cfg.objective!r}; "
                         f"known: {sorted(_KNOWN)}")
    source = opts.get("source", "gaussian")
    fixed = ALIASES.get(cfg.objective)
    if fixed is not None and opts.get("coupling", fixed) != fixed:
        raise ValueError(f"objective {cfg.objective!r} uses the {fixed} coupling, not {opts['coupling']!r} "
                         "(use objective 'interpolant' with that coupling)")
    paired = isinstance(source, str) and source.startswith("degraded:")
    coupling = fixed or opts.get("coupling", "paired" if paired else "independent")
    return {"source": source, "coupling": coupling, "path": opts.get("path", "linear"),
            "noise": opts.get("noise", 0.0)}


def _check_flow(cfg) -> None:
    if cfg.process != "flow" or cfg.param != "velocity":
        raise ValueError(f"objective {cfg.objective!r} trains a velocity network of the flow process "
                         f"(process='flow', param='velocity'), got process={cfg.process!r}, param={cfg.param!r}")
    if cfg.conditional:
        raise ValueError(f"objective {cfg.objective!r} is unconditional; got conditional=True")


def build(cfg, data) -> VelocityMatching:
    """The interpolant objective that ``cfg.objective_options`` describes (see the module docstring)."""
    _check_flow(cfg)
    o = interpolant_options(cfg)
    if o["coupling"] not in COUPLINGS:
        raise ValueError(f"unknown coupling {o['coupling']!r}; choose one of: {', '.join(COUPLINGS)}")
    if o["coupling"] in ("ot", "sinkhorn") and cfg.batch_size > MAX_OT_BATCH:
        raise ValueError(f"an {o['coupling']} coupling of batch_size {cfg.batch_size} needs a "
                         f"{cfg.batch_size} x {cfg.batch_size} cost matrix; the limit is {MAX_OT_BATCH}")
    source = source_of(o["source"], data)
    if o["coupling"] == "paired" and not getattr(source, "paired", False):
        raise ValueError(f"the paired coupling needs pairs: a degraded source (degraded:KIND), got source "
                         f"{o['source']!r}")
    if o["coupling"] != "paired" and getattr(source, "paired", False):
        raise ValueError(f"a degraded source {o['source']!r} is paired with its own target: use the paired "
                         f"coupling, not {o['coupling']!r}")
    return VelocityMatching(Interpolant(o["path"], o["noise"]), source, o["coupling"], cfg.t_min, cfg.t_max)


build_independent = build_ot = build_sinkhorn = build  # the registry's names; the coupling comes from ALIASES


# ---------------------------------------------------------------------- reflow on the training loop


@dataclass(frozen=True, eq=False)
class PairTable(Objective):
    """Velocity regression on a fixed table of pairs (x0, x1) (the linear interpolant, ``paired``): each
    step draws ``batch.size`` rows of the table (stream ``noise``), ignoring the data batch's values."""

    x0: Tensor
    x1: Tensor
    t_min: float = 0.0
    t_max: float = 1.0
    start: dict | None = None
    streams = ("t", "noise")

    def initialise(self, net) -> None:
        """Start from ``start`` (the teacher's weights: the next flow is close to its predecessor)."""
        if self.start is not None:
            net.load_state_dict(self.start)

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        dev = batch.x0.device
        idx = torch.randint(self.x0.shape[0], (batch.size,), generator=rng["noise"])
        x0, x1 = self.x0[idx].to(dev, batch.x0.dtype), self.x1[idx].to(dev, batch.x0.dtype)
        t = self.t_min + (self.t_max - self.t_min) * torch.rand(batch.size, generator=rng["t"], dtype=torch.float64)
        t = t.to(dtype=x0.dtype, device=dev)
        loc = batch.local
        return velocity_loss(getattr(model, "net", model), Interpolant(), loc(x0), loc(x1), loc(t), None)


def build_reflow(cfg, data) -> PairTable:
    """One reflow round on the training loop: the teacher run's (sample, source) pairs, made once here."""
    from ..training import load_denoiser
    from .reflow import reflow_pairs

    _check_flow(cfg)
    opts = dict(cfg.objective_options or {})
    unknown = sorted(set(opts) - {"teacher", "pairs", "solve_steps"})
    if unknown or "teacher" not in opts:
        raise ValueError(f"objective 'reflow' needs objective_options {{'teacher': RUN, 'pairs': N, 'solve_steps': K}}"
                         f", got {opts}")
    n, k = int(opts.get("pairs", 4096)), int(opts.get("solve_steps", 32))
    if n < 1 or k < 1:
        raise ValueError(f"reflow needs pairs >= 1 and solve_steps >= 1, got {n}, {k}")
    den, tcfg = load_denoiser(opts["teacher"])
    gaussian = tcfg.objective == "reflow" or (tcfg.objective_options or {}).get("source", "gaussian") == "gaussian"
    if tcfg.process != "flow" or tcfg.param != "velocity" or not gaussian:
        raise ValueError(f"reflow needs a teacher run with a velocity network of the flow process and a Gaussian "
                         f"source; {opts['teacher']!r} has process={tcfg.process!r}, param={tcfg.param!r}, "
                         f"objective={tcfg.objective!r}")
    g = torch.Generator().manual_seed(cfg.seed + 7919)
    x1 = torch.randn((n, *data.x.shape[1:]), generator=g, dtype=data.x.dtype)
    if tcfg.dataset != cfg.dataset:
        raise ValueError(f"teacher {opts['teacher']!r} was trained on {tcfg.dataset!r}, not on {cfg.dataset!r}")
    v = net_velocity(den.net.eval())
    x0 = torch.cat([reflow_pairs(v, part, steps=k)[0] for part in x1.split(512)])  # bounded memory
    start = den.net.state_dict() if tcfg.net == cfg.net else None
    return PairTable(x0, x1, cfg.t_min, cfg.t_max, start)
