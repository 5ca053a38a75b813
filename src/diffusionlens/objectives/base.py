"""What every training objective shares: the batch it sees, the random streams it draws from, and
the interface the training loop calls.

An objective maps (model, batch, rng) to per-sample losses and owns whatever else it needs (a frozen
teacher, a target network, a discretisation schedule). The loop knows nothing else about it: it
averages the losses, steps the optimiser, and checkpoints :meth:`Objective.state_dict` beside the
weights so that a resumed run continues exactly.

Distributed runs: every rank receives the *global* batch and draws the randomness of the global
batch from identically seeded streams, then evaluates the model on its own rows only
(:attr:`Batch.rows`); the averaged gradient is then the single-process gradient of the global batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Batch", "Objective", "Streams"]


@dataclass(frozen=True)
class Batch:
    """One training batch.

    x0: (size, *data_shape) the clean data of the global batch; labels: (size,) class labels or None;
    rows: the rows this rank evaluates (None: all of them, a single process).
    """

    x0: Tensor
    labels: Tensor | None = None
    rows: slice | None = None

    @property
    def size(self) -> int:
        """The global batch size (draws are made for all of it)."""
        return self.x0.shape[0]

    def local(self, v: Tensor) -> Tensor:
        """This rank's rows of a per-sample tensor of the global batch."""
        return v if self.rows is None else v[self.rows]


class Streams:
    """Named random streams of a run, each a ``torch.Generator`` seeded from (seed, name).

    ``rng["t"]`` and ``rng["noise"]`` keep the seeds the training loop has always used, so runs and
    checkpoints of earlier versions reproduce; any other name gets a seed derived from a hash of
    the name, created on first use. ``state_dict`` / ``load_state_dict`` carry the generator states
    as lists of ints (JSON), for exact resume.
    """

    FIXED = {"t": 1, "noise": 2}

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._g: dict[str, torch.Generator] = {}

    def seed_of(self, name: str) -> int:
        if name in self.FIXED:
            return self.seed * 1_000_003 + self.FIXED[name]
        h = int.from_bytes(hashlib.sha256(f"{self.seed}/{name}".encode()).digest()[:7], "little")
        return h

    def __getitem__(self, name: str) -> torch.Generator:
        if name not in self._g:
            self._g[name] = torch.Generator().manual_seed(self.seed_of(name))
        return self._g[name]

    def state_dict(self) -> dict[str, list[int]]:
        return {k: g.get_state().tolist() for k, g in self._g.items()}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        for k, v in state.items():
            self[k].set_state(torch.tensor(v, dtype=torch.uint8))


class Objective:
    """A training objective: ``objective(model, batch, rng) -> (local batch,)`` per-sample losses.

    ``streams`` names the random streams it draws from (the loop creates them before the first step
    and a checkpoint must hold them all). ``state_dict`` returns the objective's own state, tensors
    and JSON-able scalars, stored with every checkpoint and given back to ``load_state_dict`` on
    resume; stateless objectives keep the defaults. A non-finite loss raises FloatingPointError.
    """

    streams: tuple[str, ...] = ()

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        raise NotImplementedError

    def initialise(self, net) -> None:
        """Set the freshly built network's starting weights (default: its own random initialisation);
        called once before training, before a resume restores the checkpoint's weights."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")
