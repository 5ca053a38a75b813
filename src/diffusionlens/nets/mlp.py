"""A residual MLP with noise-level (and optional class) conditioning for low-dimensional data."""

from __future__ import annotations

import math

from torch import Tensor, nn

from .embedding import ClassEmbedding, Embedding, NoiseEmbedding, with_estimate

__all__ = ["MLP"]


class _Block(nn.Module):
    """Pre-norm residual block: h + W2 SiLU(W1 LN(h) + e), e the projected conditioning."""

    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.act(self.fc1(self.norm(h)) + self.emb(emb))
        return h + self.fc2(self.drop(z))


class MLP(nn.Module):
    """``net(x_in, cond, y=None)`` for data of any shape (batch, *data_shape), flattened to ``dim``.

    Args:
        data_shape: shape of one sample (an int d means (d,)).
        width: hidden width; depth: number of residual blocks.
        emb_dim: width of the noise embedding; embedding: ``"sinusoidal"`` or ``"fourier"``.
        num_classes: if set, a class embedding with a null label (index num_classes) is added.
        dropout: dropout inside the blocks.
        self_condition: take a second input ``x0_prev`` (a previous estimate of x0, shaped like x;
            zeros when not given), concatenated to x (self-conditioning, Chen et al. 2022).

    The output layer starts at zero, so an untrained net predicts 0 (as EDM's networks do).
    """

    def __init__(
        self,
        data_shape: int | tuple[int, ...] | list[int] = 2,
        *,
        width: int = 256,
        depth: int = 4,
        emb_dim: int = 128,
        embedding: Embedding | str = Embedding.SINUSOIDAL,
        num_classes: int | None = None,
        dropout: float = 0.0,
        self_condition: bool = False,
    ):
        super().__init__()
        self.data_shape = (data_shape,) if isinstance(data_shape, int) else tuple(data_shape)
        for name, v in (("width", width), ("depth", depth), ("emb_dim", emb_dim)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (0 <= dropout < 1):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        dim = math.prod(self.data_shape)
        self.num_classes = num_classes
        self.embed = NoiseEmbedding(emb_dim, emb_dim, embedding)
        self.label = ClassEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.self_condition = bool(self_condition)
        self.inp = nn.Linear(2 * dim if self.self_condition else dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, cond: Tensor, y: Tensor | None = None, x0_prev: Tensor | None = None) -> Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"MLP built for samples of shape {self.data_shape}, got input {tuple(x.shape)}")
        emb = self.embed(cond)
        if self.label is not None:
            emb = emb + self.label(y, x.shape[0], x.device)
        elif y is not None:
            raise ValueError("labels given to an unconditional MLP (build it with num_classes)")
        emb = self.act(emb)
        h = self.inp(with_estimate(self.self_condition, x, x0_prev, 1, type(self).__name__).flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.act(self.out_norm(h))).reshape(x.shape)
