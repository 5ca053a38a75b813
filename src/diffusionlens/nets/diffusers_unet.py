"""diffusers' ``UNet2DModel`` as a diffusionlens network ``net(x_in, cond, y=None)``.

diffusers is an optional extra (``pip install 'diffusionlens[diffusers]'``): it is imported when such a
network is built, never at package import. The wrapper's only job is the noise conditioning: the
:class:`~diffusionlens.model.Denoiser` hands the network ``cond`` (the process time t, or EDM's
c_noise = ln(sigma) / 4), and diffusers' UNet expects a "timestep"; the map between them is affine,
``timestep = timestep_scale * cond + timestep_shift``, and is part of the spec so that a checkpoint
says exactly what the network saw:

* a discrete DDPM table of T steps (diffusers' DDPM/DDIM schedulers): the 0-based index t T - 1
  (scale T, shift -1), as :func:`diffusionlens.model.from_timestep_model` does;
* EDM preconditioning (diffusers' ``EDMEulerScheduler``): c_noise itself (scale 1, shift 0);
* other processes: DDPM's 1000 t (scale 1000), like this package's own UNet.
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

__all__ = ["DiffusersUNet", "MissingExtra", "require_diffusers", "default_spec", "timestep_map"]

EXTRA = "diffusers"


class MissingExtra(ImportError, ValueError):
    """An optional dependency is not installed (a ValueError too, so the CLI reports it in one line, exit 2)."""


def require_diffusers():
    """The ``diffusers`` module, or :class:`MissingExtra` naming the extra that installs it."""
    try:
        import diffusers
    except ImportError:
        raise MissingExtra(f"diffusers is not installed; it is the optional extra {EXTRA!r}: "
                           f"pip install 'diffusionlens[{EXTRA}]'") from None
    return diffusers


def unet_arguments() -> set[str]:
    """Constructor arguments of diffusers' ``UNet2DModel``."""
    return set(inspect.signature(require_diffusers().UNet2DModel.__init__).parameters) - {"self"}


class DiffusersUNet(nn.Module):
    """``net(x_in, cond, y=None) -> (batch, C, H, W)`` around ``UNet2DModel(**unet)``.

    Args:
        unet: the UNet2DModel configuration (its constructor arguments, JSON-able).
        timestep_scale, timestep_shift: the diffusers timestep is ``timestep_scale * cond + timestep_shift``.
    """

    def __init__(self, unet: dict, timestep_scale: float = 1000.0, timestep_shift: float = 0.0):
        super().__init__()
        diffusers = require_diffusers()
        if not isinstance(unet, dict):
            raise ValueError(f"unet must be a dict of UNet2DModel arguments, got {unet!r}")
        unknown = sorted(set(unet) - unet_arguments())
        if unknown:
            raise ValueError(f"unknown UNet2DModel argument(s) {unknown}")
        if unet.get("num_class_embeds") is not None or unet.get("class_embed_type") is not None:
            raise ValueError("class-conditional diffusers UNets are not supported (num_class_embeds / "
                             "class_embed_type must be unset)")
        self.unet = diffusers.UNet2DModel(**unet)
        self.timestep_scale, self.timestep_shift = float(timestep_scale), float(timestep_shift)
        self.in_channels, self.image_size = int(self.unet.config.in_channels), self.unet.config.sample_size

    def forward(self, x: Tensor, cond: Tensor, y: Tensor | None = None) -> Tensor:
        if y is not None:
            raise ValueError("labels given to an unconditional diffusers UNet")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"diffusers UNet built for (batch, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        t = (self.timestep_scale * cond + self.timestep_shift).to(x.dtype).expand(x.shape[0])
        return self.unet(x, t).sample


def timestep_map(process, param) -> tuple[float, float]:
    """(timestep_scale, timestep_shift) matching diffusers' convention for a process and parameterization."""
    from ..parameterization import Param
    from ..processes import DDPMTable

    if Param.parse(param) is Param.EDM:
        return 1.0, 0.0
    if isinstance(process, DDPMTable):
        return float(process.T), -1.0
    return 1000.0, 0.0


def default_spec(data_shape, process, param) -> dict:
    """A compact UNet2DModel for (C, H, W) images: three levels (32, 64, 64 channels), one block each,
    self-attention on the two coarser levels (about the size of this package's default UNet at 8x8)."""
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"the diffusers UNet needs square images (C, H, W), got data shape {tuple(data_shape)}")
    C, H, _ = data_shape
    scale, shift = timestep_map(process, param)
    unet = {"sample_size": H, "in_channels": C, "out_channels": C, "layers_per_block": 1,
            "block_out_channels": [32, 64, 64],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
    return {"kind": "diffusers-unet", "unet": unet, "timestep_scale": scale, "timestep_shift": shift}

