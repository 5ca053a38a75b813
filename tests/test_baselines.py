"""Reference bits/dim: a uniform model and an independent per-pixel histogram."""

import math

import pytest
import torch

from diffusionlens.evaluate import pixel_baselines


def _images(k: torch.Tensor, levels: int) -> torch.Tensor:
    return (k.double() * 2 / (levels - 1) - 1).reshape(k.shape[0], 1, 2, 2)


def test_histogram_tends_to_the_entropy_of_independent_pixels():
    levels, n = 5, 20000
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.1], [0.9, 0.025, 0.025, 0.025, 0.025],
                          [0.2] * 5, [0.7, 0.3, 0.0, 0.0, 0.0]], dtype=torch.float64)

    def draw():
        return torch.stack([torch.multinomial(p, n, replacement=True, generator=g) for p in probs], 1)

    entropy = float(-(probs * probs.clamp_min(1e-300).log()).sum() / (4 * math.log(2)))
    b = pixel_baselines(_images(draw(), levels), _images(draw(), levels), levels=levels)
    assert b["uniform"] == math.log2(levels)
    # Laplace smoothing biases by O(levels / n) nats; the rest is Monte-Carlo error of the test mean
    assert abs(b["histogram"] - entropy) < 4 * b["histogram_stderr"] + levels / n
    assert b["histogram"] < b["uniform"]


def test_unseen_level_costs_finite_bits_and_bad_input_is_named():
    levels = 3
    train = _images(torch.zeros(10, 4, dtype=torch.long), levels)
    test = _images(torch.full((2, 4), 2, dtype=torch.long), levels)
    b = pixel_baselines(train, test, levels=levels)
    assert b["histogram"] == pytest.approx(math.log2(13), rel=1e-12)   # 1 / (10 + 3) per pixel
    with pytest.raises(ValueError, match="3-level grid"):
        pixel_baselines(train + 0.1, test, levels=levels)
    with pytest.raises(ValueError, match="levels"):
        pixel_baselines(train, test, levels=1)
