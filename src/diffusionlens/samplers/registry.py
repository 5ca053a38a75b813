"""Every sampler by name: one line per sampler; its facts are in its spec (:mod:`.spec`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .adaptive import adaptive
from .ddim import ddim, ddpm
from .dpmpp import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, dpmpp_3m_sde
from .euler import euler, heun
from .lms import deis, lms
from .sde import euler_maruyama, langevin, pc
from .spec import SamplerSpec, sampler, spec_of
from .unipc import unipc

__all__ = ["SAMPLERS", "SPECS", "DEFAULT_SAMPLER", "resolve_sampler"]

# the adaptive solver's spec is attached here rather than at its definition (its module holds the step
# controller): order of its default predictor-corrector (cubic, local error h^5); it chooses its own steps
sampler(order=4, adaptive=True)(adaptive)

SAMPLERS: dict[str, Callable[..., Tensor]] = {
    fn.spec.name: fn
    for fn in (euler, heun, ddim, ddpm, lms, deis, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, dpmpp_3m_sde, unipc,
               euler_maruyama, pc, langevin, adaptive)
}
"""Every sampler by name. Each runs through :func:`~diffusionlens.samplers.sample` with its default options."""

SPECS: dict[str, SamplerSpec] = {name: fn.spec for name, fn in SAMPLERS.items()}
"""Every registered sampler's :class:`SamplerSpec` by name."""

DEFAULT_SAMPLER = "deis"
"""The recommended sampler: DEIS (multistep, noise prediction interpolated in log sigma), 1 NFE per step,
chosen on the samplers benchmark (benchmarks/samplers.md)."""


def resolve_sampler(sampler: str | Callable) -> tuple[Callable, SamplerSpec]:
    """A sampler name or function -> (function, spec); one ValueError naming an unknown name."""
    if callable(sampler):
        return sampler, spec_of(sampler)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    fn = SAMPLERS[sampler]
    return fn, fn.spec
