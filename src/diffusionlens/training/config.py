"""Training configuration: a frozen, validated, JSON round-trippable dataclass.

Strings are accepted here, at the edge, and parsed into the library's objects by
:func:`make_process` and :func:`make_loss`; nothing inside the math sees them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from ..data import DATASETS, Data
from ..losses import Density, Loss, Weighting
from ..parameterization import Param
from ..processes import EDM, VE, VP, Discrete, Flow, Process, SubVP

__all__ = ["TrainConfig", "PROCESSES", "EMA_KINDS", "make_process", "make_loss", "default_net"]

PROCESSES = {
    "edm": EDM,
    "vp": lambda: VP("linear"),
    "vp-cosine": lambda: VP("cosine"),
    "subvp": SubVP,
    "ve": VE,
    "flow": Flow,
    "ddpm": Discrete,
}
"""Process names accepted by :class:`TrainConfig` (defaults of each class; ``ddpm`` is the 1000-step
linear-beta table of Ho et al. 2020)."""

EMA_KINDS = ("power", "exp", "none")

# fields that may change between a run and its resumption (budgets, bookkeeping, placement)
RESUMABLE_CHANGES = frozenset({"steps", "minutes", "log_every", "ckpt_every", "eval_every", "keep_checkpoints",
                               "device", "channels_last", "compile"})


def make_process(name: str) -> Process:
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of: {', '.join(PROCESSES)}")
    return PROCESSES[name]()


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (all JSON-able).

    Model and loss: ``process`` (a name in :data:`PROCESSES`), ``param`` (eps, x0, v, score, velocity,
    edm), ``density`` (uniform, lognormal, logit-normal), ``weighting`` (target, min-snr, elbo, sigmoid,
    edm) with their hyper-parameters; ``sigma_data`` None means the training data's std (resolved
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
    ``log_every``, ``ckpt_every``, ``eval_every`` (0 = never) in steps.
    """

    dataset: str = "digits"
    seed: int = 0
    n_train: int | None = None
    process: str = "edm"
    param: str = "edm"
    density: str = "lognormal"
    weighting: str = "edm"
    sigma_data: float | None = None
    p_mean: float = -1.2
    p_std: float = 1.2
    logit_mean: float = 0.0
    logit_std: float = 1.0
    min_snr_gamma: float = 5.0
    sigmoid_bias: float = 2.0
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

    def __post_init__(self):
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        make_process(self.process)
        Param.parse(self.param)
        Density.parse(self.density)
        Weighting.parse(self.weighting)
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
        need("sigma_data", self.sigma_data is None or (is_num(self.sigma_data) and self.sigma_data > 0), "None or > 0")
        need("net", self.net is None or (isinstance(self.net, dict) and "kind" in self.net), "None or a spec dict")
        if self.conditional and self.dataset not in ("digits", "mnist"):
            raise ValueError(f"conditional training needs labelled data (digits, mnist), got {self.dataset!r}")
        # the loss validates its own hyper-parameters (t range vs process, stds, gamma)
        make_loss(self, sigma_data=self.sigma_data or 0.5)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
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


def make_loss(cfg: TrainConfig, sigma_data: float | None = None) -> Loss:
    """The :class:`~diffusionlens.losses.Loss` a config describes."""
    return Loss(
        make_process(cfg.process),
        cfg.param,
        cfg.density,
        cfg.weighting,
        sigma_data=float(sigma_data if sigma_data is not None else cfg.sigma_data),
        p_mean=cfg.p_mean,
        p_std=cfg.p_std,
        logit_mean=cfg.logit_mean,
        logit_std=cfg.logit_std,
        gamma=cfg.min_snr_gamma,
        bias=cfg.sigmoid_bias,
        t_min=cfg.t_min,
        t_max=cfg.t_max,
    )


def default_net(data: Data, conditional: bool) -> dict:
    """The default network spec for a data set: the compact UNet for images, the MLP otherwise."""
    classes = data.num_classes if conditional else None
    if data.is_image:
        C, H, W = data.data_shape
        if H != W:
            raise ValueError(f"the default UNet needs square images, got {data.data_shape}")
        spec = {"kind": "unet", "in_channels": C, "image_size": H, "num_classes": classes}
        if H >= 16:  # 28x28 MNIST: resolutions 28, 14, 7 with attention at 7
            spec.update(channels=48, channel_mult=[1, 2, 2], blocks=2, attn_resolutions=[7])
        return spec
    return {"kind": "mlp", "data_shape": list(data.data_shape), "num_classes": classes}
