"""Where a grid stops: the last positive level chosen on the pilot (diffusionlens.samplers.stop_grid)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusionlens.oracle import GaussianMixture, random_mixture
from diffusionlens.processes import karras_grid, logsnr_grid
from diffusionlens.samplers import (
    ORDER,
    SAMPLERS,
    AnalyticStart,
    ErrorDensity,
    data_mean,
    error_density,
    sample,
    stop_candidates,
    stop_grid,
    tune,
)
from diffusionlens.samplers.adaptive import solve_exp_rk32
from diffusionlens.samplers.fitted import FINALISTS


def _gaussian(s: float, d: int = 4) -> GaussianMixture:
    return GaussianMixture(torch.zeros(1, d, dtype=torch.float64), torch.full((1,), s**2, dtype=torch.float64),
                           torch.ones(1, dtype=torch.float64))


def test_candidates_and_grid_structure():
    c = stop_candidates(0.002, 80.0)
    assert c[0] == 0.002 and len(c) == 19 and c[-1] < 80.0
    r = [b / a for a, b in zip(c, c[1:])]
    assert max(r) / min(r) < 1 + 1e-12  # log-uniform
    gm = random_mixture(4, 3, seed=5)
    dens = error_density(gm, (4,), 0.01, 50.0, dtype=torch.float64)
    assert dens.pilot_noise.shape == (64, 4) and dens.pilot_x0.shape == (64, 4)
    # the pilot's reference is its own solve followed by the Tweedie step
    x_end, _ = solve_exp_rk32(gm, dens.pilot_noise * 50.0, 50.0, 0.01, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(dens.pilot_x0, gm(x_end, 0.01), rtol=0, atol=0)
    g, errs = stop_grid(gm, dens, "deis", 8, return_errors=True)
    assert g.shape == (9,) and g[0].item() == 50.0 and g[-1].item() == 0.0 and bool((g[1:] < g[:-1]).all())
    last = g[-2].item()
    assert last in errs and errs[last] == min(errs.values()) and len(errs) == len(stop_candidates(0.01, 50.0))
    # the fitted family cut at sigma_last: its density's grid over [sigma_last, sigma_max]
    torch.testing.assert_close(g, dens.grid(8, ORDER["deis"], sigma_last=last), rtol=0, atol=0)
    # only sigma_min as a candidate: the plain fitted grid
    only = stop_grid(gm, dens, "deis", 8, candidates=[0.01])
    torch.testing.assert_close(only, dens.grid(8, ORDER["deis"]), rtol=0, atol=0)
    for base, fn in (("karras", karras_grid), ("logsnr", logsnr_grid)):
        gb = stop_grid(gm, dens, "unipc", 6, base=base)
        torch.testing.assert_close(gb, fn(6, gb[-2].item(), 50.0), rtol=0, atol=0)
    assert torch.equal(stop_grid(gm, dens, "euler", 1), torch.tensor([50.0, 0.0], dtype=torch.float64))


def test_cut_density_grid_matches_the_restricted_integral():
    """grid(sigma_last=c) places the levels at equal quantiles of the density integrated over
    [-log sigma_max, -log c] only: with a flat density that is the log-SNR grid from sigma_max to c."""
    dens = error_density(lambda x, s: torch.zeros_like(x), (3,), 0.01, 50.0, dtype=torch.float64)
    for c in (0.01, 0.0377, 1.3):
        torch.testing.assert_close(dens.grid(7, sigma_last=c), logsnr_grid(7, c, 50.0), rtol=1e-12, atol=0)


def test_chooses_the_closed_form_optimum_on_a_gaussian():
    """N(0, s^2 I) with one Euler step sigma_max -> c, then the jump D(., c) to 0: everything is linear in
    the noise z, out = a(c) z with a(c) = (sigma_max - (sigma_max - c) sigma_max^2/(s^2 + sigma_max^2)) s^2/(s^2 + c^2),
    while the pilot's reference (the exact flow to sigma_min, then D(., sigma_min)) is
    a* z = s sigma_max / sqrt(s^2 + sigma_max^2) * s / sqrt(s^2 + sigma_min^2) z. The pilot error is
    |a(c) - a*| rms(z) for every candidate, so the chosen c is the closed-form argmin whatever the pilot noise."""
    s, smax = 1.0, 80.0
    gm = _gaussian(s)
    dens = error_density(gm, (4,), 0.002, smax, tol=1e-9, dtype=torch.float64)
    smin = 0.002
    exact = s * smax / math.sqrt(s * s + smax * smax) * s / math.sqrt(s * s + smin * smin)

    def a(c: float) -> float:
        return (smax - (smax - c) * smax**2 / (s * s + smax**2)) * s * s / (s * s + c * c)

    cands = stop_candidates(smin, smax)
    want = min(cands, key=lambda c: abs(a(c) - exact))
    g, errs = stop_grid(gm, dens, "euler", 2, return_errors=True)
    assert g[-2].item() == want and 0.1 < want < 10  # an interior optimum, near the data's scale s
    rms_z = dens.pilot_noise.pow(2).mean().sqrt().item()
    for c, e in errs.items():  # the reference is exact to the pilot's tolerance
        assert abs(e - abs(a(c) - exact) * rms_z) < 1e-7


def test_stopping_early_helps_at_few_steps_on_held_out_noise():
    """On a d = 16 mixture at 8 steps, the chosen last level (measured on the pilot) lowers the error against
    the exact flow on independent noise, against the same sampler on the fitted grid to sigma_min."""
    gm = random_mixture(16, 10, seed=16)
    dens = error_density(gm, (16,), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noise = torch.randn(128, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_ref, _ = solve_exp_rk32(gm, noise * 80.0, 80.0, 1e-4, rtol=1e-8, atol=1e-8)
    ref = gm(x_ref, 1e-4)
    stop = stop_grid(gm, dens, "unipc", 8)
    plain = dens.grid(8, ORDER["unipc"])
    e_stop = (SAMPLERS["unipc"](gm, noise * 80.0, stop) - ref).pow(2).mean().sqrt().item()
    e_plain = (SAMPLERS["unipc"](gm, noise * 80.0, plain) - ref).pow(2).mean().sqrt().item()
    assert stop[-2].item() > 0.01 and e_stop < 0.7 * e_plain
    # with many steps the optimum moves down towards sigma_min
    assert stop_grid(gm, dens, "unipc", 32)[-2].item() < stop[-2].item()


def test_sample_with_fitted_stop():
    gm = random_mixture(4, 3, seed=5)
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, info = sample(gm, noise, sampler="deis", steps=6, grid="fitted-stop", return_info=True)
    assert info.nfe == 6
    dens = error_density(gm, (4,), dtype=torch.float64)
    torch.testing.assert_close(info.sigmas, stop_grid(gm, dens, "deis", 6), rtol=0, atol=0)
    torch.testing.assert_close(x, sample(gm, noise, sampler="deis", grid=info.sigmas), rtol=0, atol=0)


def test_bad_inputs_raise_naming_the_value():
    gm = random_mixture(4, 3, seed=5)
    dens = error_density(gm, (4,), 0.01, 50.0, pilot=8, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma_last"):
        dens.grid(4, sigma_last=50.0)
    with pytest.raises(ValueError, match="got 0.001"):
        stop_grid(gm, dens, "deis", 4, candidates=[0.001])
    with pytest.raises(ValueError, match="unknown stop base 'cosine'"):
        stop_grid(gm, dens, "deis", 4, base="cosine")
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        stop_grid(gm, dens, "nope", 4)
    with pytest.raises(ValueError, match="without pilot solutions"):
        stop_grid(gm, ErrorDensity.average([dens, dens]), "deis", 4)
    other = error_density(gm, (4,), 0.02, 50.0, pilot=8, dtype=torch.float64)
    with pytest.raises(ValueError, match="differs"):
        stop_grid(gm, dens, "deis", 4, pilots=[(gm, other)])


def test_pooled_pilots_for_conditional_models():
    """One pilot per condition, each run with its own denoiser, errors pooled over all of them; the grid
    family comes from the averaged density."""
    a, b = random_mixture(4, 3, seed=5), random_mixture(4, 3, seed=6)
    da = error_density(a, (4,), pilot=16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    db = error_density(b, (4,), pilot=16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    avg = ErrorDensity.average([da, db])
    _, errs = stop_grid(None, avg, "deis", 6, base="karras", pilots=[(a, da), (b, db)], return_errors=True)
    _, ea = stop_grid(a, da, "deis", 6, base="karras", return_errors=True)
    _, eb = stop_grid(b, db, "deis", 6, base="karras", return_errors=True)
    for c in errs:  # equal pilot sizes: the pooled RMS is the root of the mean of the two mean squares
        assert abs(errs[c] - math.sqrt((ea[c] ** 2 + eb[c] ** 2) / 2)) < 1e-12 * max(1.0, errs[c])
    # the candidates' grids are the averaged density's
    g = stop_grid(None, avg, "deis", 6, pilots=[(a, da), (b, db)])
    torch.testing.assert_close(g, avg.grid(6, ORDER["deis"], sigma_last=g[-2].item()), rtol=0, atol=0)


def test_screened_search_measures_its_finalists_on_the_whole_pilot():
    """stop_grid(screen=k) ranks every candidate on k pilot samples and decides among the best FINALISTS on the
    whole pilot: their errors are the exhaustive search's (the same sums over the same samples), the grid is
    theirs with the smallest, and a screen as large as the pilot is the exhaustive search itself."""
    gm = random_mixture(8, 6, seed=11)
    dens = error_density(gm, (8,), pilot=64, dtype=torch.float64)
    full_g, full = stop_grid(gm, dens, "unipc", 6, analytic_start=True, return_errors=True)
    g, errs = stop_grid(gm, dens, "unipc", 6, analytic_start=True, return_errors=True, screen=16)
    assert len(errs) == FINALISTS
    for c, e in errs.items():
        assert abs(e - full[c]) < 1e-12 * full[c]
    assert g[-2].item() == min(errs, key=errs.get)
    same_g, same = stop_grid(gm, dens, "unipc", 6, analytic_start=True, return_errors=True, screen=64)
    assert same == full and torch.equal(same_g, full_g)
    with pytest.raises(ValueError, match="screen"):
        stop_grid(gm, dens, "unipc", 6, screen=0)


def test_tuned_budgets_keep_the_exhaustive_optimum_on_a_mixture():
    """tune searches each larger budget only at or below the previous stop (one candidate of margin): on an
    oracle mixture the exhaustive optimum at every budget lies in that narrowed set, so the tuned grids are
    the exhaustive ones."""
    gm = random_mixture(16, 10, seed=16)
    nfes = (4, 6, 10, 16)
    plan = tune(gm, (16,), ("unipc",), nfes, pilot=64, screen=None, dtype=torch.float64)
    dens = error_density(gm, (16,), pilot=64, dtype=torch.float64)
    for nfe in nfes:
        t = plan.tuned[("unipc", nfe)]
        _, plain = stop_grid(gm, dens, "unipc", t.steps, analytic_start=True, return_errors=True)
        _, tele = stop_grid(gm, dens, "unipc", t.steps, analytic_start=True, return_errors=True,
                            teleport=plan.gaussian)
        assert t.pilot_rmse == min(min(plain.values()), min(tele.values())), nfe


# ----------------------------------------------------------------------------- analytic start


def test_data_mean_is_the_mean_within_its_monte_carlo_error():
    """N(m, s^2 I): D(x, sigma) - m = s^2 / (s^2 + sigma^2) (x - m) with x - m ~ N(0, (s^2 + sigma^2) I), so the
    pilot mean of D is m with per-coordinate standard error s^2 / sqrt(s^2 + sigma^2) / sqrt(P)."""
    s, d, P = 2.0, 6, 64
    m = torch.linspace(-1.0, 1.5, d, dtype=torch.float64)
    gm = GaussianMixture(m[None], torch.full((1,), s * s, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    est = data_mean(gm, (d,), 80.0, pilot=P, dtype=torch.float64)
    se = s * s / math.sqrt(s * s + 80.0**2) / math.sqrt(P)
    assert est.shape == (d,) and float((est - m).abs().max()) < 5 * se
    dens = error_density(gm, (d,), dtype=torch.float64)
    assert float((dens.data_mean - m).abs().max()) < 5 * se


def test_analytic_start_saves_one_evaluation_and_changes_little():
    """The first evaluation is replaced by the mean: NFE = steps - 1, and the result moves by no more than the
    replaced error D(x, sigma_max) - mean itself (the first step weights it by 1 - sigma_1/sigma_max <= 1 and
    the flow below contracts it); with one step more for the same NFE it is closer to the exact flow."""
    gm = random_mixture(16, 10, seed=16)
    noise = torch.randn(128, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = data_mean(gm, (16,), dtype=torch.float64)
    x_ref, _ = solve_exp_rk32(gm, noise * 80.0, 80.0, 1e-4, rtol=1e-8, atol=1e-8)
    ref = gm(x_ref, 1e-4)

    def rms(v):
        return v.pow(2).mean().sqrt().item()

    plain9, i9 = sample(gm, noise, sampler="deis", steps=9, return_info=True)
    afs9, a9 = sample(gm, noise, sampler="deis", steps=9, analytic_start=True, data_mean=mean, return_info=True)
    plain8 = sample(gm, noise, sampler="deis", steps=8)
    assert i9.nfe == 9 and a9.nfe == 8
    replaced = gm(noise * 80.0, torch.full((128,), 80.0, dtype=torch.float64)) - mean
    assert rms(afs9 - plain9) <= rms(replaced)
    assert rms(afs9 - ref) < rms(plain8 - ref)
    # the same through a denoiser wrapper, and the mean from a one-call pilot by default
    torch.testing.assert_close(SAMPLERS["deis"](AnalyticStart(gm, mean, 80.0), noise * 80.0, i9.sigmas), afs9,
                               rtol=0, atol=0)
    _, info = sample(gm, noise, sampler="unipc", steps=6, analytic_start=True, return_info=True)
    assert info.nfe == 5


def test_stop_chosen_for_the_analytic_start():
    gm = random_mixture(4, 3, seed=5)
    dens = error_density(gm, (4,), dtype=torch.float64)
    g, errs = stop_grid(gm, dens, "unipc", 6, analytic_start=True, return_errors=True)
    x = SAMPLERS["unipc"](AnalyticStart(gm, dens.data_mean, 80.0), dens.pilot_noise * 80.0, g)
    assert abs((x - dens.pilot_x0).pow(2).mean().sqrt().item() - min(errs.values())) < 1e-12
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, info = sample(gm, noise, sampler="unipc", steps=6, grid="fitted-stop", analytic_start=True, return_info=True)
    assert info.nfe == 5 and torch.equal(info.sigmas, g)
    with pytest.raises(ValueError, match="mean must have the shape"):
        sample(gm, noise, analytic_start=True, data_mean=torch.zeros(3))
    with pytest.raises(ValueError, match="adaptive"):
        sample(gm, noise, sampler="adaptive", analytic_start=True)
    with pytest.raises(ValueError, match="data_mean"):
        stop_grid(gm, ErrorDensity(dens.sigma_min, dens.sigma_max, dens.mesh, dens.n, 1.0, dens.pilot_noise,
                                   dens.pilot_x0), "deis", 4, analytic_start=True)


def test_a_candidate_on_which_the_sampler_diverges_is_skipped():
    gm = random_mixture(4, 3, seed=5)
    dens = error_density(gm, (4,), pilot=8, dtype=torch.float64)

    def fragile(x, sigma):  # non-finite below sigma 0.05: a grid stopping lower makes the sampler raise
        out = gm(x, sigma)
        return out if float(torch.as_tensor(sigma).min()) >= 0.05 else out * float("nan")

    g, errs = stop_grid(fragile, dens, "euler", 4, base="logsnr", candidates=[0.002, 0.01, 0.1, 0.5],
                        return_errors=True)
    assert errs[0.002] == errs[0.01] == math.inf and math.isfinite(errs[0.1]) and g[-2].item() in (0.1, 0.5)
    with pytest.raises(FloatingPointError, match="every candidate"):
        stop_grid(fragile, dens, "euler", 4, base="logsnr", candidates=[0.002, 0.01])


def test_analytic_start_replaces_only_the_first_evaluation_and_needs_two_steps():
    gm = random_mixture(4, 3, seed=5)
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = data_mean(gm, (4,), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    # annealed Langevin evaluates every level 10 times: only the very first evaluation is replaced
    _, plain = sample(gm, noise, sampler="langevin", steps=6, generator=g, return_info=True)
    _, afs = sample(gm, noise, sampler="langevin", steps=6, generator=torch.Generator().manual_seed(0),
                    analytic_start=True, data_mean=mean, return_info=True)
    assert afs.nfe == plain.nfe - 1
    with pytest.raises(ValueError, match="at least 2 steps"):
        sample(gm, noise, steps=1, analytic_start=True, data_mean=mean)
    with pytest.raises(ValueError, match="only used with analytic_start"):
        sample(gm, noise, steps=4, data_mean=mean)


def test_sampler_options_reach_the_stop_search():
    """grid='fitted-stop' with a sampler option (DEIS of order 2): the stop is chosen for that sampler and the
    option does not collide with the grid's own order."""
    gm = random_mixture(4, 3, seed=5)
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, info = sample(gm, noise, sampler="deis", steps=6, grid="fitted-stop", order=2, return_info=True)
    dens = error_density(gm, (4,), dtype=torch.float64)
    want = stop_grid(gm, dens, "deis", 6, sampler_options={"order": 2})
    torch.testing.assert_close(info.sigmas, want, rtol=0, atol=0)
