"""The perspectives: their numbers on the exact oracle, the view commands on a tiny run, the report's sections.

* Explicit and denoising score matching differ by the posterior-variance constant whatever the model
  (Vincent 2011): measured for three denoisers on the same draws, within Monte-Carlo error.
* With the exact denoiser in a run's place, the views reproduce the oracle: the denoising MSE is the
  exact one, the continuous-time bound lies above the true negative log-likelihood by less than its
  error, the flow's round trip is the solver's error.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from _cli import run_cli
from diffusionlens.cli import main
from diffusionlens.losses import Loss, Sigmoid, edm_loss, vdm_loss
from diffusionlens.oracle import ring, standard_cases
from diffusionlens.perspectives import implied_weighting, langevin_tweedie, score_matching
from diffusionlens.processes import VP

TINY = {"net": {"kind": "mlp", "data_shape": [2], "width": 32, "depth": 1, "emb_dim": 32}, "batch_size": 128,
        "warmup_steps": 5, "log_every": 10, "ckpt_every": 0}


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A run trained for 20 steps on the oracle ring with a tiny MLP, in its own working directory."""
    root = tmp_path_factory.mktemp("views")
    (root / "tiny.json").write_text(json.dumps(TINY))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with torch.random.fork_rng(devices=[]):
            rc = main(["train", "--dataset", "oracle-ring", "--steps", "20", "--config", "tiny.json", "--name", "t",
                       "--quiet", "--device", "cpu"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return root


@pytest.fixture
def exact_run(tiny):
    """The tiny run with the exact oracle in the trained network's place."""
    from diffusionlens.run import Run, open_run

    r = open_run(tiny / "runs" / "t", device="cpu")
    return Run(r.path, ring(), r.config, "cpu")


# ----------------------------------------------------------------------------- pure functions


def test_explicit_and_denoising_score_matching_differ_by_the_same_constant():
    o = standard_cases()["mix16"]
    models = {"exact": o.denoise, "shrunk": lambda x, s: 0.8 * o.denoise(x, s), "identity": lambda x, s: x}
    for sigma in (0.2, 1.0):
        res = {k: score_matching(m, o, sigma, n=2048, generator=_gen(1)) for k, m in models.items()}
        for r in res.values():
            assert abs(r["difference"] - r["constant"]) < 4 * math.hypot(r["stderr"], r["constant_stderr"]), r
        # the shared minimiser: ESM is 0 at the exact posterior mean, DSM is smallest there (at the constant)
        assert res["exact"]["esm"] < 1e-20
        assert res["exact"]["dsm"] < min(res["shrunk"]["dsm"], res["identity"]["dsm"])
    with pytest.raises(ValueError, match="sigma"):
        score_matching(o.denoise, o, -1.0)


def test_implied_weighting_monotone_for_elbo_and_sigmoid():
    assert implied_weighting(vdm_loss())["monotone"]  # flat: the ELBO itself
    sig = Loss(process=VP("cosine"), param="eps", density="uniform", weighting=Sigmoid(bias=2.0))
    assert implied_weighting(sig)["monotone"]  # K&G's sigmoid weighting: monotone by construction
    edm = implied_weighting(edm_loss(), points=41)
    assert not edm["monotone"] and max(edm["weight"]) == 1.0
    lam = edm["logsnr"]
    assert all(b > a for a, b in zip(lam, lam[1:]))


def test_langevin_then_tweedie_is_the_denoiser_at_the_last_level():
    o = ring()
    noise = torch.randn(64, 2, generator=_gen(2), dtype=torch.float64)
    grid = torch.tensor([10.0, 1.0, 0.1])
    x, x0, nfe = langevin_tweedie(o.denoise, noise, grid, n_steps_each=3, generator=_gen(3))
    assert nfe == 3 * 3 + 1
    torch.testing.assert_close(x0, o.denoise(x, 0.1))
    with pytest.raises(ValueError, match="decreasing"):
        langevin_tweedie(o.denoise, noise, [0.1, 1.0])


# ----------------------------------------------------------------------------- views with the exact denoiser


def test_views_reproduce_the_oracle(exact_run):
    from diffusionlens.run import views

    den = views.denoise(exact_run, [0.1, 1.0], n=200)
    for row in den["levels"]:
        assert row["mse"] == pytest.approx(row["exact_mse"], rel=1e-5)
    res = views.elbo(exact_run, n=8, steps=16, target=0.15)
    c = res["continuous"]
    assert c["mc_stderr_nats_per_dim"] < 0.15
    # the exact model's bound sits above -log p by the prior and decoder gaps only (small at these ends)
    assert c["total"] - res["true_nll"] > -4 * c["stderr"] and c["total"] - res["true_nll"] < 0.1 + 4 * c["stderr"]
    # with right-endpoint sums over 16 levels the discrete bound is the looser one
    assert res["ddpm"]["total"] > c["total"]
    flow = views.interpolate(exact_run, pairs=1, frames=3, steps=32)
    assert flow["round_trip_error_mean"] < 1e-2


# ----------------------------------------------------------------------------- commands


def test_view_commands_on_a_tiny_run(tiny, capsys, monkeypatch):
    monkeypatch.chdir(tiny)
    rc, out, _ = run_cli(["elbo", "t", "--n", "2", "--steps", "4", "--target", "1", "--device", "cpu"], capsys)
    assert rc == 0 and "continuous-time bound" in out and "nats/dim" in out and "true -log p" in out
    assert (tiny / "runs" / "t" / "fig_elbo.png").is_file()
    rc, out, _ = run_cli(["denoise", "t", "--sigma", "0.1,1", "--n", "16", "--show", "2", "--device", "cpu"], capsys)
    assert rc == 0 and "exact posterior mean" in out and (tiny / "runs" / "t" / "fig_denoise.png").is_file()
    rc, out, _ = run_cli(["interpolate", "t", "--pairs", "1", "--frames", "3", "--steps", "4", "--device", "cpu"],
                         capsys)
    assert rc == 0 and "round-trip" in out and (tiny / "runs" / "t" / "fig_interpolate.png").is_file()
    rc, out, _ = run_cli(["weighting", "--process", "vp", "--param", "eps", "--density", "uniform", "--weighting",
                          "elbo", "--out", tiny / "w.png"], capsys)
    assert rc == 0 and "monotone" in out and (tiny / "w.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["denoise", "t", "--sigma", "500"], "outside the model's noise-level range"),
    (["denoise", "t", "--sigma", "-1"], "positive numbers"),
    (["weighting", "--density", "gamma"], "invalid choice: 'gamma'"),
    (["weighting", "--out", "no/such/dir/w.png"], "does not exist"),
    (["elbo", "t", "--samples", "3"], "must be even"),
    (["interpolate", "t", "--frames", "2"], "at least 3"),
    (["elbo", "nope"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(tiny, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tiny)
    rc, _, err = run_cli(args, capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("command", ["elbo", "denoise", "weighting", "interpolate"])
def test_help_of_the_view_commands(command, capsys):
    rc, out, _ = run_cli([command, "--help"], capsys)
    assert rc == 0 and "example" in out and len(out.splitlines()) > 8
