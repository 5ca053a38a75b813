"""The adaptive sampler's exponential predictor-corrector against the exact flow of a mixture oracle."""

from __future__ import annotations

import math

import pytest
import torch

from diffusionlens.ode import StepControl, solve
from diffusionlens.oracle import random_mixture
from diffusionlens.samplers import SAMPLERS
from diffusionlens.samplers.adaptive import exp_pc_step, solve_exp_pc, solve_exp_rk32

GM = random_mixture(6, 5, seed=11)
S_MAX, S_MIN = 80.0, 0.002


def _exact(x: torch.Tensor, s_from: float, s_to: float) -> torch.Tensor:
    def f(t, y, idx):
        return y - GM(y, torch.exp(t))

    return solve(f, x, math.log(s_from), math.log(s_to), rtol=1e-11, atol=1e-11)[0]


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


@pytest.fixture(scope="module")
def noise_and_ref():
    x = torch.randn(16, GM.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * S_MAX
    return x, _exact(x, S_MAX, S_MIN)


def _exact_step(x, lam0, h, D_of, n=801):
    """e^{-h} x + int_0^h e^{-(h-s)} D(lam0 + s) ds by composite Simpson on n points."""
    s = torch.linspace(0, 1, n, dtype=torch.float64)[:, None] * h  # (n, batch)
    w = torch.ones(n, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    vals = torch.exp(-(h - s))[..., None] * torch.stack([D_of(lam0 + r) for r in s])  # (n, batch, 2)
    return torch.exp(-h)[:, None] * x + (w[:, None, None] * vals).sum(0) * (h / (3.0 * (n - 1)))[:, None]


@pytest.mark.parametrize("points", [3, 4])
def test_step_is_exact_for_polynomial_denoiser(points):
    """With D a polynomial in lambda of degree points - 1 (independent of x), predictor and corrector
    integrate it exactly on unequal steps of either sign; the estimate's order is points + 1."""
    coef = torch.tensor([0.3, -0.7, 0.2, 0.15][:points], dtype=torch.float64)

    def D_of(lam):  # (batch,) -> (batch, 2)
        v = sum(c * lam**j for j, c in enumerate(coef))
        return torch.stack([v, 2 * v], 1)

    lam0 = torch.tensor([-2.0, 0.5, 1.0], dtype=torch.float64)
    h = torch.tensor([0.4, 0.05, -0.3], dtype=torch.float64)
    back = tuple(-torch.tensor(b, dtype=torch.float64) for b in ([0.3, 0.07, -0.2], [0.55, 0.1, -0.5],
                                                                   [0.9, 0.2, -0.6])[:points - 1])
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0], [2.0, 1.0]], dtype=torch.float64)
    ds = (D_of(lam0),) + tuple(D_of(lam0 + b) for b in back)
    hist = torch.full((3,), points)
    x_corr, x_pred, _, order = exp_pc_step(x, h, ds, back, hist, lambda y: D_of(lam0 + h))
    exact = _exact_step(x, lam0, h, D_of)
    assert torch.allclose(x_pred, exact, atol=1e-12) and torch.allclose(x_corr, exact, atol=1e-12)
    assert order.tolist() == [points + 1] * 3


def test_short_history_stays_exact_whatever_the_previous_steps():
    """With one previous point the predictor is the line through D_n, D_{n-1}, whatever that point's
    offset (here -2h, -3h: where stand-in nodes for the missing points could have fallen); linear D
    is integrated exactly and nothing turns non-finite."""
    def D_of(lam):
        return torch.stack([0.4 - 0.3 * lam, 1.0 + 0.2 * lam], 1)

    lam0, h = torch.tensor([0.2, -1.0], dtype=torch.float64), torch.tensor([0.1, 0.25], dtype=torch.float64)
    back = (-torch.tensor([2.0, 3.0], dtype=torch.float64) * h, -4 * h, -5 * h)
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    ds = (D_of(lam0),) + tuple(D_of(lam0 + b) for b in back)
    x_corr, x_pred, _, order = exp_pc_step(x, h, ds, back, torch.tensor([1, 1]), lambda y: D_of(lam0 + h))
    exact = _exact_step(x, lam0, h, D_of)
    assert torch.allclose(x_pred, exact, atol=1e-12) and torch.allclose(x_corr, exact, atol=1e-12)
    assert order.tolist() == [3, 3]


def test_step_order_on_a_smooth_denoiser():
    """The predictor's local error falls as h^5 (cubic through four points, spacing fixed in units
    of h) and the corrector's faster: the 4(5) pair's error estimate has order 5."""
    def D_of(lam):
        return torch.stack([torch.sin(lam), torch.exp(0.5 * lam)], 1)

    lam0, x = torch.tensor([0.3], dtype=torch.float64), torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    errs = []
    for h in (0.1, 0.05, 0.025):
        hh = torch.tensor([h], dtype=torch.float64)
        back = (-0.8 * hh, -1.9 * hh, -2.7 * hh)
        ds = (D_of(lam0),) + tuple(D_of(lam0 + b) for b in back)
        xc, xp, _, _ = exp_pc_step(x, hh, ds, back, torch.tensor([3]), lambda y, _h=hh: D_of(lam0 + _h))
        exact = _exact_step(x, lam0, hh, D_of)
        errs.append(((xp - exact).abs().max().item(), (xc - exact).abs().max().item()))
    for (p0, _), (p1, c1) in zip(errs, errs[1:]):
        assert 4.5 < math.log2(p0 / p1) < 5.5, errs  # local error O(h^5)
        assert c1 < p1 / 3, errs


def test_converges_and_meets_tolerance(noise_and_ref):
    """The global error falls with the tolerance, about in proportion, and every sample ends within a
    small multiple of it: each accepted step's estimate is at most the tolerance (relative to
    1 + |x|, |x| ~ 1 at the end), Milne's estimate exceeds the corrector's own error, and the steps'
    errors add up over a few tens of steps with little growth."""
    x, ref = noise_and_ref
    tols = (1e-3, 1e-4, 1e-5)
    errs, nfes = [], []
    for tol in tols:
        y, nfe = solve_exp_pc(GM, x, S_MAX, S_MIN, rtol=tol, atol=tol)
        per_sample = (y - ref).pow(2).mean(1).sqrt()
        assert per_sample.max() < 5 * tol, (tol, per_sample.max())
        errs.append(_rms(y, ref))
        nfes.append(nfe.double().mean().item())
    assert errs[0] > errs[1] > errs[2], errs
    assert nfes[0] < nfes[1] < nfes[2], nfes
    # tolerance proportionality: error ~ tol^p with p near 1 (error-per-step control, local extrapolation)
    p = math.log(errs[1] / errs[2]) / math.log(10.0)
    assert 0.5 < p < 1.5, (errs, p)


def test_controller_accepts_and_rejects_sensibly(noise_and_ref):
    """Step control on the oracle: the accepted steps' error estimates sit near the controller's
    target safety^q (0.7^5 once the 4(5) form is reached), rejections are rare, and the step count
    grows as tol^(-1/5) (steps h ~ tol^(1/q), q = 5) once the fixed start-up steps are a small part."""
    x, _ = noise_and_ref
    nfes = []
    for tol in (1e-5, 1e-6):
        trace = []
        _, nfe = solve_exp_pc(GM, x, S_MAX, S_MIN, rtol=tol, atol=tol, trace=trace)
        errs = torch.cat([t[2] for t in trace])
        accepted = errs.numel()
        trials = int(nfe.sum()) - x.shape[0]  # one evaluation per trial after the first at sigma_max
        assert bool((errs <= 1).all())
        assert 0.4 * 0.7**5 < errs.median().item() < 2.5 * 0.7**5, errs.median()
        assert trials - accepted < 0.1 * trials, (trials, accepted)
        nfes.append(nfe.double().mean().item())
    assert 10 ** (1 / 7) < nfes[1] / nfes[0] < 10 ** (1 / 4), nfes


def test_samples_are_independent_of_the_batch(noise_and_ref):
    x, _ = noise_and_ref
    y, nfe = solve_exp_pc(GM, x, S_MAX, S_MIN, rtol=1e-4, atol=1e-4)
    y1, nfe1 = solve_exp_pc(GM, x[3:4], S_MAX, S_MIN, rtol=1e-4, atol=1e-4)
    assert int(nfe1[0]) == int(nfe[3])
    assert torch.allclose(y1[0], y[3], rtol=0, atol=1e-10)


def test_sampler_default_and_final_denoise(noise_and_ref):
    """sample -> 0 ends with one Tweedie step; the NFE per sample reaches the callback."""
    x, ref = noise_and_ref
    info = {}
    out = SAMPLERS["adaptive"](GM, x, torch.tensor([S_MAX, S_MIN, 0.0]), rtol=1e-5, atol=1e-5, callback=info.update)
    assert _rms(out, GM(ref, S_MIN)) < 1e-4
    y, nfe = solve_exp_pc(GM, x, S_MAX, S_MIN, rtol=1e-5, atol=1e-5)
    assert torch.equal(info["nfe"], nfe + 1)


def test_round_trip():
    g = torch.Generator().manual_seed(2)
    x0 = GM.sample(8, g) + 0.05 * torch.randn(8, GM.dim, generator=g, dtype=torch.float64)
    up = torch.tensor([0.05, 80.0], dtype=torch.float64)
    z = SAMPLERS["adaptive"](GM, x0, up, rtol=1e-6, atol=1e-6)
    assert _rms(z, _exact(x0, 0.05, 80.0)) < 1e-4 * 80.0
    assert _rms(SAMPLERS["adaptive"](GM, z, up.flip(0), rtol=1e-6, atol=1e-6), x0) < 1e-4


def test_fewer_evaluations_than_the_rk_pair_at_equal_error(noise_and_ref):
    """The reason the predictor-corrector is the default: at a tolerance where it is at least as
    accurate as the exponential RK 3(2) pair at 1e-4, it spends fewer evaluations."""
    x, ref = noise_and_ref
    y_rk, n_rk = solve_exp_rk32(GM, x, S_MAX, S_MIN, rtol=1e-4, atol=1e-4)
    e_rk = _rms(y_rk, ref)
    for tol in (1e-4, 3e-5, 1e-5):
        y, n = solve_exp_pc(GM, x, S_MAX, S_MIN, rtol=tol, atol=tol)
        if _rms(y, ref) <= e_rk:
            assert n.double().mean() < n_rk.double().mean(), (tol, n.double().mean(), n_rk.double().mean())
            return
    pytest.fail(f"pc did not reach the RK pair's error {e_rk:.2e} by tol 1e-5")


def test_bad_tolerance_and_control():
    x = torch.zeros(2, GM.dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="rtol"):
        solve_exp_pc(GM, x, S_MAX, S_MIN, rtol=0.0, atol=1e-3)
    with pytest.raises(ValueError, match="points"):
        solve_exp_pc(GM, x, S_MAX, S_MIN, rtol=1e-3, atol=1e-3, points=1)
    with pytest.raises(ValueError, match="fac_min"):
        StepControl(1e-3, 1e-3, 3, fac_min=2.0)
