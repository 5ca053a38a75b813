"""Networks: :class:`MLP` for low-dimensional data, :class:`UNet` for images.

Both are called as ``net(x_in, cond, y=None)`` with ``x_in`` (batch, *data_shape), ``cond`` the
noise conditioning (batch,) and optional labels ``y`` (batch,) int64 (index ``num_classes`` is the
learned null label). Any ``torch.nn.Module`` with this call signature may be plugged into
:class:`~diffusionlens.model.Denoiser` instead. :func:`build_net` builds one from a JSON-able spec,
which is how training configs and checkpoints name their network.
"""

from __future__ import annotations

import inspect

from torch import nn

from .diffusers_unet import DiffusersUNet
from .embedding import ClassEmbedding, Embedding, NoiseEmbedding
from .mlp import MLP
from .tokens import TokenTransformer
from .unet import UNet

__all__ = ["MLP", "UNet", "NoiseEmbedding", "ClassEmbedding", "Embedding", "build_net", "NETS", "count_params",
           "DiffusersUNet"]

NETS = {"mlp": MLP, "unet": UNet, "token-transformer": TokenTransformer, "diffusers-unet": DiffusersUNet}


def build_net(spec: dict) -> nn.Module:
    """Build a network from ``{"kind": "mlp" | "unet", **constructor arguments}``.

    Example: ``build_net({"kind": "unet", "in_channels": 1, "image_size": 8, "num_classes": 10})``.
    Raises ValueError naming an unknown kind or argument.
    """
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"a network spec must be a dict with a 'kind' key ({' or '.join(NETS)}), got {spec!r}")
    kwargs = dict(spec)
    kind = kwargs.pop("kind")
    if kind not in NETS:
        raise ValueError(f"unknown network kind {kind!r}; choose one of: {', '.join(NETS)}")
    cls = NETS[kind]
    allowed = set(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"unknown {kind} argument(s) {unknown}; allowed: {sorted(allowed)}")
    return cls(**kwargs)


def count_params(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
