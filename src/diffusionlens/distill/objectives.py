"""The distillation and consistency objectives as named training objectives, so the generic training
loop (checkpoints, EMA, exact resume, progress, signals) runs them:

- ``consistency-training``: :class:`ConsistencyTraining` from data alone (Song & Dhariwal 2023);
- ``consistency-distillation``: :class:`ConsistencyDistillation` from a teacher;
- ``progressive-distillation``: :class:`ProgressiveRounds` (Salimans & Ho 2022), every round in one run.

Their settings live in ``TrainConfig.objective_options`` (JSON): ``teacher`` (a run directory, or
``"oracle"`` for the exact mixture denoiser of an oracle data set), ``sigma_min``/``sigma_max`` (default:
the config's training range within [0.002, 80]), and per method ``steps``, ``final_steps``,
``weighting`` (progressive), ``n``, ``solver`` (consistency distillation), ``p_mean``, ``p_std``, ``s0``,
``s1`` (consistency), ``levels`` (multistep consistency sampling levels by step count, see
:func:`sampling_levels`). A consistency objective's model is a :class:`ConsistencyFunction` around the
network (:data:`MODELS`); a progressive student is the config's ordinary denoiser.
"""

from __future__ import annotations

import math

import torch

__all__ = ["build_consistency_training", "build_consistency_distillation", "build_progressive", "consistency_model",
           "sampling_levels", "sigma_range", "load_teacher", "MODELS"]

_KNOWN = {
    "consistency-training": {"sigma_min", "sigma_max", "p_mean", "p_std", "s0", "s1", "levels"},
    "consistency-distillation": {"teacher", "sigma_min", "sigma_max", "n", "solver", "p_mean", "p_std", "levels",
                                 "minutes"},
    "progressive-distillation": {"teacher", "sigma_min", "sigma_max", "steps", "final_steps", "weighting", "minutes"},
}


def _options(cfg) -> dict:
    opts = dict(cfg.objective_options or {})
    unknown = sorted(set(opts) - _KNOWN[cfg.objective])
    if unknown:
        raise ValueError(f"unknown objective_options {unknown} for objective {cfg.objective!r}; known: "
                         f"{sorted(_KNOWN[cfg.objective])}")
    if cfg.conditional:
        raise ValueError(f"objective {cfg.objective!r} trains unconditional models; got conditional=True")
    return opts


def sigma_range(cfg) -> tuple[float, float]:
    """(sigma_min, sigma_max) of a distillation or consistency objective: its options', else the config's
    training range within [0.002, 80] (the range the run layer samples)."""
    opts = cfg.objective_options or {}
    lo, hi = cfg.sigma_range
    return float(opts.get("sigma_min", max(0.002, lo))), float(opts.get("sigma_max", min(80.0, hi)))


def _total(cfg) -> int:
    if cfg.steps is None:
        raise ValueError(f"objective {cfg.objective!r} needs a step budget (steps): its schedule is laid out over "
                         "the steps")
    return cfg.steps


def load_teacher(cfg):
    """(teacher denoiser, its TrainConfig or None for the oracle) named by ``objective_options['teacher']``."""
    from ..evaluate import true_density

    src = (cfg.objective_options or {}).get("teacher")
    if src is None:
        raise ValueError(f"objective {cfg.objective!r} needs objective_options['teacher']: a run directory or "
                         "'oracle'")
    if src == "oracle":
        gm = true_density(cfg.dataset)
        if gm is None:
            raise ValueError(f"teacher 'oracle' needs a data set with an exact mixture (oracle-*, ring8), got "
                             f"{cfg.dataset!r}")
        return _Oracle(gm), None
    from ..training import load_denoiser

    den, tcfg = load_denoiser(src, device=cfg.device)
    if tcfg.dataset != cfg.dataset:
        raise ValueError(f"teacher {src!r} was trained on {tcfg.dataset!r}, not on {cfg.dataset!r}")
    from ..processes import DDPMTable

    if isinstance(tcfg.noise_process, DDPMTable):
        raise ValueError(f"teacher {src!r} has the discrete process {tcfg.process!r}: its denoiser exists only at "
                         "its own timesteps, so it cannot provide the ODE steps between arbitrary noise levels "
                         f"that {cfg.objective} needs")
    if tcfg.objective != "denoising":
        raise ValueError(f"teacher {src!r} was trained with objective {tcfg.objective!r}; a teacher must be a "
                         "denoiser (objective 'denoising')")
    return den, tcfg


class _Oracle:
    """The exact mixture denoiser, computed in float64."""

    def __init__(self, gm):
        self.gm = gm

    def __call__(self, x, sigma):
        return self.gm.denoise(x.double(), sigma.double()).to(x.dtype)


def _start_from(obj, teacher_net) -> None:
    """The student network starts from the teacher's weights (same network spec)."""
    obj.initialise = lambda net: net.load_state_dict(teacher_net.state_dict())


def _check_spec(cfg, tcfg) -> None:
    if tcfg is not None and cfg.net != tcfg.net:
        raise ValueError(f"the student's network spec {cfg.net} differs from the teacher's {tcfg.net}: the student "
                         "starts from the teacher's weights")


# the classes are imported when an objective is built: this module is imported by the objectives registry,
# which the distillation classes themselves import


def build_progressive(cfg, data):
    """``progressive-distillation``: rounds from ``steps`` (default 16) to ``final_steps`` (default 1)."""
    from .progressive import ProgressiveRounds

    opts = _options(cfg)
    teacher, tcfg = load_teacher(cfg)
    _check_spec(cfg, tcfg)
    lo, hi = sigma_range(cfg)
    obj = ProgressiveRounds(teacher, int(opts.get("steps", 16)), _total(cfg),
                            final_steps=int(opts.get("final_steps", 1)),
                            weighting=opts.get("weighting", "truncated-snr"), sigma_min=lo, sigma_max=hi)
    if tcfg is not None and tcfg.param == cfg.param:
        _start_from(obj, teacher.net)
    return obj


def build_consistency_distillation(cfg, data):
    """``consistency-distillation``: the teacher's ``solver`` step (heun) over ``n`` (18) levels."""
    from .consistency import ConsistencyDistillation

    opts = _options(cfg)
    teacher, tcfg = load_teacher(cfg)
    _check_spec(cfg, tcfg)
    lo, hi = sigma_range(cfg)
    obj = ConsistencyDistillation(teacher, n=int(opts.get("n", 18)), solver=opts.get("solver", "heun"), sigma_min=lo,
                                  sigma_max=hi, p_mean=opts.get("p_mean", -1.1), p_std=opts.get("p_std", 2.0))
    if tcfg is not None and tcfg.param == "edm":  # the same F(c_in x, ln(sigma)/4) as the consistency function
        _start_from(obj, teacher.net)
    return obj


def build_consistency_training(cfg, data):
    """``consistency-training``: the improved recipe with its curriculum laid over the step budget."""
    from .consistency import ConsistencyTraining

    opts = _options(cfg)
    lo, hi = sigma_range(cfg)
    return ConsistencyTraining(_total(cfg), sigma_min=lo, sigma_max=hi, p_mean=opts.get("p_mean", -1.1),
                               p_std=opts.get("p_std", 2.0), s0=int(opts.get("s0", 10)), s1=int(opts.get("s1", 1280)))


def consistency_model(cfg, net):
    """The model a consistency objective trains around ``net``: f with the boundary condition at sigma_min."""
    from .consistency import ConsistencyFunction

    return ConsistencyFunction(net, sigma_min=sigma_range(cfg)[0], sigma_data=cfg.sigma_data or 0.5)


MODELS = {"consistency-training": consistency_model, "consistency-distillation": consistency_model}
"""Objectives whose model is not the config's canonical denoiser: name -> ``model(cfg, net)``."""


def sampling_levels(cfg, steps: int) -> list[float]:
    """The noise levels of ``steps``-step consistency sampling: ``objective_options['levels'][str(steps)]``
    where given, else sigma_max followed by steps - 1 levels spaced geometrically from 1.64 sigma_data
    (the two-step level of Song et al. 2023, 0.821 at sigma_data = 0.5) down to sigma_data / 4."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    given = ((cfg.objective_options or {}).get("levels") or {}).get(str(steps))
    if given is not None:
        return [float(v) for v in given]
    lo, hi = sigma_range(cfg)
    sd = cfg.sigma_data or 0.5
    if steps == 1:
        return [hi]
    top, bottom = min(1.64 * sd, hi / 2), max(sd / 4, 2 * lo)
    tail = [top] if steps == 2 else torch.logspace(math.log10(top), math.log10(bottom), steps - 1).tolist()
    return [hi] + [float(v) for v in tail]
