"""The frequency view: diffusion as autoregression over spatial frequencies.

* :mod:`.dct` — the orthonormal DCT basis everything here is measured in.
* :mod:`.spectra` — radially averaged power spectra, the power-law fit with its interval, the hinge
  per noise level, and the coarse-to-fine settling of a sampler, measured.
* :mod:`.oracle` — :class:`PowerLawGaussian`, a stationary Gaussian with power-law spectrum whose
  denoiser (a Wiener filter), score, log-density, hinge and settling are exact.
* :mod:`.blurring` — blurring diffusion (inverse heat dissipation): the corruption, its objective
  (:mod:`diffusionlens.objectives.blurring`, ``objective="blurring"``) and its sampler.
* :mod:`.measure` — what the CLI's ``spectrum`` command and the report's frequency section show.
"""

from .blurring import Blur, blurred_denoiser, blurring_sample
from .dct import dct2, frequencies, heat_rates, idct2
from .oracle import PowerLawGaussian
from .spectra import PowerLaw, Settling, Spectrum, fit_power_law, hinge, power_spectrum, settling

__all__ = ["Blur", "blurred_denoiser", "blurring_sample", "dct2", "idct2", "frequencies", "heat_rates",
           "PowerLawGaussian", "PowerLaw", "Settling", "Spectrum", "fit_power_law", "hinge", "power_spectrum",
           "settling"]
