"""Networks (shapes on several ranks, conditioning, zero-initialised output, specs) and
classifier-free guidance on the exact class-conditional oracle."""

import pytest
import torch

from diffusionlens.guidance import ClassifierFree
from diffusionlens.model import Denoiser
from diffusionlens.nets import MLP, UNet, build_net, count_params
from diffusionlens.oracle import GaussianMixture, ring
from diffusionlens.processes import EDM, VP


def _perturb(net):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("shape", [(2,), (16,), (1, 4, 4)])
def test_mlp_any_rank(shape):
    net = MLP(shape, width=32, depth=2)
    x, c = torch.randn(5, *shape), torch.rand(5)
    assert torch.equal(net(x, c), torch.zeros_like(x))  # zero-initialised output layer
    out = _perturb(net)(x, c)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert not torch.allclose(out, net(x, c + 0.3))  # depends on the noise level


@pytest.mark.parametrize("spec", [dict(), dict(in_channels=3, image_size=16, channels=16, channel_mult=(1, 2),
                                                  blocks=2, attn_resolutions=(8,), groups=4)])
def test_unet_shapes_and_conditioning(spec):
    net = _perturb(UNet(**spec, num_classes=10))
    C, S = net.in_channels, net.image_size
    x, c = torch.randn(4, C, S, S), torch.rand(4)
    y = torch.tensor([0, 3, 9, 10])
    out = net(x, c, y=y)
    assert out.shape == x.shape
    # y=None is the null label
    null = torch.full((4,), 10)
    torch.testing.assert_close(net(x, c), net(x, c, y=null))
    assert not torch.allclose(net(x, c, y=torch.zeros(4, dtype=torch.long)), net(x, c, y=null))
    # samples are processed independently (no batch-coupled layers)
    torch.testing.assert_close(net(x[:1], c[:1], y=y[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_default_unet_size_for_digits():
    """The network the digits runs train by default (TrainConfig -> default_net -> build_net) is the
    issue's 1.2M-parameter UNet (within 5 %), the size the training benchmark matches the peer to."""
    from diffusionlens.data import load_dataset
    from diffusionlens.training.config import default_net

    net = build_net(default_net(load_dataset("digits", "train"), conditional=False))
    assert isinstance(net, UNet)
    n = count_params(net)
    assert abs(n - 1.2e6) < 0.05 * 1.2e6, n


def test_nets_plug_into_denoiser():
    den = Denoiser(_perturb(MLP(2, width=32, depth=1)), VP(), "eps")
    assert den(torch.randn(3, 2), 0.7).shape == (3, 2)
    den = Denoiser(_perturb(UNet(channels=16, groups=4)), EDM(), "edm")
    assert den(torch.randn(2, 1, 8, 8), torch.tensor([0.1, 3.0])).shape == (2, 1, 8, 8)


def test_build_net_and_errors():
    assert isinstance(build_net({"kind": "mlp", "data_shape": [2], "width": 8}), MLP)
    assert isinstance(build_net({"kind": "unet", "channel_mult": [1, 2], "channels": 8, "groups": 2}), UNet)
    with pytest.raises(ValueError, match="unknown network kind 'resnet'.*mlp"):
        build_net({"kind": "resnet"})
    with pytest.raises(ValueError, match="unknown unet argument.*'width'"):
        build_net({"kind": "unet", "width": 3})
    with pytest.raises(ValueError, match="not divisible"):
        UNet(image_size=6, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="labels given to an unconditional"):
        MLP(2)(torch.randn(2, 2), torch.rand(2), y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="label 11 outside"):
        MLP(2, num_classes=10)(torch.randn(2, 2), torch.rand(2), y=torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="UNet built for"):
        UNet()(torch.randn(2, 1, 16, 16), torch.rand(2))


class _LabelledOracle(torch.nn.Module):
    """Exact class-conditional denoiser: label k is mixture component k, the null label the whole mixture."""

    def __init__(self, gm: GaussianMixture):
        super().__init__()
        self.gm = gm
        self.parts = [GaussianMixture(gm.means[k:k + 1], gm.covs[k:k + 1]) for k in range(gm.n_components)]

    def forward(self, x, sigma, y):
        out = self.gm.denoise(x, sigma).clone()
        s = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        for k, part in enumerate(self.parts):
            m = y == k
            if bool(m.any()):
                out[m] = part.denoise(x[m], s[m])
        return out


def test_classifier_free_guidance_on_the_oracle():
    gm = ring()
    oracle = _LabelledOracle(gm)
    g = torch.Generator().manual_seed(0)
    x, y, sigma = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randint(0, 8, (64,), generator=g), 0.8
    d_c, d_u = oracle(x, sigma, y), oracle(x, sigma, torch.full((64,), 8))
    torch.testing.assert_close(ClassifierFree(oracle, 1.0, null_label=8)(x, sigma, y=y), d_c)
    torch.testing.assert_close(ClassifierFree(oracle, 0.0, null_label=8)(x, sigma, y=y), d_u)
    torch.testing.assert_close(ClassifierFree(oracle, 3.0, null_label=8)(x, sigma, y=y), d_u + 3 * (d_c - d_u))
    torch.testing.assert_close(ClassifierFree(oracle, 3.0, null_label=8)(x, sigma), d_u)
    # the guided score is the same combination of the two scores (D -> score is affine, label-free)
    guided = ClassifierFree(oracle, 2.0, null_label=8)(x, sigma, y=y)
    s_c, s_u = (d_c - x) / sigma**2, (d_u - x) / sigma**2
    torch.testing.assert_close((guided - x) / sigma**2, s_u + 2 * (s_c - s_u))


def test_classifier_free_reads_null_label_and_validates():
    den = Denoiser(_perturb(MLP(2, width=16, depth=1, num_classes=4)), VP(), "eps")
    cfg = ClassifierFree(den, 1.5)
    assert cfg.null_label == 4
    x = torch.randn(3, 2)
    assert cfg(x, torch.tensor([0.5, 1.0, 2.0]), y=torch.tensor([0, 1, 2])).shape == (3, 2)
    with pytest.raises(ValueError, match="guidance scale"):
        ClassifierFree(den, -1.0)
    with pytest.raises(ValueError, match="null label"):
        ClassifierFree(ring(), 2.0)
