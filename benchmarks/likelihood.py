"""Benchmark: PF-ODE log-likelihood against k-diffusion and score_sde's method, on the exact oracle.

Run from the repository root::

    .venv/bin/python -m benchmarks.likelihood            # full table -> benchmarks/results/likelihood.md
    .venv/bin/python -m benchmarks.likelihood --quick    # smaller batch, one repeat (smoke test)
    .venv/bin/python -m benchmarks.likelihood --device cuda --out benchmarks/results/likelihood-cuda.md

On a GPU the costs are wall times (synchronized; CPU time of the process means nothing there) and
score_sde's NumPy/scipy peer is left out (it runs on the CPU only).

Every method gets the same points (exact oracle samples), the same sigma range (0.002 -> 80, the
N(0, 80^2 I) prior), the same batch and one intra-op thread. Reference: ``oracle.log_prob(x, 0.002)``.
Reported per case and method: NFE per sample, wall time per sample (median of ``--repeats`` runs),
the mean absolute error in nats per sample, and the same error with the prior-truncation error
(log p_80(z) - log N(z; 0, 80^2 I), evaluated at the latent of a tight exact solve) removed, so that
the solver/trace error and the truncation error are reported separately.

Peers:
* k-diffusion ``sampling.log_likelihood`` (torchdiffeq dopri5 in sigma, one Rademacher probe), loaded
  via :func:`benchmarks.peers.k_sampling`.
* score_sde's ``likelihood.get_likelihood_fn`` (Song et al. 2021), re-implemented here because no
  installable package provides it: the whole batch flattened into one NumPy vector, scipy
  ``solve_ivp(method="RK45")`` on the VE SDE's probability-flow ODE in its time t (sigma =
  sigma_min (sigma_max/sigma_min)^t), one fixed Rademacher probe applied to the full drift.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

from diffusionlens.likelihood import log_likelihood, prior_gap
from diffusionlens.oracle import random_mixture, standard_cases

from ._write import write_results
from .peers import k_sampling

SMIN, SMAX = 0.002, 80.0


def scoresde_log_likelihood(denoiser, x, sigma_min, sigma_max, *, rtol, atol, generator):
    """score_sde's likelihood (their likelihood.py) for a VE SDE, with the canonical denoiser as the model.

    Returns (log p (batch,), nfe). Time t in [0, 1], sigma(t) = sigma_min r^t, r = sigma_max/sigma_min;
    drift of the PF-ODE: -1/2 g^2 score = (x - D) log r; divergence by e^T (d drift/dx) e.
    """
    shape, B = x.shape, x.shape[0]
    d = x[0].numel()
    L = math.log(sigma_max / sigma_min)
    eps = (torch.randint(0, 2, x.shape, generator=generator).to(x.dtype) * 2 - 1)
    nfe = 0

    def ode_func(t, y):
        nonlocal nfe
        nfe += 1
        xs = torch.from_numpy(y[: B * d].copy()).reshape(shape).to(x.dtype).requires_grad_(True)
        sigma = torch.full((B,), sigma_min * math.exp(L * t), dtype=x.dtype)
        with torch.enable_grad():
            drift = (xs - denoiser(xs, sigma)) * L
            (g,) = torch.autograd.grad((drift * eps).sum(), xs)
        div = (g * eps).flatten(1).sum(1)
        return np.concatenate([drift.detach().reshape(-1).numpy(), div.numpy()])

    y0 = np.concatenate([x.reshape(-1).numpy(), np.zeros(B)])
    sol = solve_ivp(ode_func, (0.0, 1.0), y0, rtol=rtol, atol=atol, method="RK45")
    z = torch.from_numpy(sol.y[: B * d, -1]).reshape(shape)
    delta = torch.from_numpy(sol.y[B * d :, -1])
    prior = -0.5 * (z.flatten(1).pow(2).sum(1) / sigma_max**2 + d * math.log(2 * math.pi * sigma_max**2))
    return prior + delta, nfe


def _clock(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def run(cases, batch, repeats, seed=0, device="cpu"):
    K = k_sampling()
    rows = []
    for name, (o, hutch_probes) in cases.items():
        rows += _run_case(K, name, o, hutch_probes, batch, repeats, seed, torch.device(device))
    return rows


def _run_case(K, name, o, hutch_probes, batch, repeats, seed, device):
    rows = []
    d = o.dim
    x = o.sample(batch, torch.Generator().manual_seed(seed)).to(device)  # the oracle follows its input's device
    exact = o.log_prob(x, SMIN)
    # the latent of a tight exact solve gives the prior-truncation error, which every method shares
    _, ref = log_likelihood(o.denoise, x, sigma_min=SMIN, sigma_max=SMAX, rtol=1e-8, atol=1e-8,
                            divergence="exact" if d <= 64 else "hutchinson", probes=1, return_info=True,
                            generator=torch.Generator().manual_seed(1))
    gap = prior_gap(o.log_prob, ref.latent, SMAX)

    methods = []

    def add(method, setting, tol, fn):
        methods.append((method, setting, tol, fn))

    # repeat r draws its own probes (seeded by r), so the errors of randomized methods average over
    # batch x repeats independent draws; the exact rows give the same numbers every time
    def kdiff(tol):
        def f(r):
            torch.manual_seed(seed + 2 + 1000 * r)
            ll, info = K.log_likelihood(o.denoise, x, SMIN, SMAX, atol=tol, rtol=tol)
            return ll, info["fevals"]
        return f

    def sde(tol):
        return lambda r: scoresde_log_likelihood(o.denoise, x, SMIN, SMAX, rtol=tol, atol=tol,
                                                 generator=torch.Generator().manual_seed(seed + 3 + 1000 * r))

    def ours(tol, **kw):
        def f(r):
            ll, info = log_likelihood(o.denoise, x, sigma_min=SMIN, sigma_max=SMAX, rtol=tol, atol=tol,
                                      generator=torch.Generator().manual_seed(seed + 4 + 1000 * r),
                                      return_info=True, **kw)
            return ll, info.nfe.double().mean().item()
        return f

    for tol in (1e-4, 1e-5):
        add("k-diffusion", "Rademacher x1", tol, kdiff(tol))
    if device.type == "cpu":  # NumPy / scipy: CPU only
        add("score_sde", "RK45, Rademacher x1", 1e-5, sde(1e-5))
    if d <= 64:
        for tol in (1e-4, 3e-5, 1e-5, 3e-6, 1e-6):
            add("diffusionlens", "exact trace", tol, ours(tol, divergence="exact"))
    add("diffusionlens", "Rademacher x1", 1e-4, ours(1e-4, divergence="hutchinson", probes=1, probe="rademacher"))
    for p in hutch_probes:
        add("diffusionlens", f"rotating x{p}", 1e-4, ours(1e-4, divergence="hutchinson", probes=p))
    # repeats interleaved round-robin over the methods, so a change in machine load hits all alike
    results = {i: [] for i in range(len(methods))}
    for rep in range(repeats):
        for i, (_, _, _, fn) in enumerate(methods):
            w0, c0 = _clock(device)
            out = fn(rep)
            w1, c1 = _clock(device)
            results[i].append((out, w1 - w0, c1 - c0))
    for i, (method, setting, tol, _) in enumerate(methods):
        ll = torch.stack([r[0][0].to(device) for r in results[i]])  # (repeats, batch)
        nfe = statistics.mean(float(r[0][1]) for r in results[i])
        wall = statistics.median(r[1] for r in results[i])
        cpu = statistics.median(r[2] for r in results[i])
        if "exact" in setting:  # deterministic: the repeats agree, keep one
            ll = ll[:1]
        err = (ll - exact).abs().flatten()
        err_ode = (ll + gap - exact).abs().flatten()
        rows.append(dict(case=name, d=d, method=method, setting=setting, tol=tol, nfe=nfe,
                         ms=1e3 * wall / batch, cpu=1e3 * cpu / batch, err=err.mean().item(),
                         err_ode=err_ode.mean().item(), se=err_ode.std().item() / math.sqrt(err_ode.numel()),
                         gap=gap.abs().mean().item()))
        print(f"{name:7s} {method:13s} {setting:20s} tol={tol:.0e} nfe={float(nfe):6.0f} "
              f"ms={1e3 * wall / batch:9.2f} cpu_ms={1e3 * cpu / batch:9.2f} err={err.mean().item():.2e} "
              f"err_ode={err_ode.mean().item():.2e}", flush=True)
    cost = "cpu" if device.type == "cpu" else "ms"  # the cost: CPU time on the CPU, wall time on a GPU
    kd_ms = next(r[cost] for r in rows if r["method"] == "k-diffusion" and r["tol"] == 1e-4)
    kd_err = next(r["err_ode"] for r in rows if r["method"] == "k-diffusion" and r["tol"] == 1e-4)
    for r in rows:
        r["cost"] = r[cost]
        # a randomized estimate averaged over n independent runs has error ~ 1/sqrt(n): the error it would
        # have in k-diffusion's time, and k-diffusion's error divided by it
        r["err_eq"] = r["err_ode"] * math.sqrt(r[cost] / kd_ms) if "exact" not in r["setting"] else float("nan")
        r["gain"] = kd_err / r["err_eq"] if "exact" not in r["setting"] else float("nan")
    return rows


def to_markdown(rows, command, batch, repeats, device="cpu"):
    cost = "CPU time" if torch.device(device).type == "cpu" else "wall time"
    lines = [
        "# Likelihood benchmark: PF-ODE log-likelihood on the exact oracle",
        "",
        f"Command: `{command}`",
        "",
        f"Batch {batch} per case (the same points for every method), sigma 0.002 -> 80, prior N(0, 80^2 I), "
        f"one intra-op thread; times per sample are medians of {repeats} runs interleaved round-robin over the "
        "methods, as wall time and as CPU time of the process (the machine is shared: CPU time is the steadier "
        "measure, and with one thread it is the cost). Errors are mean |log p - exact| in "
        "nats per sample against `oracle.log_prob(x, 0.002)`; *ODE error* removes the prior-truncation error "
        "(shared by all methods, last column) so the solver and trace errors show alone. NFE = right-hand-side "
        "evaluations per sample (for the exact trace each is one forward and d vector-Jacobian products "
        "batched by vmap, or for d <= 4 one forward and backward over d stacked copies; for P probes one "
        "forward and one backward over P stacked copies). Each repeat of a "
        "randomized method draws new probes, so its error is the mean over batch x repeats independent draws; "
        "*s.e.* is the standard error of that mean.",
        "",
        "For the randomized (Hutchinson) rows, *at k-diffusion's time* is the ODE error scaled by "
        "sqrt(CPU time / CPU time of k-diffusion at 1e-4), the error an average of independent runs would reach "
        "in k-diffusion's time, and *gain* is k-diffusion's error divided by it.",
        "",
        "| case | d | method | divergence | rtol=atol | NFE | wall ms / sample | CPU ms / sample | "
        "error (nats/sample) | ODE error (± s.e.) | prior-truncation error | ODE error at k-diffusion's time | gain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['d']} | {r['method']} | {r['setting']} | {r['tol']:.0e} | {r['nfe']:.0f} | "
            f"{r['ms']:.2f} | {r['cpu']:.2f} | {r['err']:.2e} | {r['err_ode']:.2e} ± {r['se']:.1e} | {r['gap']:.2e} | "
            + ("" if math.isnan(r["err_eq"]) else f"{r['err_eq']:.2e}") + " | "
            + ("" if math.isnan(r["gain"]) else f"{r['gain']:.1f}x") + " |"
        )
    lines += ["", "## Against the targets", "",
              f"Device: {device}" + (f" ({torch.cuda.get_device_name(torch.device(device))})"
                               if torch.device(device).type == "cuda" else "") + ".",
        "",
        f"Exact trace: the cheapest setting whose ODE error is <= 1e-3 nats per sample, its {cost} over "
              "k-diffusion's single-probe run at rtol=atol=1e-4 (target: <= 1). Hutchinson (d >= 256): the best "
              "gain at equal time (target: >= 3x).", ""]
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]
        kd = next(r for r in rs if r["method"] == "k-diffusion" and r["tol"] == 1e-4)
        ok = [r for r in rs if r["setting"] == "exact trace" and r["err_ode"] <= 1e-3]
        if ok:
            best = min(ok, key=lambda r: r["cost"])
            lines.append(f"- {case} (d={best['d']}): exact trace at rtol=atol={best['tol']:.0e}, ODE error "
                         f"{best['err_ode']:.1e} nats, {best['cost'] / kd['cost']:.2f}x k-diffusion's {cost} "
                         f"(k-diffusion's error {kd['err_ode']:.2f} nats).")
        hs = [r for r in rs if not math.isnan(r["gain"]) and r["method"] == "diffusionlens"]
        if hs:
            best = max(hs, key=lambda r: r["gain"])
            lines.append(f"- {case} (d={best['d']}): best Hutchinson gain at equal time {best['gain']:.1f}x "
                         f"({best['setting']}).")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 4, one repeat, no d=256 case")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/likelihood.md")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where every method runs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    batch, repeats = (4, 1) if args.quick else (args.batch, args.repeats)
    std = standard_cases()
    cases = {
        "ring2d": (std["ring2d"], (1, 16)),
        "mix16": (std["mix16"], (1, 16)),
        "mix64": (std["mix64"], (1, 16)),
    }
    if not args.quick:
        cases["mix256"] = (random_mixture(256, 10, seed=256), (1, 4, 16))
    rows = run(cases, batch, repeats, device=args.device)
    command = ".venv/bin/python -m benchmarks.likelihood" + (" --quick" if args.quick else "")
    if args.device != "cpu":
        command += f" --device {args.device}"
    if args.batch != 16 and not args.quick:
        command += f" --batch {args.batch}"
    if args.repeats != 3 and not args.quick:
        command += f" --repeats {args.repeats}"
    md = to_markdown(rows, command, batch, repeats, args.device)
    write_results(args.out, md)
    print(md)


if __name__ == "__main__":
    main()
