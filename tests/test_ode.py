"""The adaptive Runge-Kutta integrator: accuracy tracks the tolerance, samples are independent."""

import pytest
import torch

from diffusionlens.ode import Method, solve

LAM = torch.tensor([0.5, 1.0, 4.0, 10.0], dtype=torch.float64)


def rhs(t, y, idx):
    return -LAM[idx, None] * t[:, None] * y  # y(t) = y0 exp(-lam t^2 / 2)


@pytest.mark.parametrize("method", list(Method))
def test_error_tracks_tolerance(method):
    errs = []
    for tol in [1e-4, 1e-7]:
        y, info = solve(rhs, torch.ones(4, 1, dtype=torch.float64), 0.0, 2.0, rtol=tol, atol=tol, method=method)
        errs.append((y[:, 0] - torch.exp(-2 * LAM)).abs().max().item())
        assert bool((info.nfe == info.accepted * (len(method.tableau.c) - 1) + info.rejected
                     * (len(method.tableau.c) - 1) + 2).all())  # FSAL: s-1 new stages a step, +2 at start
    # global error is about proportional to the tolerance (within a factor 100 of it, and it falls)
    assert errs[0] < 100 * 1e-4 and errs[1] < 100 * 1e-7 and errs[1] < errs[0] / 50


def test_backwards_and_per_sample_spans():
    y0 = torch.ones(4, 1, dtype=torch.float64)
    t1 = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    y, _ = solve(rhs, y0, 0.0, t1, rtol=1e-9, atol=1e-9)
    # mixed error control: about rtol |y| + atol per unit of t, times a modest global factor
    torch.testing.assert_close(y[:, 0], torch.exp(-LAM * t1**2 / 2), rtol=1e-7, atol=1e-8)
    # backwards from the exact end values (the forward result's absolute error would be amplified e^20-fold)
    back, _ = solve(rhs, torch.exp(-LAM * t1**2 / 2)[:, None], t1, 0.0, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(back, y0, rtol=1e-6, atol=1e-8)


def test_result_does_not_depend_on_the_batch():
    y0 = torch.ones(4, 3, dtype=torch.float64)
    full, info = solve(rhs, y0, 0.0, 2.0, rtol=1e-6, atol=1e-6)
    for i in range(4):
        alone, info_i = solve(lambda t, y, idx, i=i: rhs(t, y, idx + i), y0[i : i + 1], 0.0, 2.0, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(alone, full[i : i + 1], rtol=0, atol=0)
        assert info_i.nfe.item() == info.nfe[i].item()


def test_stiffer_samples_take_more_steps():
    _, info = solve(rhs, torch.ones(4, 1, dtype=torch.float64), 0.0, 2.0, rtol=1e-6, atol=1e-6)
    assert info.nfe[0] < info.nfe[-1]


def test_errors():
    with pytest.raises(FloatingPointError, match="t="):
        solve(lambda t, y, idx: y / (1 - t[:, None]), torch.ones(2, 1), 0.0, 2.0)
    with pytest.raises(RuntimeError, match="max_steps"):
        solve(lambda t, y, idx: torch.cos(1e4 * t[:, None]) * torch.ones_like(y), torch.ones(1, 1,
              dtype=torch.float64), 0.0, 10.0, rtol=1e-10, atol=1e-10, max_steps=50)
    with pytest.raises(ValueError, match="rtol"):
        solve(rhs, torch.ones(4, 1), 0.0, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match="'rk4'"):
        solve(rhs, torch.ones(4, 1), 0.0, 1.0, method="rk4")


def test_zero_span_is_identity():
    y0 = torch.randn(3, 2, dtype=torch.float64)
    y, info = solve(lambda t, y, idx: y, y0, 1.0, 1.0)
    torch.testing.assert_close(y, y0)
    assert int(info.nfe.sum()) == 0


@pytest.mark.parametrize("method", list(Method))
def test_quadrature_components_are_skipped_only_where_unused(method):
    """y' = -lam t y with the integral q' = y^2 (never feeding back): with quadrature=True the second
    Dormand-Prince stage gets need_quadrature=False, and whatever f returns for q there (here 1e6), the
    result is bit-identical to evaluating q at every stage; Bogacki-Shampine has no such stage."""
    seen = []

    def full(t, y, idx):
        dy = -LAM[idx, None] * t[:, None] * y[:, :1]
        return torch.cat([dy, y[:, :1] ** 2], 1)

    def lazy(t, y, idx, need):
        seen.append(need)
        out = full(t, y, idx)
        return out if need else torch.cat([out[:, :1], torch.full_like(out[:, 1:], 1e6)], 1)

    y0 = torch.ones(4, 2, dtype=torch.float64)
    a, ia = solve(full, y0, 0.0, 2.0, rtol=1e-7, atol=1e-7, method=method)
    b, ib = solve(lazy, y0, 0.0, 2.0, rtol=1e-7, atol=1e-7, method=method, quadrature=True)
    assert torch.equal(a, b) and torch.equal(ia.nfe, ib.nfe)
    skipped = seen.count(False)
    if method is Method.DOPRI5:
        assert skipped == int((ib.accepted + ib.rejected).max())  # one stage of six per step, batched
    else:
        assert skipped == 0


def test_step_control_factor():
    """clip(safety err^(-1/q), fac_min, fac_max), at most 1 after a rejection; the PI term multiplies
    by (err_prev / err)^(pi / q); a per-sample order overrides q."""
    from diffusionlens.ode import StepControl

    ctl = StepControl(1e-3, 1e-3, 3)
    en = torch.tensor([1e-12, 0.5, 1.0, 4.0, 1e6], dtype=torch.float64)
    ok, fac = ctl.update(en)
    expect = torch.clamp(0.9 * en.clamp_min(1e-10) ** (-1 / 3), 0.2, 10.0)
    expect = torch.where(en <= 1, expect, expect.clamp(max=1.0))
    assert ok.tolist() == [True, True, True, False, False]
    assert torch.allclose(fac, expect, rtol=1e-15, atol=0)
    pi = StepControl(1e-3, 1e-3, 3, pi=0.4, safety=0.8)
    prev = torch.full_like(en, 0.25)
    _, fac_pi = pi.update(en[1:3], prev[1:3])
    assert torch.allclose(fac_pi, 0.8 * en[1:3] ** (-1 / 3) * (0.25 / en[1:3]) ** (0.4 / 3), rtol=1e-14)
    _, fac_q = ctl.update(en[1:2], order=torch.tensor([2]))
    assert torch.allclose(fac_q, 0.9 * en[1:2] ** -0.5, rtol=1e-14)
    # the norm: RMS of err / (atol + rtol max(|y0|, |y1|)) per sample
    y0, y1 = torch.tensor([[1.0, -3.0]]), torch.tensor([[2.0, 1.0]])
    n = ctl.norm(torch.tensor([[1e-3, 1e-3]]), y0, y1)
    sc = 1e-3 + 1e-3 * torch.tensor([2.0, 3.0])
    assert torch.allclose(n.float(), (1e-3 / sc).pow(2).mean().sqrt().reshape(1), rtol=1e-6)
    with pytest.raises(ValueError, match="rtol"):
        StepControl(-1.0, 1e-3, 3)
