"""Training configuration: a frozen, validated, JSON round-trippable dataclass.

Strings are accepted here, at the edge, and parsed once, when the config is made: the process name
into :attr:`TrainConfig.noise_process`, the parameterization into :attr:`TrainConfig.parameterization`,
the noise density and the weighting into small frozen values carrying their own parameters
(:mod:`diffusionlens.losses`). The JSON form is readable and round-trips::

    {"density": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2}, "weighting": {"kind": "edm"}, ...}

A config written by the previous version (flat ``p_mean``, ``p_std``, ``logit_mean``, ``logit_std``,
``min_snr_gamma``, ``sigmoid_bias`` fields) is converted by :meth:`TrainConfig.from_dict`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..data import DATASETS, Data
from ..losses import (
    EDMWeight,
    LogNormal,
    Loss,
    LossWeighting,
    NoiseDensity,
    check_sigma_data,
    parse_density,
    parse_weighting,
)
from ..model import Denoiser
from ..objectives import OBJECTIVES
from ..parameterization import Param
from ..processes import EDM, VE, VP, DDPMTable, Flow, Process, SubVP

__all__ = ["TrainConfig", "PROCESSES", "EMA_KINDS", "make_process", "make_loss", "default_net", "resolve_net"]

PROCESSES = {
    "edm": EDM,
    "vp": lambda: VP("linear"),
    "vp-cosine": lambda: VP("cosine"),
    "subvp": SubVP,
    "ve": VE,
    "flow": Flow,
    "ddpm": DDPMTable,
}
"""Process names accepted by :class:`TrainConfig` (defaults of each class; ``ddpm`` is the 1000-step
linear-beta table of Ho et al. 2020)."""

EMA_KINDS = ("power", "exp", "none")

# fields that may change between a run and its resumption (budgets, bookkeeping, placement)
RESUMABLE_CHANGES = frozenset({"steps", "minutes", "log_every", "ckpt_every", "eval_every", "keep_checkpoints",
                               "device", "channels_last", "compile", "timeout"})

# the previous version's flat hyper-parameters: field -> (group, kind, parameter, default)
_FLAT = {
    "p_mean": ("density", "lognormal", "p_mean", -1.2),
    "p_std": ("density", "lognormal", "p_std", 1.2),
    "logit_mean": ("density", "logit-normal", "mean", 0.0),
    "logit_std": ("density", "logit-normal", "std", 1.0),
    "min_snr_gamma": ("weighting", "min-snr", "gamma", 5.0),
    "sigmoid_bias": ("weighting", "sigmoid", "bias", 2.0),
}


def _process_from_spec(spec: dict) -> Process:
    """A discrete DDPM table other than the default one: ``{"kind": "ddpm", "T": 1000, "schedule":
    "linear" | "scaled_linear" | "cosine", "beta_start": ..., "beta_end": ...}`` (as imported from diffusers)."""
    args = {k: v for k, v in spec.items() if k != "kind"}
    if spec.get("kind") != "ddpm":
        raise ValueError(f"a process given as a dict must have kind 'ddpm', got {spec!r}")
    unknown = sorted(set(args) - {"T", "schedule", "beta_start", "beta_end"})
    if unknown:
        raise ValueError(f"unknown ddpm process argument(s) {unknown}; allowed: T, schedule, beta_start, beta_end")
    return DDPMTable(**args)


def make_process(name: str | dict | Process) -> Process:
    """The process a name in :data:`PROCESSES` stands for (a Process is returned as it is; a dict is a
    discrete DDPM table with its own T, schedule and betas)."""
    if isinstance(name, Process):
        return name
    if isinstance(name, dict):
        return _process_from_spec(name)
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of: {', '.join(PROCESSES)}")
    return PROCESSES[name]()


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (all JSON-able).

    Model and objective: ``objective`` (a name in :data:`diffusionlens.objectives.OBJECTIVES`),
    ``objective_options`` (that objective's own settings, JSON: e.g. a distillation's teacher run),
    ``process`` (a name in :data:`PROCESSES`), ``param`` (eps, x0, v, score, velocity, edm),
    ``density`` (``Uniform()``, ``LogNormal(p_mean, p_std)``, ``LogitNormal(mean, std)``; a kind name
    gives the defaults) and ``weighting`` (``TargetWeight()``, ``MinSNR(gamma)``, ``ELBOWeight()``,
    ``Sigmoid(bias)``, ``EDMWeight()``) from :mod:`diffusionlens.losses`, noise levels in the process's
    times [``t_min``, ``t_max``]; ``sigma_data`` None means the training data's std (resolved
    and recorded when the run starts). ``net`` is a :func:`diffusionlens.nets.build_net` spec, None for
    the default (UNet for images, MLP otherwise). ``conditional`` trains on the labels with
    ``label_dropout`` (classifier-free guidance needs > 0).

    Optimisation: AdamW (``lr``, ``adam_betas``, ``weight_decay``), linear warm-up over
    ``warmup_steps``, then constant, then a linear cool-down to 0 over the last ``cooldown`` fraction
    of the budget (warmup-stable-decay; Hägele et al. 2024 find a linear cool-down matches a cosine
    schedule without fixing the length in advance; 0 keeps the rate constant to the end), gradient-norm
    clipping at ``grad_clip`` (0 disables),
    ``batch_size`` = the global batch (split across ranks). EMA of the weights: ``power`` (Karras
    et al. 2024, EDM2, relative std ``ema_std``), ``exp`` (decay ``ema_decay``, warmed up as
    min(decay, (1 + k) / (10 + k))) or ``none``.

    Budget: ``steps`` and/or ``minutes`` (training stops at whichever comes first; at least one must
    be set); ``clock`` says what ``minutes`` measures: ``wall`` time or the ``process``'s CPU time (for
    machines shared with other jobs). The cool-down follows whichever budget is nearer its end.
    ``log_every``, ``ckpt_every``, ``eval_every`` (0 = never) in steps. ``timeout``: seconds a
    distributed rank waits for the others before failing (None: torch's default).
    """

    dataset: str = "digits"
    seed: int = 0
    n_train: int | None = None
    objective: str = "denoising"
    objective_options: dict | None = None
    process: str | dict = "edm"
    param: str = "edm"
    density: NoiseDensity = LogNormal()
    weighting: LossWeighting = EDMWeight()
    sigma_data: float | None = None
    t_min: float = 1e-4
    t_max: float = 1 - 1e-4
    net: dict | None = None
    conditional: bool = False
    label_dropout: float = 0.1
    batch_size: int = 128
    lr: float = 2e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 200
    cooldown: float = 0.4
    grad_clip: float = 1.0
    ema: str = "power"
    ema_std: float = 0.05
    ema_decay: float = 0.999
    steps: int | None = 4000
    minutes: float | None = None
    clock: str = "wall"
    log_every: int = 25
    ckpt_every: int = 500
    eval_every: int = 0
    keep_checkpoints: int = 2
    device: str = "cpu"
    channels_last: bool = False
    compile: bool = False
    timeout: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if isinstance(self.param, Param):
            object.__setattr__(self, "param", self.param.value)
        # parsed once, here: everything downstream uses these objects
        object.__setattr__(self, "_process", make_process(self.process))
        object.__setattr__(self, "_param", Param.parse(self.param))
        object.__setattr__(self, "density", parse_density(self.density))
        object.__setattr__(self, "weighting", parse_weighting(self.weighting))
        if self.ema not in EMA_KINDS:
            raise ValueError(f"unknown ema {self.ema!r}; choose one of: {', '.join(EMA_KINDS)}")

        def need(name, ok, what):
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need("seed", is_int(self.seed) and self.seed >= 0, "an integer >= 0")
        need("n_train", self.n_train is None or (is_int(self.n_train) and self.n_train >= 1), "None or >= 1")
        need("batch_size", is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1")
        need("lr", is_num(self.lr) and 0 < self.lr <= 1, "in (0, 1]")
        need("weight_decay", is_num(self.weight_decay) and self.weight_decay >= 0, ">= 0")
        need("adam_betas", len(self.adam_betas) == 2 and all(is_num(b) and 0 <= b < 1 for b in self.adam_betas),
             "two numbers in [0, 1)")
        need("warmup_steps", is_int(self.warmup_steps) and self.warmup_steps >= 0, "an integer >= 0")
        need("cooldown", is_num(self.cooldown) and 0 <= self.cooldown < 1, "in [0, 1) (0 = constant rate)")
        need("clock", self.clock in ("wall", "process"), "'wall' or 'process'")
        need("grad_clip", is_num(self.grad_clip) and self.grad_clip >= 0, ">= 0 (0 disables clipping)")
        need("label_dropout", is_num(self.label_dropout) and 0 <= self.label_dropout < 1, "in [0, 1)")
        need("ema_std", is_num(self.ema_std) and 0 < self.ema_std < 0.28, "in (0, 0.28) (EDM2's sigma_rel)")
        need("ema_decay", is_num(self.ema_decay) and 0 < self.ema_decay < 1, "in (0, 1)")
        need("steps", self.steps is None or (is_int(self.steps) and self.steps >= 1), "None or an integer >= 1")
        need("minutes", self.minutes is None or (is_num(self.minutes) and self.minutes > 0), "None or > 0")
        if self.steps is None and self.minutes is None:
            raise ValueError("set a budget: steps, minutes, or both")
        for name in ("log_every", "ckpt_every", "eval_every"):
            need(name, is_int(getattr(self, name)) and getattr(self, name) >= 0, "an integer >= 0 (0 = never)")
        need("log_every", self.log_every >= 1, "an integer >= 1")
        need("keep_checkpoints", is_int(self.keep_checkpoints) and self.keep_checkpoints >= 1, "an integer >= 1")
        need("timeout", self.timeout is None or (is_num(self.timeout) and self.timeout > 0), "None or > 0 seconds")
        if self.sigma_data is not None:
            check_sigma_data(self.sigma_data)
        need("objective_options", self.objective_options is None or isinstance(self.objective_options, dict),
             "None or a dict of the objective's own settings")
        need("net", self.net is None or (isinstance(self.net, dict) and "kind" in self.net), "None or a spec dict")
        if self.conditional and self.dataset not in ("digits", "mnist"):
            raise ValueError(f"conditional training needs labelled data (digits, mnist), got {self.dataset!r}")
        # the loss validates the noise-level range against the process
        self.loss(sigma_data=self.sigma_data or 0.5)

    # ------------------------------------------------------------------ parsed views
    @property
    def noise_process(self) -> Process:
        """The noise process ``process`` names (parsed once)."""
        return self._process

    @property
    def parameterization(self) -> Param:
        """What the network predicts, as a :class:`~diffusionlens.parameterization.Param`."""
        return self._param

    @property
    def sigma_range(self) -> tuple[float, float]:
        """(sigma(t_min), sigma(t_max)): the noise levels the model was trained on."""
        s = self._process.sigma(torch.tensor([self.t_min, self.t_max], dtype=torch.float64))
        return float(s[0]), float(s[1])

    def loss(self, sigma_data: float | None = None) -> Loss:
        """The weighted denoising :class:`~diffusionlens.losses.Loss` this config describes."""
        sd = sigma_data if sigma_data is not None else self.sigma_data
        return Loss(self._process, self._param, self.density, self.weighting, sigma_data=float(sd),
                    t_min=self.t_min, t_max=self.t_max)

    def denoiser(self, net) -> Denoiser:
        """The canonical denoiser of ``net`` under this (resolved) config (the model its objective trains
        around ``net``: :data:`diffusionlens.objectives.MODELS`, e.g. a consistency function)."""
        from ..objectives import MODELS

        if self.objective in MODELS:
            return MODELS[self.objective](self, net)
        return Denoiser(net, self._process, self._param, sigma_data=self.sigma_data)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["adam_betas"] = list(self.adam_betas)
        d["density"], d["weighting"] = self.density.to_dict(), self.weighting.to_dict()
        d["net"] = copy.deepcopy(self.net)
        d["objective_options"] = copy.deepcopy(self.objective_options)
        d["process"] = copy.deepcopy(self.process)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from its JSON form; the previous version's flat form is converted."""
        if not isinstance(d, dict):
            raise ValueError(f"a TrainConfig is a JSON object of fields, got {type(d).__name__}")
        d = _convert_flat(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _convert_flat(d: dict[str, Any]) -> dict[str, Any]:
    """The previous version's flat density/weighting hyper-parameters folded into their values.

    A flat value for a kind the config does not use is dropped when it is the old default (every
    old config.json lists all of them) and refused otherwise, since it would have no effect."""
    flat = {k: d[k] for k in _FLAT if k in d}
    if not flat:
        return d
    d = {k: v for k, v in d.items() if k not in _FLAT}
    defaults = {"density": "lognormal", "weighting": "edm"}
    for group in ("density", "weighting"):
        kind = d.get(group, defaults[group])
        if not isinstance(kind, str):
            keys = sorted(k for k in flat if _FLAT[k][0] == group)
            if keys:
                raise ValueError(f"the flat field(s) {keys} of the previous config format cannot be combined with "
                                 f"{group}={kind!r}; put the parameters inside {group}")
            continue
        params = {}
        for key, value in flat.items():
            g, k, name, default = _FLAT[key]
            if g != group:
                continue
            if k == kind:
                params[name] = value
            elif value != default:
                raise ValueError(f"{key}={value!r} (previous config format) applies to {group} {k!r}, "
                                 f"but {group} is {kind!r}")
        d[group] = {"kind": kind, **params}
    return d


def make_loss(cfg: TrainConfig, sigma_data: float | None = None) -> Loss:
    """The :class:`~diffusionlens.losses.Loss` a config describes (same as ``cfg.loss(sigma_data)``)."""
    return cfg.loss(sigma_data)


def default_net(data: Data, conditional: bool) -> dict:
    """The default network spec for a data set: the compact UNet for images, the MLP otherwise."""
    classes = data.num_classes if conditional else None
    if getattr(data, "vocab", None) is not None:  # token data: discrete diffusion's transformer
        from ..discrete.net import default_spec

        return default_spec(data, conditional)
    if data.is_image:
        C, H, W = data.data_shape
        if H != W:
            raise ValueError(f"the default UNet needs square images, got {data.data_shape}")
        spec = {"kind": "unet", "in_channels": C, "image_size": H, "num_classes": classes}
        if H >= 16:  # 28x28 MNIST: resolutions 28, 14, 7 with attention at 7
            spec.update(channels=48, channel_mult=[1, 2, 2], blocks=2, attn_resolutions=[7])
        return spec
    return {"kind": "mlp", "data_shape": list(data.data_shape), "num_classes": classes}


def resolve_net(cfg: TrainConfig, data: Data) -> dict:
    """The full network spec of a run: ``cfg.net``, or for None the data set's default, or for a kind alone
    (``{"kind": "diffusers-unet"}``, as ``train --net`` gives) that kind's default size for the data."""
    spec = cfg.net
    if spec is not None and set(spec) != {"kind"}:
        return spec
    if spec is not None and spec["kind"] == "diffusers-unet":
        from ..nets.diffusers_unet import default_spec

        if cfg.conditional:
            raise ValueError("the diffusers UNet is unconditional here; drop --conditional or use --net unet")
        return default_spec(data.data_shape, cfg.noise_process, cfg.parameterization)
    spec_ = default_net(data, cfg.conditional)
    if spec is not None and spec["kind"] != spec_["kind"]:
        want = "image" if spec["kind"] == "unet" else "low-dimensional"
        raise ValueError(f"net {spec['kind']!r} is for {want} data, not data set {data.name!r}")
    return spec_
