"""The perspectives on a trained run, one function each, shared by the view commands and the report.

Each function computes its numbers on a small set of held-out points (noise drawn from ``seed``),
optionally draws its figure to ``figure`` (a PNG path), and returns a JSON-ready dict:

* :func:`denoise` — the denoising autoencoder: x_t and E[x0 | x_t] at chosen noise levels, the MSE per level.
* :func:`elbo` — the latent-variable model: the DDPM bound term by term, the continuous-time bound with
  its Monte-Carlo standard error, and the probability-flow likelihood of the same points.
* :func:`score` — the score estimator: annealed Langevin, one Tweedie step, and (oracle data) explicit
  vs denoising score matching.
* :func:`reverse_sde` — reverse-SDE Euler–Maruyama and predictor–corrector next to the ODE at equal NFE.
* :func:`interpolate` — the flow: encode to the probability-flow latent, decode, round-trip error, slerp.
* :func:`expectation` — the estimator of expectations: the variance of the regression target per level.
* :func:`weighting` — the weighting over log-SNR that a loss configuration implies (no run needed).
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from .._util import device_of
from ._core import LEVELS, Run

__all__ = ["check_sigmas", "denoise", "elbo", "score", "reverse_sde", "interpolate", "expectation", "weighting"]


def _data(run: Run, n: int, split: str = "test") -> Tensor:
    from ..data import load_dataset

    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return load_dataset(run.config.dataset, split, seed=run.config.seed).x[:n]


def _model(run: Run):
    """p(x): the null-label branch of a conditional run."""
    from ..guidance import ClassifierFree

    return ClassifierFree(run.denoiser, 0.0) if run.config.conditional else run.denoiser


def _oracle(run: Run):
    from ..evaluate import true_density

    return true_density(run.config.dataset)


def check_sigmas(run: Run, sigmas) -> list[float]:
    """The noise levels as floats, each inside the run's noise-level range; ValueError naming the first that is not."""
    lo, hi = run.sigma_range
    out = []
    for s in sigmas:
        v = float(s)
        if not (math.isfinite(v) and lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)):
            raise ValueError(f"sigma {s!r} is outside the model's noise-level range [{lo:.3g}, {hi:.3g}]")
        out.append(v)
    if not out:
        raise ValueError("give at least one noise level sigma")
    return out


@torch.no_grad()
def denoise(run: Run, sigmas, *, n: int = 256, show: int = 6, seed: int = 0, figure=None) -> dict:
    """E[x0 | x_t] at each sigma on n held-out points: MSE per dimension of the model (and of the exact
    posterior mean for oracle data); the figure shows the first ``show`` images (all points for 2-D data)."""
    from ..report import figures

    sig = check_sigmas(run, sigmas)
    x0 = _data(run, n)
    den, gm = _model(run), _oracle(run)
    dev = device_of(den)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in sig:
        xh = x0 + s * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        d = den(xh.to(dev), torch.full((len(x0),), s, device=dev)).cpu()
        rec = {"sigma": s, "mse": float((d - x0).flatten(1).double().pow(2).mean())}
        if gm is not None:
            rec["exact_mse"] = float((gm.denoise(xh.double(), s) - x0.double()).flatten(1).pow(2).mean())
        rows.append(rec)
    if figure is not None:
        k = show if x0.ndim == 4 else len(x0)
        figures.denoising_figure(den, x0[:k], sig, figure, generator=torch.Generator().manual_seed(seed), exact=gm)
    return {"n": len(x0), "levels": rows, "data_var": float(x0.double().var())}


def _pf(run: Run, x: Tensor, *, image: bool, generator) -> dict:
    """The probability-flow likelihood of points x: bits/dim (images, dequantized) or nats per point."""
    from ..evaluate import dataset_bits_per_dim
    from ..likelihood import default_divergence, log_likelihood

    smin, smax = run.sigma_range
    den = _model(run)
    if image:
        return dataset_bits_per_dim(den, x, levels=LEVELS[run.config.dataset], sigma_min=smin, sigma_max=smax,
                                    generator=generator, batch_size=len(x))
    ll = log_likelihood(den, x.to(device_of(den)), sigma_min=smin, sigma_max=smax, generator=generator, rtol=1e-4,
                        atol=1e-4, divergence=default_divergence(x[0].numel())).cpu().double()
    return {"mean": float(-ll.mean()), "stderr": float(ll.std() / math.sqrt(len(ll))), "n": len(ll)}


def _stored_pf(run: Run) -> dict | None:
    """The probability-flow result the run's evaluation stored (bits/dim for images, -log-likelihood in nats)."""
    import json

    path = run.path / "evaluation.json"
    if not path.is_file():
        return None
    ev = json.loads(path.read_text())
    if "bits_per_dim" in ev:
        return {k: ev["bits_per_dim"][k] for k in ("mean", "stderr", "n")}
    if "test_loglik" in ev:
        t = ev["test_loglik"]
        return {"mean": -t["mean"], "stderr": t["stderr"], "n": t["n"]}
    return None


def _mean_se(v: Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.inf


@torch.no_grad()
def elbo(run: Run, *, n: int = 32, steps: int = 64, samples: int = 16, target: float = 0.05, max_rounds: int = 512,
         pf: bool = False, seed: int = 0) -> dict:
    """The latent-variable view on the first n test points: the DDPM bound of a ``steps``-level chain term by
    term, the continuous-time bound (its per-point Monte-Carlo standard error to ``target`` nats per dimension)
    and the probability-flow value (computed on the same points with ``pf``, else the evaluation's stored one).

    Units: bits per dimension of the discrete data for images (discretized decoder, no dequantization
    offset), nats per point otherwise. Returns {"unit", "n", "d", "ddpm": {...}, "continuous": {...}, "pf"}.
    """
    from ..likelihood import ddpm_vlb, vdm_vlb

    if not (isinstance(steps, int) and steps >= 2):
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    cfg, den = run.config, _model(run)
    x0 = _data(run, n).to(device_of(den))
    image = x0.ndim == 4
    d = x0[0].numel()
    smin, smax = run.sigma_range
    dec = {"decoder": "discretized", "levels": LEVELS[cfg.dataset]} if image else {}
    scale = d * math.log(2) if image else 1.0
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    sig = torch.exp(torch.linspace(math.log(smin), math.log(smax), steps, dtype=torch.float64))
    vlb = ddpm_vlb(den, x0, sigmas=sig, process=cfg.noise_process, generator=g, **dec)
    t1 = time.perf_counter()
    cont = vdm_vlb(den, x0, sigma_min=smin, sigma_max=smax, data_var=min(1.0, float(cfg.sigma_data) ** 2),
                   samples=samples, target=target, max_rounds=max_rounds, generator=g, **dec)
    t2 = time.perf_counter()
    m, se = _mean_se(vlb.total.cpu() / scale)
    ddpm = {"steps": steps, "sigmas": sig.tolist(), "terms": (vlb.terms.mean(0).cpu() / scale).tolist(),
            "total": m, "stderr": se, "seconds": t1 - t0}
    m, se = _mean_se(cont.total.cpu() / scale)
    per_point = float(cont.stderr.pow(2).mean().sqrt()) / d
    continuous = {"total": m, "stderr": se, "prior": float(cont.prior.mean()) / scale,
                  "diffusion": float(cont.diffusion.mean()) / scale, "decoder": float(cont.decoder.mean()) / scale,
                  "mc_stderr_nats_per_dim": per_point, "draws": cont.draws, "seconds": t2 - t1}
    flow = _pf(run, x0.cpu(), image=image, generator=g) if pf else _stored_pf(run)
    if flow is not None:
        flow["same_points"] = bool(pf)
    out = {"unit": "bits/dim" if image else "nats per point", "n": len(x0), "d": d, "ddpm": ddpm,
           "continuous": continuous, "pf": flow}
    gm = _oracle(run)
    if gm is not None:
        out["true_nll"] = float(-gm.log_prob(x0.cpu().double(), smin).mean())
    return out


def _langevin_grid(run: Run, levels: int) -> Tensor:
    """Annealed Langevin levels: geometric from sigma_max down to a level a tenth of sigma_data."""
    smin, smax = run.sigma_range
    last = max(smin, 0.1 * float(run.config.sigma_data))
    return torch.exp(torch.linspace(math.log(smax), math.log(last), levels, dtype=torch.float64))


@torch.no_grad()
def score(run: Run, *, n: int = 32, levels: int = 10, steps_each: int = 4, seed: int = 0, sm_n: int = 2048,
          figure=None) -> dict:
    """The score view: n samples by annealed Langevin stopped at a positive level, then one Tweedie step
    D(x, sigma_last); for oracle data, explicit vs denoising score matching at three levels
    (:func:`diffusionlens.perspectives.score_matching`)."""
    from ..perspectives import langevin_tweedie, score_matching
    from ..report import figures
    from ..samplers import noise_seeds, randn

    den, gm = _model(run), _oracle(run)
    shape = tuple(_data(run, 1).shape[1:])
    g = torch.Generator().manual_seed(seed)
    noise = randn((n,) + shape, noise_seeds(g, n)).to(device_of(den))
    grid = _langevin_grid(run, levels)
    x, x0, nfe = langevin_tweedie(den, noise, grid, n_steps_each=steps_each,
                                  generator=noise_seeds(g, n).to(device_of(den)))
    d = x[0].numel()
    out = {"n": n, "nfe": nfe, "sigma_last": float(grid[-1]),
           "tweedie_rms": float((x0 - x).flatten(1).double().pow(2).sum(1).div(d).mean().sqrt())}
    if gm is not None:
        out["score_matching"] = [score_matching(den, gm, s, n=sm_n, generator=torch.Generator().manual_seed(seed + i))
                                 for i, s in enumerate((0.1, 0.3, 1.0))]
    if figure is not None:
        ref = _data(run, 2000)
        figures.langevin_figure(x.cpu(), x0.cpu(), figure, sigma=float(grid[-1]), reference=ref)
    return out


def reverse_sde(run: Run, *, n: int = 256, nfe: int = 16, seed: int = 0, figure=None) -> dict:
    """Reverse-SDE Euler–Maruyama and predictor–corrector next to the probability-flow ODE's Euler at equal
    NFE, from the same initial noise, scored by the run's headline metric (FD for images, SW2 otherwise) on
    n samples each."""
    from ..evaluate import headline_scorer
    from ..report import figures
    from .sampling import generate, steps_for_nfe

    score_of = headline_scorer(run.config.dataset, seed=seed)
    rows, shown = {}, {}
    for name in ("euler", "euler_maruyama", "pc"):
        x, _, used = generate(run.denoiser, run.config, n, sampler=name, steps=steps_for_nfe(name, nfe), seed=seed,
                              guidance=1.0)
        rows[name] = {"nfe": used, "score": score_of(x)}
        shown[name] = x
    metric = "fd" if _data(run, 1).ndim == 4 else "sw2"
    if figure is not None:
        figures.sde_figure(shown, rows, figure, metric=metric, reference=_data(run, 2000))
    return {"n": n, "metric": metric, "samplers": rows}


@torch.no_grad()
def interpolate(run: Run, *, pairs: int = 3, frames: int = 7, steps: int = 24, seed: int = 0, figure=None) -> dict:
    """The flow view: encode 2 * ``pairs`` test points to the probability-flow latent at sigma_max (Heun on a
    log-uniform grid of ``steps``), decode them back (round-trip error) and decode ``frames`` points along
    the slerp between the latents of each pair."""
    from ..likelihood import decode, encode, slerp
    from ..report import figures

    if not (isinstance(frames, int) and frames >= 3):
        raise ValueError(f"frames must be an integer >= 3, got {frames!r}")
    den = _model(run)
    x = _data(run, 2 * pairs).to(device_of(den))
    if len(x) < 2 * pairs:
        raise ValueError(f"the test split holds {len(x)} points, fewer than the {2 * pairs} of {pairs} pairs")
    smin, smax = run.sigma_range
    up = torch.exp(torch.linspace(math.log(smin), math.log(smax), steps + 1, dtype=torch.float64))
    z = encode(den, x, sigmas=up, sampler="heun")
    a, b = z[0::2], z[1::2]
    w = torch.linspace(0, 1, frames, dtype=torch.float64)
    path = torch.stack([slerp(a, b, float(v)) for v in w], 1)  # (pairs, frames, ...)
    dec = decode(den, path.flatten(0, 1).to(z.dtype), sigmas=up.flip(0), sampler="heun")
    dec = dec.reshape(path.shape)
    ends = torch.stack([dec[:, 0], dec[:, -1]], 1).flatten(0, 1)  # decoded endpoints, in x's order
    err = ((ends - x).flatten(1).double().norm(dim=1) / x.flatten(1).double().norm(dim=1).clamp_min(1e-12)).cpu()
    out = {"pairs": pairs, "frames": frames, "steps": steps, "nfe_each_way": 2 * steps - 1,
           "round_trip_error_mean": float(err.mean()), "round_trip_error_max": float(err.max()),
           "latent_std_over_sigma_max": float((z / smax).flatten(1).double().std())}
    if figure is not None:
        figures.interpolation_figure(x.cpu(), dec.cpu(), figure, reference=_data(run, 2000))
    return out


@torch.no_grad()
def expectation(run: Run, *, n: int = 256, levels: int = 8, seed: int = 0, figure=None) -> dict:
    """The estimator-of-expectations view on images: per noise level, the variance of the regression target x0
    about the model's E[x0 | x_t] (``distill.target_variance``; the irreducible part of the MSE when the model
    is exact), next to the data variance."""
    from ..distill import target_variance
    from ..report import figures

    smin, smax = run.sigma_range
    x0 = _data(run, 10 ** 6)
    den = _model(run)
    sig = torch.exp(torch.linspace(math.log(smax), math.log(max(smin, 0.01)), levels, dtype=torch.float64))
    res = target_variance(den, x0.to(device_of(den)), sig, targets=("data",), n=n,
                          generator=torch.Generator().manual_seed(seed))["data"]
    out = {"sigma": res["sigma"].tolist(), "value": res["value"].tolist(), "stderr": res["stderr"].tolist(),
           "data_var": float(x0.double().var()), "n": n}
    if figure is not None:
        figures.target_variance_figure(out, figure)
    return out


def weighting(*, process: str = "edm", param: str = "edm", density="lognormal", weighting="edm",
              sigma_data: float = 0.5, points: int = 31, figure=None) -> dict:
    """The weighting over log-SNR that a training configuration implies (Kingma & Gao 2023, eps form),
    normalised to a maximum of 1, and whether it is monotone. Names as ``diffusionlens train`` takes them."""
    from ..perspectives import implied_weighting
    from ..report import figures
    from ..training import TrainConfig

    cfg = TrainConfig(process=process, param=param, density=density, weighting=weighting, sigma_data=sigma_data)
    loss = cfg.loss()
    out = implied_weighting(loss, points=points)
    out["loss"] = f"{cfg.process}/{cfg.param}/{cfg.density}/{cfg.weighting}, sigma_data {sigma_data:g}"
    if figure is not None:
        figures.weighting_figure({out["loss"]: loss}, figure, trained=out["loss"])
    return out
