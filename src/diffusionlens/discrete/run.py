"""Discrete runs: open a run trained with a discrete objective, sample it, score it (ELBO in bits per
token), write ``evaluation.json`` and ``samples.safetensors`` through the run layer's atomic writers.

    r = open_run("runs/digits17")
    x = sample(r, 16, sampler="maskgit", steps=16)
    ev = evaluate(r)                     # {"test_bpd": ..., "bound_per_time": {...}, ...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..objectives.discrete import DISCRETE_OBJECTIVES, corruption_of
from .ctmc import SAMPLERS, ctmc_elbo, ctmc_loss, masked_elbo, masked_loss
from .d3pm import D3PM
from .process import Corruption, Kind, check_tokens, likelihood_weighted

__all__ = ["TokenRun", "open_run", "sample", "elbo", "bound_per_time", "evaluate", "check_data"]


@dataclass(frozen=True)
class TokenRun:
    """A discrete run: ``model(x_t, t) -> logits`` (the EMA network, in eval mode), its config and process."""

    path: Path
    model: object
    config: object
    process: Corruption
    d3pm: D3PM | None
    shape: tuple[int, ...]
    device: torch.device

    @property
    def vocab(self) -> int:
        return self.process.vocab


def open_run(path, *, device="cpu") -> TokenRun:
    """Load a run trained with a discrete objective (ValueError for any other run)."""
    from ..run import find_run
    from ..training import load_denoiser

    path = find_run(path)
    den, cfg = load_denoiser(path, device=device)
    if cfg.objective not in DISCRETE_OBJECTIVES:
        raise ValueError(f"{path} was trained with objective {cfg.objective!r}, not a discrete one "
                         f"({', '.join(DISCRETE_OBJECTIVES)})")
    net = den.net.eval()
    process, d3pm = corruption_of(cfg.objective, net.vocab)

    def model(x_t: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return net(x_t, t.to(torch.float32))

    if cfg.objective == "ctmc-uniform":  # the parameterisation the objective trained
        model = likelihood_weighted(model, process)
    return TokenRun(Path(path), model, cfg, process, d3pm, tuple(net.shape), torch.device(device))


def check_data(run: TokenRun, data) -> None:
    """One-line ValueError when a data set does not fit the run (not tokens, other vocabulary or shape)."""
    if getattr(data, "vocab", None) is None:
        raise ValueError(f"data set {data.name!r} is not token data")
    if data.vocab != run.vocab or tuple(data.data_shape) != run.shape:
        raise ValueError(f"vocabulary mismatch: the run has vocabulary {run.vocab} and shape {run.shape}, data set "
                         f"{data.name!r} has {data.vocab} and {tuple(data.data_shape)}")


def sample(run: TokenRun, n: int, *, sampler: str = "ancestral", steps: int = 64, seed: int = 0,
           batch_size: int = 256, progress: bool = False, **options) -> Tensor:
    """n samples (n, *shape) int64 with a sampler of :data:`~.ctmc.SAMPLERS` (options: maskgit's schedule,
    temperature, choice_temperature). Batches are seeded by (seed, batch index)."""
    from tqdm.auto import tqdm

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown discrete sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    out = []
    for i, start in enumerate(tqdm(range(0, n, batch_size), disable=not progress, desc="sampling", leave=False)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        b = min(batch_size, n - start)
        out.append(SAMPLERS[sampler](run.model, run.process, (b,) + run.shape, steps, generator=g,
                                     device=run.device, **options).cpu())
    return torch.cat(out)


def elbo(run: TokenRun, x0: Tensor, *, seed: int = 0, n_t: int = 1, batch_size: int = 256) -> Tensor:
    """(batch,) an unbiased estimate of the negative ELBO in nats: the continuous-time ELBO (masked, or the
    CTMC bound of uniform corruption) or D3PM's one-step estimate, with ``n_t`` draws per sample."""
    check_tokens(x0, run.vocab, "data tokens")
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, x0.shape[0], batch_size):
        x = x0[start : start + batch_size].to(run.device)
        if run.d3pm is None:
            bound = masked_elbo if run.process.kind is Kind.MASK else ctmc_elbo
            out.append(bound(run.model, x, run.process, n_t=n_t, generator=g).cpu())
        else:
            out.append(sum(run.d3pm.nll(run.model, x, generator=g).cpu() for _ in range(n_t)) / n_t)
    return torch.cat(out)


def bound_per_time(run: TokenRun, x0: Tensor, times, *, seed: int = 0) -> list[float]:
    """The bound's density over time in nats per token: at each t, E[integrand] (continuous time) or
    T E[term(round(t T))] (D3PM), whose integral over t in [0, 1] is the bound (one draw per sample)."""
    g = torch.Generator().manual_seed(seed)
    x0 = x0.to(run.device)
    L = math.prod(run.shape)
    out = []
    for t in times:
        tt = torch.full((x0.shape[0],), float(t), dtype=torch.float64, device=run.device)
        if run.d3pm is None:
            loss = masked_loss if run.process.kind is Kind.MASK else ctmc_loss
            v = loss(run.model, x0, run.process.corrupt(x0, tt, g), tt, run.process)
        else:
            k = max(1, min(run.d3pm.T, round(float(t) * run.d3pm.T)))
            v = run.d3pm.T * run.d3pm.term(run.model, x0, run.d3pm.corrupt(x0, k, g), k)
        out.append(float(v.mean()) / L)
    return out


def evaluate(run: TokenRun, *, n_test: int | None = None, n_samples: int = 64, sampler: str = "ancestral",
             steps: int = 64, seed: int = 0, progress: bool = False, **options) -> dict:
    """Test ELBO (bits per token, with its standard error), the bound per time, and samples; writes
    ``evaluation.json`` and ``samples.safetensors`` in the run directory."""
    from .. import run as runlayer
    from ..data import load_dataset

    data = load_dataset(run.config.dataset, "test", n=n_test)
    check_data(run, data)
    nats = elbo(run, data.x, seed=seed)
    L = math.prod(run.shape)
    bits = nats / (L * math.log(2))
    times = [i / 20 for i in range(1, 21)]
    x = sample(run, n_samples, sampler=sampler, steps=steps, seed=seed, progress=progress, **options)
    ev = {"kind": "discrete", "objective": run.config.objective, "dataset": data.name, "n_test": len(data),
          "test_bpd": float(bits.mean()), "test_bpd_stderr": float(bits.std() / math.sqrt(len(bits))),
          "bound_per_time": {"t": times, "nats_per_token": bound_per_time(run, data.x[:256], times, seed=seed)},
          "sampler": sampler, "steps": steps, "n_samples": n_samples, "options": options}
    runlayer.save_tensors(run.path / "samples.safetensors", {"tokens": x.contiguous()})
    runlayer.save_json(run.path / "evaluation.json", ev)
    return ev
