"""The network of discrete diffusion: :class:`~diffusionlens.nets.tokens.TokenTransformer` and its default spec."""

from __future__ import annotations

import math

from ..nets.tokens import TokenTransformer

__all__ = ["TokenTransformer", "default_spec"]


def default_spec(data, conditional: bool) -> dict:
    """The default network spec for token data (``Data.vocab`` set): a small bidirectional TokenTransformer
    that also takes the mask token."""
    return {"kind": "token-transformer", "vocab": data.vocab, "length": math.prod(data.data_shape),
            "shape": list(data.data_shape), "states": data.vocab + 1, "dim": 128, "depth": 4, "heads": 4,
            "num_classes": data.num_classes if conditional else None}
