"""Run state <-> checkpoint: the optimiser's state as tensors and JSON, the network checked against a
checkpoint's tensor shapes before it is built, the stored configuration, and loading a trained
denoiser or a run's configuration for a resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..model import Denoiser
from ..nets import build_net
from .checkpoint import latest_checkpoint, load_checkpoint, required
from .config import RESUMABLE_CHANGES, TrainConfig

__all__ = ["load_denoiser", "resume_config", "optimizer_state", "load_optimizer", "check_shapes", "load_module",
           "stored_config", "config_diff", "cut_metrics"]


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                tensors[f"optim/{i}/{k}"] = v
            else:
                scalars.setdefault(str(i), {})[k] = float(v)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def load_optimizer(opt: torch.optim.Optimizer, meta: dict, tensors: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, i, k = key.split("/", 2)
            state.setdefault(int(i), {})[k] = v
    for i, sc in meta["scalars"].items():
        for k, v in sc.items():
            state.setdefault(int(i), {})[k] = torch.tensor(v, dtype=torch.float32)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def check_shapes(spec: dict, tensors: dict, prefix: str, where) -> None:
    """The network of ``spec`` against the checkpoint's tensors, built on the meta device (no memory)
    so that a wrong or huge spec fails at once; one line naming the first difference."""
    try:
        with torch.device("meta"):
            probe = build_net(spec)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"checkpoint {where}: its config's network spec is invalid: {e}") from None
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k[len(prefix):]: tuple(v.shape) for k, v in tensors.items() if k.startswith(prefix)}
    if want == have:
        return
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shapes = [k for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    first = (f"{prefix}{shapes[0]} is {have[shapes[0]]} in the file, {want[shapes[0]]} in the network" if shapes
             else f"first missing: {prefix}{missing[0]}" if missing else f"first unexpected: {prefix}{extra[0]}")
    raise ValueError(f"checkpoint {where} does not match the network of its config: {len(missing)} missing, "
                     f"{len(extra)} unexpected, {len(shapes)} of other shape ({first})")


def load_module(module: nn.Module, tensors: dict, prefix: str) -> None:
    module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)


def stored_config(meta: dict, where) -> TrainConfig:
    try:
        return TrainConfig.from_dict(required(meta, "config", where))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {where} holds an unusable config: {e}") from None


def config_diff(a: TrainConfig, b: TrainConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return sorted(k for k in da if k not in RESUMABLE_CHANGES and da[k] != db[k])


def cut_metrics(path: Path, step: int) -> bytes | None:
    """The metrics lines with step <= ``step`` (a torn last line from a kill is dropped); None if there
    is no file. Only reads, so that a resume can fail before it writes anything."""
    if not path.exists():
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot resume: {path} is unreadable: {e}") from None
    keep = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            keep.append(line)
    return "".join(s + "\n" for s in keep).encode()


def resume_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of the run a resume continues (ValueError when there is none)."""
    if not run_dir.is_dir():
        raise ValueError(f"cannot resume {run_dir}: no such run directory")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ValueError(f"cannot resume {run_dir}: it holds no complete checkpoint (checkpoints/ is missing or "
                         f"empty); start over with overwrite=True (--overwrite)")
    return ckpt


def resume_config(run_dir, **changes) -> TrainConfig:
    """The configuration stored in a run (its newest checkpoint), with budget or bookkeeping ``changes``
    (e.g. ``steps=8000``): what ``train(..., resume=True)`` needs without repeating every setting."""
    ckpt = resume_checkpoint(Path(run_dir))
    try:
        meta = json.loads(ckpt.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {ckpt} is not valid JSON (corrupt or truncated): {e}") from None
    cfg = stored_config(meta if isinstance(meta, dict) else {}, ckpt)
    bad = sorted(set(changes) - RESUMABLE_CHANGES)
    if bad:
        raise ValueError(f"cannot change {bad} when resuming; only {sorted(RESUMABLE_CHANGES)} may change")
    return cfg.replace(**changes)



def load_denoiser(path, *, ema: bool = True, device="cpu") -> tuple[Denoiser, TrainConfig]:
    """Load a trained canonical denoiser from a run directory (newest checkpoint) or a checkpoint file.

    Returns (denoiser in eval mode without gradients, its TrainConfig). Reads safetensors and JSON
    only; a corrupt or mismatched checkpoint raises ValueError naming the file.
    """
    meta, tensors = load_checkpoint(path)
    cfg = stored_config(meta, path)
    prefix = "ema/" if ema else "model/"
    check_shapes(cfg.net, tensors, prefix, path)
    net = build_net(cfg.net)
    load_module(net, tensors, prefix)
    return cfg.denoiser(net.to(device).eval().requires_grad_(False)), cfg


def read_resume(cfg: TrainConfig, run_dir: Path):
    """(meta, tensors, path) of the checkpoint a resume continues from, checked against ``cfg``."""
    ckpt = resume_checkpoint(run_dir)
    meta, tensors = load_checkpoint(ckpt)
    diff = config_diff(stored_config(meta, ckpt), cfg)
    if diff:
        raise ValueError(f"cannot resume {run_dir}: its config differs in {diff} "
                         f"(only {sorted(RESUMABLE_CHANGES)} may change)")
    for prefix in ("model/", "ema/"):
        check_shapes(cfg.net, tensors, prefix, ckpt)
    step = required(meta, "step", ckpt)
    if cfg.steps is not None and step > cfg.steps:
        raise ValueError(f"{run_dir} is already at step {step}, beyond steps={cfg.steps}")
    return meta, tensors, ckpt


def restore(run, meta: dict, tensors: dict, ckpt: Path) -> None:
    """Weights, EMA, optimiser, random streams and the objective's state from a checked checkpoint."""
    rng = required(meta, "rng", ckpt)
    missing = [k for k in (*run.objective.streams, "torch") if k not in rng]
    if missing:
        raise ValueError(f"checkpoint {ckpt} lacks the random stream(s) {missing} of its objective")
    try:
        load_module(run.net, tensors, "model/")
        load_module(run.ema, tensors, "ema/")
        load_optimizer(run.opt, required(meta, "optimizer", ckpt), tensors)
        run.streams.load_state_dict({k: v for k, v in rng.items() if k != "torch"})
        torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
        state = {k[len("objective/"):]: v for k, v in tensors.items() if k.startswith("objective/")}
        run.objective.load_state_dict({**state, **meta.get("objective", {})})
        run.start, run.elapsed = int(meta["step"]), float(required(meta, "elapsed_s", ckpt))
        loss, n = meta.get("log_window", (0.0, 0))  # absent in checkpoints of earlier versions: a fresh window
        run.window.loss, run.window.n = float(loss), int(n)
    except (KeyError, TypeError, RuntimeError, AttributeError) as e:
        raise ValueError(f"checkpoint {ckpt} cannot be restored: {' '.join(str(e).split())[:300]}") from None
    run.last_ckpt = ckpt
    run.metrics = cut_metrics(run.run_dir / "metrics.jsonl", run.start)


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


class DataOrder:
    """Data order: epoch e is randperm(N) from a generator seeded by (seed, e); step k takes
    positions [kB, (k+1)B) of the concatenated epochs."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._cache = n, seed, {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {epoch: torch.randperm(self.n, generator=_generator(self.seed, 1000 + epoch))}
        return self._cache[epoch]

    def indices(self, step: int, batch: int) -> torch.Tensor:
        pos = torch.arange(step * batch, (step + 1) * batch)
        epochs, within = pos // self.n, pos % self.n
        out = torch.empty(batch, dtype=torch.long)
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self.perm(e)[within[m]]
        return out
