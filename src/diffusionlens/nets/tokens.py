"""A small transformer over tokens: the x0-predictor of discrete diffusion, or a causal baseline.

``TokenTransformer(...)(x_t, t, y=None) -> logits (batch, *shape, V)``: x_t (batch, *shape) int64 in
0..states-1 (the mask token included), t (batch,) the diffusion time in [0, 1], flattened to a
sequence of L = prod(shape) positions with learned position embeddings; the time enters through the
package's :class:`~diffusionlens.nets.NoiseEmbedding`, added to every position. ``causal=True`` makes it
an autoregressive model (position l sees positions < l only: the input is shifted right by a start
token) for the baseline of ``benchmarks/discrete.py``; it then ignores t. Registered as network kind
``token-transformer``; :func:`diffusionlens.discrete.net.default_spec` is the default for token data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .embedding import NoiseEmbedding

__all__ = ["TokenTransformer"]


class TokenTransformer(nn.Module):
    """Bidirectional (or causal) pre-norm transformer encoder over a token sequence.

    Args:
        vocab: V, the number of data tokens (the output classes).
        length: L, positions per sample; shape: the sample's shape (default (length,)).
        states: input states (default V + 1: the data tokens and the mask token).
        dim, depth, heads: width, layers and attention heads; dropout inside the layers.
        num_classes: if set, a class embedding (index num_classes = the null label) is added.
        causal: autoregressive mode (see the module docstring).
    """

    def __init__(self, vocab: int, length: int, *, shape: list[int] | None = None, states: int | None = None,
                 dim: int = 128, depth: int = 4, heads: int = 4, dropout: float = 0.0,
                 num_classes: int | None = None, causal: bool = False):
        super().__init__()
        self.vocab, self.length, self.causal = int(vocab), int(length), bool(causal)
        self.shape = tuple(shape) if shape is not None else (self.length,)
        if math.prod(self.shape) != self.length:
            raise ValueError(f"shape {self.shape} does not hold {self.length} positions")
        self.states = int(states) if states is not None else self.vocab + 1
        self.tok = nn.Embedding(self.states + 1, dim)  # + 1: the start token of causal mode
        self.pos = nn.Parameter(torch.randn(self.length, dim) * 0.02)
        self.time = NoiseEmbedding(dim, dim)
        self.cls = nn.Embedding(num_classes + 1, dim) if num_classes else None
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, self.vocab)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if self.causal:
            self.register_buffer("mask", torch.triu(torch.full((self.length, self.length), -math.inf), 1))

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        B = x_t.shape[0]
        if tuple(x_t.shape[1:]) != self.shape:
            raise ValueError(f"the network takes tokens of shape (batch, {self.shape}), got {tuple(x_t.shape)}")
        x = x_t.reshape(B, self.length).long()
        if self.causal:
            x = torch.cat([torch.full((B, 1), self.states, dtype=x.dtype, device=x.device), x[:, :-1]], 1)
        h = self.tok(x) + self.pos
        if not self.causal:
            h = h + self.time(t.float())[:, None]
        if self.cls is not None and y is not None:
            h = h + self.cls(y)[:, None]
        h = self.body(h, mask=self.mask if self.causal else None, is_causal=self.causal)
        return self.out(self.norm(h)).reshape(x_t.shape + (self.vocab,))

