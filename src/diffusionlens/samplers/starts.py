"""Where a sampling run starts: the state at the grid's first level and the denoiser of the first evaluation.

A start maps the standard normal noise and the resolved grid to (x at ``sigmas[0]``, the denoiser the
sampler runs with). Starts compose with every grid and every fixed-grid sampler; what they need from
the denoiser is measured once by the grid resolver: ``prepare`` before the grid is built (the teleported
start's Gaussian, which the fitted-stop grid uses), ``measured`` after it (the data mean, at the grid's
top or from the fitted pilot):

* :class:`NoiseStart` — x = noise * sigmas[0]; the sampler's own first evaluation.
* :class:`MeanStart` — the first evaluation, at the top of the grid, replaced by the data mean
  (:class:`~diffusionlens.samplers.AnalyticStart`): one evaluation fewer for the same grid.
* :class:`Teleport` — the grid starts at s1 below sigma_max, reached from noise * sigma_max by the exact
  flow of a Gaussian with the data's mean and covariance (:mod:`.gaussian`); optionally the first
  evaluation, at s1, is that Gaussian's denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor

from ._common import AnalyticStart
from .gaussian import GaussianModel, gaussian_model

__all__ = ["Start", "NoiseStart", "MeanStart", "Teleport"]


@dataclass(frozen=True)
class NoiseStart:
    """The plain start: x = noise * sigmas[0], every evaluation the denoiser's."""

    analytic = False  # the first evaluation is the denoiser's
    gaussian = None  # no teleport

    def prepare(self, denoiser, noise: Tensor, sigma_max: float):
        return self

    def measured(self, denoiser, noise: Tensor, sigmas: Tensor, density=None) -> NoiseStart:
        return self

    def begin(self, denoiser, noise: Tensor, sigmas: Tensor, sigma_max: float) -> tuple[Tensor, object]:
        return noise * float(sigmas[0]), denoiser


@dataclass(frozen=True)
class MeanStart:
    """The first evaluation, at the grid's top, replaced by the data mean (Zhou et al. 2024's analytic
    first step with a measured mean).

    Args:
        mean: E[x0] of shape ``noise.shape[1:]`` or, per sample (e.g. each sample's class mean),
            ``noise.shape``; None: measured on the denoiser (the fitted pilot's when the grid has one,
            else :func:`~diffusionlens.samplers.data_mean` at the grid's top, 64 evaluations not counted).
    """

    mean: Tensor | None = None
    analytic = True
    gaussian = None

    def prepare(self, denoiser, noise: Tensor, sigma_max: float):
        return self

    def measured(self, denoiser, noise: Tensor, sigmas: Tensor, density=None) -> MeanStart:
        if self.mean is not None:
            return self
        if density is not None and density.data_mean is not None:
            return MeanStart(density.data_mean)
        from .fitted import data_mean

        return MeanStart(data_mean(denoiser, noise.shape[1:], float(sigmas[0]), device=noise.device,
                                   dtype=noise.dtype))

    def begin(self, denoiser, noise: Tensor, sigmas: Tensor, sigma_max: float) -> tuple[Tensor, object]:
        if self.mean is None:
            raise ValueError("MeanStart has no mean yet: resolve it on the denoiser first (samplers.resolve)")
        if tuple(self.mean.shape) not in (tuple(noise.shape[1:]), tuple(noise.shape)):
            raise ValueError(f"the start's mean must have the shape of one sample {tuple(noise.shape[1:])} or of "
                             f"the batch {tuple(noise.shape)}, got {tuple(self.mean.shape)}")
        _check_steps(sigmas)
        return noise * float(sigmas[0]), AnalyticStart(denoiser, self.mean, float(sigmas[0]))


@dataclass(frozen=True)
class Teleport:
    """Start at s1 = ``sigmas[0]`` <= sigma_max, carried there from noise * sigma_max by the Gaussian's flow.

    Args:
        model: the data's :class:`GaussianModel`; None: measured on the denoiser
            (:func:`~diffusionlens.samplers.gaussian_model`, not counted in the NFE).
        analytic: the first evaluation, at s1, is the Gaussian's denoiser (one evaluation fewer).
        first: s1, where the grid starts (a named or fitted grid is built from it down to sigma_min); None:
            chosen on the pilot together with the last level (``grid="fitted-stop"``), or an explicit grid's
            first entry.
    """

    model: GaussianModel | None = None
    analytic: bool = True
    first: float | None = None

    def __post_init__(self):
        if self.model is not None and not isinstance(self.model, GaussianModel):
            raise TypeError(f"Teleport's model must be a GaussianModel, got {type(self.model).__name__}")
        if self.first is not None and not self.first > 0:
            raise ValueError(f"Teleport's first level must be > 0, got {self.first}")

    @property
    def gaussian(self) -> GaussianModel | None:
        return self.model

    def measured(self, denoiser, noise: Tensor, sigmas: Tensor, density=None) -> Teleport:
        return self

    def prepare(self, denoiser, noise: Tensor, sigma_max: float) -> Teleport:
        if self.model is not None:
            return self
        return replace(self, model=gaussian_model(denoiser, noise.shape[1:], sigma_max, device=noise.device,
                                                  dtype=noise.dtype))

    def begin(self, denoiser, noise: Tensor, sigmas: Tensor, sigma_max: float) -> tuple[Tensor, object]:
        first = float(sigmas[0])
        if not first <= sigma_max:
            raise ValueError(f"a teleported grid starts at or below sigma_max={sigma_max}, got grid[0] = {first}")
        x = self.model.flow(noise * sigma_max, sigma_max, first)
        if not self.analytic:
            return x, denoiser
        _check_steps(sigmas)
        return x, AnalyticStart(denoiser, self.model, first)


Start = NoiseStart | MeanStart | Teleport


def _check_steps(sigmas: Tensor) -> None:
    if len(sigmas) < 3:
        raise ValueError("an analytic first evaluation needs at least 2 steps: with one, the sample would be "
                         "the data mean")
