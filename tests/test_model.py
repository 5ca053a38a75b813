"""The model wrapper and the adapters: networks that compute the exact oracle answer in their own
convention must come out as exactly the oracle's canonical denoiser."""

import pytest
import torch
from torch import nn

from diffusionlens.model import Denoiser, from_flow_matching, from_timestep_model
from diffusionlens.oracle import random_mixture, ring
from diffusionlens.parameterization import Param, edm_precond, from_denoiser
from diffusionlens.processes import EDM, VE, VP, DDPMTable, Flow


class OracleNet(nn.Module):
    """A 'network' that reads its own (x_in, cond) the way the wrapper promises and answers exactly."""

    def __init__(self, gm, process, param, sigma_data=0.5):
        super().__init__()
        self.gm, self.process, self.param, self.sd = gm, process, Param(param), sigma_data

    def forward(self, x_in, cond):
        if self.param is Param.EDM:
            sigma = torch.exp(4 * cond)  # c_noise = ln(sigma) / 4
            x_hat = x_in / edm_precond(sigma, self.sd)[2].view(-1, *[1] * (x_in.ndim - 1))
            c = self.process.coefs(self.process.t_of_sigma(sigma).clamp(0, 1))
        else:
            c = self.process.coefs(cond)  # cond is t
            x_hat = x_in / c.scale.view(-1, *[1] * (x_in.ndim - 1))
            sigma = c.sigma
        c = type(c)(t=c.t, sigma=sigma, scale=c.scale, dsigma=c.dsigma, dscale=c.dscale)
        return from_denoiser(self.param, self.gm.denoise(x_hat, sigma), x_hat, c, self.sd)


@pytest.mark.parametrize("process", [VP(), VE(), EDM(), Flow()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("param", list(Param), ids=lambda p: p.value)
def test_wrapper_recovers_oracle(process, param):
    gm = random_mixture(4, 3, seed=0)
    lo, hi = max(process.sigma_min, 1e-2) * 1.01, min(process.sigma_max, 40.0)
    sigma = torch.exp(torch.linspace(torch.log(torch.tensor(lo)), torch.log(torch.tensor(hi)), 32, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    x = gm.sample(32, g) + sigma[:, None] * torch.randn(32, 4, generator=g, dtype=torch.float64)
    D = Denoiser(OracleNet(gm, process, param), process, param)
    torch.testing.assert_close(D(x, sigma), gm.denoise(x, sigma), rtol=1e-7, atol=1e-7)


def test_scalar_sigma_and_image_rank():
    gm = random_mixture(16, 2, seed=1)
    gm_img = type(gm)(gm.means, gm.covs, gm.weights, data_shape=(1, 4, 4))
    x = gm_img.sample(5, torch.Generator().manual_seed(0)) + 0.3 * torch.randn(5, 1, 4, 4, dtype=torch.float64)
    D = Denoiser(OracleNet(gm_img, VP(), Param.V), VP(), "v")
    torch.testing.assert_close(D(x, 0.3), gm_img.denoise(x, 0.3), rtol=1e-7, atol=1e-7)


def test_timestep_adapter_matches_diffusers_convention():
    """An eps-predicting model fed x_t = sqrt(abar) x0 + sqrt(1 - abar) eps and the integer timestep."""
    process = DDPMTable()
    abar = process.alphas_cumprod
    gm = ring()

    def net(x_t, timestep):
        i = timestep.round().long()
        assert torch.allclose(timestep, i.to(timestep.dtype), atol=1e-6), "grid sigmas must map to integer steps"
        a = abar[i].sqrt()[:, None]
        sig = ((1 - abar[i]) / abar[i]).sqrt()
        x_hat = x_t / a
        return (x_hat - gm.denoise(x_hat, sig)) / sig[:, None]  # eps in x_t's own convention

    i = torch.tensor([0, 10, 250, 999])
    sig = process.sigmas[i]
    x = gm.sample(4, torch.Generator().manual_seed(2)) + sig[:, None] * torch.randn(4, 2, dtype=torch.float64)
    D = from_timestep_model(net, process, "eps")
    torch.testing.assert_close(D(x, sig), gm.denoise(x, sig), rtol=1e-7, atol=1e-7)


def test_flow_matching_adapter_reverses_time():
    """A torchcfm-style velocity model: x = t x1 + (1 - t) noise, target x1 - noise (data at t = 1)."""
    gm = random_mixture(3, 2, seed=3)

    def net(x, t_fm):
        # exact marginal velocity E[x1 - x0_noise | x] for x = t x1 + (1 - t) z, via the oracle in our notation:
        t = 1 - t_fm
        sigma = t / (1 - t)
        x_hat = x / (1 - t)[:, None]
        D = gm.denoise(x_hat, sigma)
        noise = (x_hat - D) / sigma[:, None]
        return D - noise

    sigma = torch.tensor([0.05, 0.5, 2.0, 20.0], dtype=torch.float64)
    x = gm.sample(4, torch.Generator().manual_seed(4)) + sigma[:, None] * torch.randn(4, 3, dtype=torch.float64)
    D = from_flow_matching(net)
    torch.testing.assert_close(D(x, sigma), gm.denoise(x, sigma), rtol=1e-7, atol=1e-7)


def test_bad_input():
    with pytest.raises(ValueError, match="'bogus'"):
        Denoiser(nn.Identity(), VP(), "bogus")
    with pytest.raises(TypeError, match="Process"):
        Denoiser(nn.Identity(), "vp")
    with pytest.raises(TypeError, match="DDPMTable"):
        from_timestep_model(nn.Identity(), VP())
    with pytest.raises(ValueError, match="'score'"):
        from_timestep_model(nn.Identity(), DDPMTable(), "score")
    D = Denoiser(lambda x, c: x[:, :1], VP(), "x0")
    with pytest.raises(ValueError, match="output shape"):
        D(torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="-1"):
        D(torch.zeros(2, 3), -1.0)
