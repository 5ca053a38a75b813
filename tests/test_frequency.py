"""The frequency view against closed forms: the DCT basis, the spectral oracle (against the
Gaussian-mixture oracle with the same covariance), measured spectra, fits and hinges against the
oracle's exact ones, the coarse-to-fine settling of an exact flow, and blurring diffusion on the
spectral oracle (where the blurred process is again Gaussian)."""

import numpy as np
import pytest
import torch

from diffusionlens.frequency import (
    Blur,
    PowerLawGaussian,
    blurred_denoiser,
    blurring_sample,
    dct2,
    fit_power_law,
    hinge,
    idct2,
    power_spectrum,
    settling,
)
from diffusionlens.frequency.dct import _matrix
from diffusionlens.losses import edm_loss
from diffusionlens.objectives import Batch, Denoising, Streams
from diffusionlens.objectives.blurring import Blurring
from diffusionlens.oracle import GaussianMixture
from diffusionlens.processes import karras_grid

F64 = torch.float64


def _dense(oracle):
    """The oracle as a one-component GaussianMixture with the full covariance Q^T diag(v) Q."""
    h, w = oracle.data_shape[1:]
    cpu = torch.device("cpu")
    q = torch.kron(_matrix(h, F64, cpu), _matrix(w, F64, cpu))  # vec(dct2(x)) = q vec(x)
    cov = q.T @ torch.diag(oracle.variances.flatten()) @ q
    return GaussianMixture(oracle.mean()[None], (0.5 * (cov + cov.T))[None], data_shape=oracle.data_shape), q


def test_dct_is_orthonormal_and_keeps_white_noise_white():
    x = torch.randn(3, 2, 6, 9, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(idct2(dct2(x)), x, atol=1e-12)
    assert torch.allclose(dct2(x).pow(2).sum(), x.pow(2).sum(), rtol=1e-12)
    for n in (4, 7, 28):
        m = _matrix(n, F64, torch.device("cpu"))
        assert torch.allclose(m @ m.T, torch.eye(n, dtype=F64), atol=1e-12)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_spectral_oracle_equals_the_mixture_oracle_with_its_covariance(sigma):
    o = PowerLawGaussian((8, 8), exponent=-2.5, variance=0.3, mean=0.2)
    gm, _ = _dense(o)
    x = o.sample(16, torch.Generator().manual_seed(1)) + sigma * torch.randn(16, 1, 8, 8, dtype=F64)
    assert torch.allclose(o.denoise(x, sigma), gm.denoise(x, sigma), atol=1e-9)
    assert torch.allclose(o.score(x, sigma), gm.score(x, sigma), atol=1e-8 / sigma**2)
    assert torch.allclose(o.log_prob(x, sigma), gm.log_prob(x, sigma), atol=1e-8)
    assert torch.allclose(o.posterior_cov_trace(x, sigma), gm.posterior_cov_trace(x, sigma), atol=1e-9)
    assert torch.allclose(o.log_prob(x.flatten(1), 0.0), gm.log_prob(x.flatten(1), 0.0), atol=1e-7)


def test_measured_spectrum_and_fit_agree_with_the_oracle():
    o = PowerLawGaussian((1, 16, 16), exponent=-2.0)
    n = 3000
    x = o.sample(n, torch.Generator().manual_seed(2))
    meas, exact = power_spectrum(x), o.spectrum()
    # each group's power is a chi-square mean over n * count draws (one mean subtracted): relative std sqrt(2/dof)
    dof = (n - 1) * meas.count
    z = (meas.power / (exact.power * (n - 1) / n) - 1) / np.sqrt(2 / dof)
    assert np.abs(z).max() < 5
    law = fit_power_law(exact)
    assert abs(law.exponent + 2) < 1e-9 and law.ci[1] - law.ci[0] < 1e-6
    fitted = fit_power_law(meas, level=0.999)
    assert fitted.ci[0] < -2 < fitted.ci[1] and fitted.ci[1] - fitted.ci[0] < 0.1
    noisy = power_spectrum(x + 0.3 * torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(3)))
    assert np.abs((noisy.power - meas.power - 0.09) / (meas.power + 0.09)).max() < 5 * np.sqrt(2 / dof).max()


@pytest.mark.parametrize("shape, exponent", [((8, 8), -2.0), ((1, 28, 28), -2.5), ((1, 6, 10), -1.5)])
def test_hinge_of_the_exact_spectrum_is_the_closed_form(shape, exponent):
    o = PowerLawGaussian(shape, exponent=exponent)
    sigmas = np.logspace(-3, 1, 41)
    got, want = hinge(o.spectrum(), sigmas), o.hinge(sigmas)
    assert np.allclose(got, want, rtol=1e-6, atol=0)
    inside = (want > 0) & (want < o.spectrum().freq[-1])
    assert inside.sum() > 5 and np.all(np.diff(want[inside]) < 0)  # the hinge rises as sigma falls


def test_settling_of_the_exact_flow_is_coarse_to_fine_in_closed_form():
    o = PowerLawGaussian((8, 8), exponent=-2.0)
    noise = torch.randn(8, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(4))
    st = settling(o, noise, sampler="heun", steps=48, mean=0.0)
    # the exact denoiser is linear and diagonal: no Monte-Carlo error, only the solver's (second order)
    assert np.abs(st.settled - o.settled(st.sigmas)).max() < 1e-2
    half, want = st.half_sigma(), o.half_settled_sigma()
    assert np.allclose(half, want, rtol=2e-2)
    assert np.all(np.diff(half) < 0)  # coarse (low f) settles at larger sigma
    assert st.change.shape == (len(st.sigmas), len(st.freq)) and np.all(st.change >= 0)


def test_blurred_denoiser_is_the_exact_linear_posterior_mean():
    o = PowerLawGaussian((8, 8), exponent=-2.0, mean=-0.1)
    blur = Blur(max_blur=3.0)
    gm, q = _dense(o)
    cov, mu = gm.covs[0], gm.means[0]
    den = blurred_denoiser(o, blur)
    g = torch.Generator().manual_seed(5)
    for sigma in (0.1, 1.0, 10.0):
        d = blur.scales(torch.tensor([sigma], dtype=F64), (1, 8, 8))[0, 0]
        b = q.T @ torch.diag(d.flatten()) @ q
        x0 = o.sample(6, g)
        y = blur.corrupt(x0, torch.full((6,), sigma, dtype=F64), torch.randn(x0.shape, dtype=F64, generator=g))
        k = cov @ b.T @ torch.linalg.inv(b @ cov @ b.T + sigma**2 * torch.eye(64, dtype=F64))
        want = mu + (y.flatten(1) - mu @ b.T) @ k.T
        assert torch.allclose(den(y, sigma).flatten(1), want, atol=1e-9)


def _gain_error(o, blur, steps):
    noise = torch.randn(4, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(6))
    grid = karras_grid(steps, 0.002, 80.0)
    out = blurring_sample(blurred_denoiser(o, blur), noise, grid, blur)
    d_t = blur.scales(torch.tensor([80.0], dtype=F64), (1, 8, 8))[0, 0]
    gain = torch.sqrt(o.variances / (d_t**2 * o.variances + 80.0**2))  # the exact flow's map, per coefficient
    return ((dct2(out) / dct2(noise * 80.0)) / gain - 1).abs().max().item()


def test_blurring_sampler_follows_the_exact_flow_of_the_blurred_oracle():
    o, blur = PowerLawGaussian((8, 8), exponent=-2.0), Blur()
    e1, e2 = _gain_error(o, blur, 128), _gain_error(o, blur, 256)
    assert e2 < 0.05 and e2 < 0.6 * e1  # first order (DDIM): the error halves with the steps


def test_blurring_ancestral_sampler_converges_to_the_oracle():
    o, blur = PowerLawGaussian((8, 8), exponent=-2.0), Blur()
    n = 200
    noise = torch.randn(n, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(7))

    def deficit(steps):
        out = blurring_sample(blurred_denoiser(o, blur), noise, karras_grid(steps, 0.002, 80.0), blur,
                              stochastic=True, generator=torch.Generator().manual_seed(8))
        return 1 - (dct2(out).pow(2).mean(0)[0] / o.variances).mean().item()

    # variance per coefficient, averaged over the 64: Monte-Carlo std sqrt(2 / (64 n)) ~ 0.0125; the
    # ancestral step is first order, so four times the steps leave about a quarter of the deficit
    d1, d4 = deficit(48), deficit(192)
    assert 0.1 < d1 and abs(d4) < 0.45 * d1


def test_blurring_objective_without_blur_is_the_denoising_objective():
    o = PowerLawGaussian((8, 8), exponent=-2.0)
    x0 = o.sample(32, torch.Generator().manual_seed(9))
    loss = edm_loss(sigma_data=0.5)
    plain = Denoising(loss)(o, Batch(x0), Streams(3))
    blurred = Blurring(loss, Blur(max_blur=0.0))(o, Batch(x0), Streams(3))
    assert torch.allclose(plain, blurred, rtol=1e-9)
    # with blur, the exact blurred denoiser beats the Wiener filter that ignores the blur
    b = Blur()
    exact = Blurring(loss, b)(blurred_denoiser(o, b), Batch(x0), Streams(3)).mean()
    assert exact < Blurring(loss, b)(o, Batch(x0), Streams(3)).mean()


def test_photograph_patches_are_seeded_and_split_by_place():
    from diffusionlens.data import load_dataset

    a, b = load_dataset("photos", "train", seed=1, n=50), load_dataset("photos", "train", seed=1, n=50)
    assert a.x.shape == (50, 1, 32, 32) and a.is_image and a.y is None and torch.equal(a.x, b.x)
    assert not torch.equal(a.x, load_dataset("photos", "train", seed=2, n=50).x)
    assert -1 <= float(a.x.min()) and float(a.x.max()) <= 1


def test_bad_input_is_one_clear_line():
    with pytest.raises(ValueError, match="too small for a spectrum"):
        power_spectrum(torch.zeros(5, 1, 3, 8))
    with pytest.raises(ValueError, match="sides >= 4"):
        PowerLawGaussian((2, 2))
    with pytest.raises(ValueError, match="sigma must be positive"):
        hinge(PowerLawGaussian((8, 8)).spectrum(), [0.1, -1.0])
    with pytest.raises(ValueError, match="occupied frequency bins"):
        fit_power_law(PowerLawGaussian((8, 8)).spectrum(), fmin=0.3, fmax=0.31)
    with pytest.raises(ValueError, match="exponent < 0"):
        PowerLawGaussian((8, 8), exponent=1.0)
    with pytest.raises(ValueError, match="ending at 0"):
        blurring_sample(PowerLawGaussian((8, 8)), torch.zeros(2, 1, 8, 8), [80.0, 1.0])
    with pytest.raises(TypeError, match="floating-point"):
        power_spectrum(torch.zeros(5, 1, 8, 8, dtype=torch.long))
