"""A run directory opened: the denoiser, its configuration and device; the noise-level range it samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUNS = Path("runs")
LEVELS = {"digits": 17, "mnist": 256}  # values per pixel: digits are 0..16, MNIST 0..255
MAIN_STEPS = 800
"""The main job's default training budget in steps: the budget the README's figures come from, so its
result does not depend on the machine's speed (``--minutes`` sets a time budget instead)."""
MAIN_SAMPLER = "unipc"
"""The main job's headline sampler: that of the sweep's tuned entry (``unipc@fitted-stop``), so that one
stored plan serves the headline and the sweep."""


@dataclass(frozen=True)
class Run:
    """A trained run: its directory, canonical denoiser (EMA weights, eval mode), training config, device and
    stored sampling plan (None when there is none or it was turned off)."""

    path: Path
    denoiser: object
    config: object
    device: str
    plan: object = None

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
    from .rnn import load  # ordinary runs, self-conditioned ones and directories of experts

    return load(path, device=device)


def open_run(path, *, device: str = "cpu", plan: bool = True) -> Run:
    """Open a trained run (a path or a name under runs/): the newest checkpoint's denoiser and config, and
    its stored sampling plan unless ``plan=False``."""
    from ..training.checkpoint import latest_checkpoint
    from .plan import load_plan
    from .rnn import is_experts
    from .students import open_model

    path = find_run(path)
    if latest_checkpoint(path) is None and not is_experts(path):
        raise ValueError(f"{str(path)!r} holds no checkpoint: it is not a trained run")
    den, cfg = _load(path, device)
    den = open_model(path, den, cfg, device)  # a distilled run's model samples its own way
    return Run(path, den, cfg, str(device), load_plan(path) if plan else None)


def sampling_range(cfg) -> tuple[float, float]:
    """(sigma_min, sigma_max) for sampling a model trained with ``cfg``: its training range within [0.002, 80]."""
    lo, hi = cfg.sigma_range
    return max(0.002, lo), min(80.0, hi)


def progress_bar(progress: bool, total: int, desc: str, unit: str):
    if not (progress and total):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
