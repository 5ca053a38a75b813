"""Dataset-scale evaluation: stream batches through a per-sample metric, report mean and standard error.

``evaluate(fn, data, batch_size=...)`` calls ``fn(batch) -> (batch,)`` on every batch of ``data`` (a
tensor, a sequence of tensors, or any iterable of batches such as a DataLoader, whose items may be
(x, label) tuples: the first element is taken unless ``fn`` wants the whole item), accumulates the
count, mean and sum of squared deviations in float64 (Chan et al.'s pairwise merge, no
cancellation), and returns their :class:`Summary`. A tqdm bar shows
progress and the running mean.

Distributed use (torchrun): each rank streams its own shard; per-sample solvers (the adaptive
:mod:`diffusionlens.ode` solver takes different step counts on different ranks) contain no
collective operation, so no rank can wait on another mid-batch. With ``all_reduce=True`` every
rank's (count, mean, squared deviations) is exchanged by a single all-reduce after the last batch
and merged, on every rank.

Standard error: sqrt(sample variance / n) over the per-sample values, the spread of the data;
Monte Carlo noise inside each value (Hutchinson probes, ELBO draws) is part of that spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Summary", "evaluate", "batches"]


@dataclass(frozen=True)
class Summary:
    """Mean, standard error and count of a per-sample quantity over a dataset (``values`` if kept)."""

    mean: float
    stderr: float
    n: int
    values: Tensor | None = None

    def __str__(self) -> str:
        return f"{self.mean:.6g} ± {self.stderr:.2g} (n={self.n})"


def batches(data, batch_size: int) -> Iterable:
    """Split a tensor (or a tuple/list of tensors with a common first dim) into consecutive batches."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(data, Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        n = data[0].shape[0]
        if any(t.shape[0] != n for t in data):
            raise ValueError(f"tensors have different lengths: {[t.shape[0] for t in data]}")
        for i in range(0, n, batch_size):
            yield tuple(t[i : i + batch_size] for t in data)
        return
    yield from data


def _merge(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Merge (n, mean, M2) summaries (Chan, Golub & LeVeque 1979)."""
    na, ma, qa = a
    nb, mb, qb = b
    n = na + nb
    if n == 0:
        return 0, 0.0, 0.0
    delta = mb - ma
    return n, ma + delta * nb / n, qa + qb + delta * delta * na * nb / n


def _dist():
    d = torch.distributed
    return d if d.is_available() and d.is_initialized() else None


def evaluate(
    fn: Callable[..., Tensor],
    data,
    *,
    batch_size: int = 256,
    whole_item: bool = False,
    progress: bool = True,
    desc: str = "evaluate",
    all_reduce: bool = True,
    keep_values: bool = False,
    total: int | None = None,
) -> Summary:
    """Mean and standard error of ``fn`` over a dataset, streamed in batches.

    Args:
        fn: per-batch metric returning (batch,) values (e.g. ``lambda x: bits_per_dim(...)``).
        data: a tensor or tuple of tensors (split into ``batch_size`` batches), or an iterable of batches.
        whole_item: pass tuple items to ``fn`` whole instead of only their first element.
        progress: show a tqdm bar (on rank 0 only when distributed).
        all_reduce: when torch.distributed is initialized, sum the totals across ranks once at the end.
        keep_values: keep this rank's per-sample values in the summary.
        total: number of batches for the bar when ``data`` has no length.
    Raises:
        ValueError on an empty dataset or a result whose shape is not (batch,); FloatingPointError on a
        non-finite value, naming the batch.
    """
    dist = _dist()
    show = progress and (dist is None or dist.get_rank() == 0)
    it = batches(data, batch_size)
    if total is None:
        if isinstance(data, Tensor):
            total = math.ceil(data.shape[0] / batch_size)
        elif hasattr(data, "__len__") and not (isinstance(data, (tuple, list)) and data
                                               and isinstance(data[0], Tensor)):
            total = len(data)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, leave=False)
    acc = (0, 0.0, 0.0)
    kept = []
    for i, item in enumerate(it):
        x = item[0] if isinstance(item, (tuple, list)) and not whole_item else item
        v = fn(x)
        if not isinstance(v, Tensor) or v.ndim != 1:
            raise ValueError(f"fn must return a (batch,) tensor, got {type(v).__name__} of shape "
                             f"{tuple(v.shape) if isinstance(v, Tensor) else '?'} at batch {i}")
        v = v.detach().double()
        if not bool(torch.isfinite(v).all()):
            raise FloatingPointError(f"non-finite value in batch {i}")
        if v.numel():
            m = float(v.mean())
            acc = _merge(acc, (v.numel(), m, float(((v - m) ** 2).sum())))
        if keep_values:
            kept.append(v.cpu())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(mean=f"{acc[1]:.4g}")
    if bar is not None:
        bar.close()
    if dist is not None and all_reduce:
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        table = torch.zeros(dist.get_world_size(), 3, dtype=torch.float64, device=dev)
        table[dist.get_rank()] = torch.tensor(acc, dtype=torch.float64)
        dist.all_reduce(table)  # the one collective, after the last batch
        acc = (0, 0.0, 0.0)
        for row in table.cpu().tolist():
            acc = _merge(acc, (int(row[0]), row[1], row[2]))
    n, mean, m2 = acc
    if n == 0:
        raise ValueError("empty dataset: no samples were evaluated")
    var = m2 / (n - 1) if n > 1 else math.inf
    return Summary(mean=mean, stderr=math.sqrt(var / n), n=n, values=torch.cat(kept) if keep_values else None)
