"""Analog bits: round trip, and the continuous samplers on the exact analog-bit oracle reproduce the
discrete oracle's distribution after thresholding."""

import pytest
import torch

from diffusionlens.discrete import analog, random_mixture
from diffusionlens.discrete.oracle import all_sequences


def test_encode_decode_round_trip_and_clamp():
    x = torch.arange(17).reshape(1, 17)
    a = analog.encode(x, 17)
    assert a.shape == (1, 17, 5) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(analog.decode(a, 17), x)
    assert int(analog.decode(torch.ones(1, 1, 5), 17)) == 16  # code 31 is clamped to V - 1
    assert analog.bits(2) == 1 and analog.bits(96) == 7


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m_sde"])
def test_continuous_samplers_on_analog_bits_match_the_discrete_oracle(sampler):
    mix = random_mixture(2, (2,), 3, torch.Generator().manual_seed(0))
    gm = analog.gaussian_oracle(mix)
    n = 2000
    x = analog.sample(gm, n, (2,), 3, sampler=sampler, steps=16, generator=torch.Generator().manual_seed(1))
    p = mix.log_prob(all_sequences(3, (2,))).exp()
    freq = torch.bincount((x * torch.tensor([3, 1])).sum(1), minlength=9).double() / n
    tol = 1.5 * float((p * (1 - p) / n).sqrt().sum())  # 3x the expected total variation of n draws
    assert 0.5 * float((freq - p).abs().sum()) < tol


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="token 3 is outside the vocabulary 0..2"):
        analog.encode(torch.tensor([[3]]), 3)
    with pytest.raises(ValueError, match="2 values per token"):
        analog.decode(torch.zeros(1, 1, 3), 3)


def test_analog_bits_train_through_the_loop_and_sample_with_any_sampler(tmp_path):
    from diffusionlens.data import load_dataset
    from diffusionlens.objectives import Batch, Streams, build_objective
    from diffusionlens.training import TrainConfig, train

    cfg = analog.config(TrainConfig(dataset="digits17", steps=2, batch_size=8, ckpt_every=0, log_every=1))
    assert cfg.net["in_channels"] == 5 and cfg.net["self_condition"] and cfg.sigma_data == 1.0
    data = load_dataset("digits17", "train", n=8)
    seen = []

    def model(x, sigma, **cond):  # the denoising loss's view of the batch: the bits, as channels
        seen.append(x)
        return torch.zeros_like(x)

    build_objective(cfg.replace(net={**cfg.net, "self_condition": False}), data)(model, Batch(data.x), Streams(0))
    assert seen[0].shape == (8, 5, 8, 8)
    train(cfg.replace(net={**cfg.net, "channels": 16}), tmp_path / "bits", progress=False)
    for sampler in ("euler", "dpmpp_2m"):
        x = analog.sample_run(tmp_path / "bits", 3, sampler=sampler, steps=2, batch_size=2)
        assert x.shape == (3, 8, 8) and x.dtype == torch.int64 and 0 <= int(x.min()) and int(x.max()) <= 16


def test_the_objective_refuses_what_it_cannot_train():
    from diffusionlens.data import load_dataset
    from diffusionlens.objectives import build_objective
    from diffusionlens.training import TrainConfig

    cfg = analog.config(TrainConfig(dataset="digits17"))
    data = load_dataset("digits17", "test", n=4)
    with pytest.raises(ValueError, match="sigma_data = 1, got 0.5"):
        build_objective(cfg.replace(sigma_data=0.5), data)
    with pytest.raises(ValueError, match=r"input shape \[5, 8, 8\], got 'token-transformer'"):
        build_objective(cfg.replace(net={"kind": "token-transformer"}), data)
    with pytest.raises(ValueError, match="needs token data"):
        build_objective(cfg, load_dataset("digits", "test", n=4))
    with pytest.raises(ValueError, match="need a token data set"):
        analog.config(TrainConfig(dataset="digits"))


def test_the_cli_trains_an_analog_bits_run_and_sample_points_to_its_sampler(tmp_path, capsys):
    """`train --objective analog-bits` gets the bits-as-channels network and sigma_data 1 without a config file;
    `sample` refuses the run in one line naming the sampler that reads it."""
    from diffusionlens.cli import main

    run = tmp_path / "ab"
    assert main(["train", "--dataset", "digits17", "--objective", "analog-bits", "--steps", "2", "--batch-size",
                 "8", "--run-dir", str(run), "--quiet", "--ckpt-every", "0"]) == 0
    x = analog.sample_run(run, 3, steps=2)
    assert x.shape == (3, 8, 8) and int(x.min()) >= 0 and int(x.max()) < 17
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "analog.sample_run" in err[0]
