"""Interpolants: couplings on the oracle, the torchcfm peer comparison, reflow, alpha-(de)blending.

Five parts (``--part``, default all), each replacing its own section of
benchmarks/results/interpolants.md (so one part can be re-run alone):

``couplings``  Target ring of 8 Gaussians (`oracle.ring()`), source N(0, I). For each coupling
    (independent, minibatch OT, Sinkhorn) and seed, a small velocity network is fitted with the same
    steps, batch and CPU cap (`interpolants.fit`, process-time budget `--budget` s per fit); the exact
    velocity of the independent coupling is the reference row. Reported: mean straightness on
    held-out sources (Liu et al.'s S, 16 Heun steps); the RMS distance of n Euler steps (NFE = n) from
    the same velocity's converged solution (dopri5, 1e-6), "NFE needed" the smallest NFE within
    `--tol` of it; the mean exact target log-density of the converged samples.
``peers``  torchcfm's own 2-D benchmarks (8 Gaussians -> moons, N(0, I) -> moons, its data laws) with
    one MLP (torchcfm's: 3 hidden layers of 64, SELU), the same initial weights, steps, batch, lr and
    CPU cap per seed: our OT and independent flow matching (`interpolants.fit`, couplings `ot`,
    `independent`) against torchcfm's `ExactOptimalTransportConditionalFlowMatcher` and
    `ConditionalFlowMatcher` (sigma = 0, the same objective). Exact 2-Wasserstein distance (an
    assignment between equal-size sets) of Euler samples at NFE 1..32 and of converged dopri5 samples
    to held-out target samples, next to its floor (W2 between two independent target sets of the same
    size); CPU time per training step (median of blocks run back to back, alternating, in this
    process); the NFE each needs for a common W2. Then one reflow round (`interpolants.reflow`) from
    our independent and OT models: the one-step W2 against the floor.
``solvers``  CPU time of one minibatch OT pairing at batch 128, 256, 512: ours (`couple("ot")`, scipy's
    Hungarian) against torchcfm's `OTPlanSampler("exact").sample_plan` (POT's network simplex).
``digits``  Rectified flow N(0, I) -> the 8x8 digits (`nets.MLP`, independent coupling), then one
    reflow round: Fréchet distance in the digits classifier's features (with its floor) at NFE 1, 2, 4
    and converged, before and after.
``blending``  Iterative alpha-(de)blending (`interpolants.blending`) checkerboard <-> moons (independent
    pairs as in Heitz et al., and OT pairs) and digits 0 <-> 1: forward and backward maps, W2 (2-D) or
    FD and the share classified as the other class (digits) against Euler steps; figure
    benchmarks/results/interpolants_blending.png.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/interpolants.py --part couplings --seeds 0 1 --steps 400 \
        --budget 25
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/interpolants.py --part peers solvers digits blending \
        --seeds 0 1 --peer-steps 2000 --peer-budget 40 --digit-steps 1500 --digit-budget 40
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import diffusionlens.interpolants as I
from diffusionlens import oracle

try:
    from benchmarks._interpolants_maps import RESULTS, PeerMLP, _mean, part_blending, part_digits, w2
    from benchmarks._write import write_results
except ImportError:  # run as a script from the repository root
    from _interpolants_maps import RESULTS, PeerMLP, _mean, part_blending, part_digits, w2
    from _write import write_results

NFES = (1, 2, 4, 8, 16, 32)


class TinyVelocity(nn.Module):
    """v(x, t): an MLP on (x, t), the same for every coupling."""

    def __init__(self, d: int = 2, width: int = 64):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(d + 1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                               nn.Linear(width, d))

    def forward(self, x, t):
        return self.f(torch.cat([x, t[:, None].to(x.dtype)], 1))


# ---------------------------------------------------------------------- part: couplings (oracle ring)


def _row(velocity, gm, x1, tol):
    s = float(I.straightness(velocity, x1, steps=16).mean())
    ref = I.transport(velocity, x1, method="dopri5", rtol=1e-6, atol=1e-6).x
    rms = {n: float((I.transport(velocity, x1, steps=n, method="euler").x - ref).pow(2).sum(1).mean().sqrt())
           for n in NFES}
    need = next((n for n in NFES if rms[n] <= tol), None)
    return s, rms, need, float(gm.log_prob(ref).mean())


def part_couplings(a) -> list[str]:
    gm, src = oracle.ring(), I.standard_normal(2)
    rows: dict[str, list] = {}
    steps: dict[str, list] = {}
    cpu0 = time.process_time()
    for seed in a.seeds:
        g = torch.Generator().manual_seed(1000 + seed)
        x1 = src.sample(2000, g)
        ceiling = float(gm.log_prob(gm.sample(20000, g)).mean())
        rows.setdefault("exact (independent)", []).append(_row(I.ExactVelocity(gm, src), gm, x1, a.tol))
        for coupling in ("independent", "ot", "sinkhorn"):
            torch.manual_seed(seed)
            net = TinyVelocity().double()

            def draw(n, gen, coupling=coupling):
                x0 = gm.sample(n, gen)
                return x0, I.couple(coupling, x0, src.sample(n, gen), gen)

            t0 = time.process_time()
            losses = I.fit(net, draw, steps=a.steps, batch_size=256, lr=3e-3, seed=seed, budget_s=a.budget)
            print(f"seed {seed} {coupling}: {len(losses)} steps in {time.process_time() - t0:.1f} CPU s", flush=True)
            rows.setdefault(f"trained, {coupling}", []).append(_row(I.net_velocity(net), gm, x1, a.tol))
            steps.setdefault(f"trained, {coupling}", []).append(len(losses))
    lines = [
        "# Couplings on the oracle: straightness and NFE",
        "",
        f"Command: `PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/interpolants.py --part couplings --seeds "
        f"{' '.join(map(str, a.seeds))} --steps {a.steps} --budget {a.budget:g} --tol {a.tol:g}` "
        f"({time.process_time() - cpu0:.0f} CPU s in all, one thread, on a shared 2-core machine).",
        "",
        "Target ring of 8 Gaussians (std 0.05), source N(0, I); mean over seeds. NFE n: RMS distance of n Euler",
        "steps from the same velocity's converged solution. NFE needed (per seed): smallest NFE with RMS <= "
        f"{a.tol:g}. log p: mean exact target log-density of the converged samples (ceiling {ceiling:.2f}, "
        "the target's -entropy, last seed).",
        "",
        "| velocity | steps | straightness | " + " | ".join(f"NFE {n}" for n in NFES) + " | NFE needed | log p |",
        "|---" * (len(NFES) + 5) + "|",
    ]
    for name, rs in rows.items():
        rms = [_mean([r[1][n] for r in rs]) for n in NFES]
        need = ", ".join(str(r[2]) if r[2] is not None else f">{NFES[-1]}" for r in rs)
        st = ", ".join(map(str, steps.get(name, ["-"])))
        lines.append(f"| {name} | {st} | {_mean([r[0] for r in rs]):.4f} | " + " | ".join(f"{v:.3f}" for v in rms)
                     + f" | {need} | {_mean([r[3] for r in rs]):.2f} |")
    return lines


# ---------------------------------------------------------------------- torchcfm's 2-D laws

_DIRS = torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1], [.5 ** .5, .5 ** .5], [.5 ** .5, -.5 ** .5],
                      [-.5 ** .5, .5 ** .5], [-.5 ** .5, -.5 ** .5]], dtype=torch.float64)


def eight_gaussians(n, g):
    """torchcfm's ``sample_8gaussians``: centres 5 * the 8 unit directions, covariance sqrt(0.1) I."""
    k = torch.randint(8, (n,), generator=g)
    return (5 * _DIRS[k] + 0.1 ** 0.25 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def moons(n, g):
    """torchcfm's ``sample_moons``: scikit-learn's two moons with noise 0.2, times 3, minus 1."""
    th = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper[:, None], torch.stack([th.cos(), th.sin()], 1),
                    torch.stack([1 - th.cos(), 0.5 - th.sin()], 1))
    return (3 * (x + 0.2 * torch.randn(n, 2, generator=g, dtype=torch.float64)) - 1).float()


def gaussian(n, g):
    return torch.randn(n, 2, generator=g)


TASKS = {"8gaussians -> moons": (eight_gaussians, moons), "gaussian -> moons": (gaussian, moons)}


def _ours(coupling, source, target):
    def train(net, steps, seed, budget):
        def draw(n, g):
            x0 = target(n, g)
            return x0, I.couple(coupling, x0, source(n, g), g)

        return len(I.fit(net, draw, steps=steps, batch_size=256, lr=1e-3, seed=seed, budget_s=budget))

    return train, I.net_velocity


def _torchcfm(matcher, source, target):
    """torchcfm's training step (its README loop) in its time (t = 0 the source), and the conversion to ours."""
    def train(net, steps, seed, budget):
        import numpy as np

        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        np.random.seed(seed)  # the OT plan sampler draws with numpy
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        start, done = time.process_time(), 0
        for _ in range(steps):
            if time.process_time() - start > budget:
                break
            t, xt, ut = matcher.sample_location_and_conditional_flow(source(256, g), target(256, g))
            loss = torch.mean((net(xt, t) - ut) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
        return done

    def velocity(net):
        def v(x, t):  # package time t = 1 - torchcfm's; its velocity points the other way
            with torch.no_grad():
                return -net(x, (1 - t).to(x.dtype))

        return v

    return train, velocity


def _methods(source, target) -> dict:
    out = {"ours, ot": _ours("ot", source, target), "ours, independent": _ours("independent", source, target)}
    try:
        from torchcfm.conditional_flow_matching import (
            ConditionalFlowMatcher,
            ExactOptimalTransportConditionalFlowMatcher,
        )
    except ImportError:
        print("torchcfm is not installed (bash scripts/setup.sh --peers): peer rows skipped", flush=True)
        return out
    out["torchcfm, exact OT"] = _torchcfm(ExactOptimalTransportConditionalFlowMatcher(sigma=0.0), source, target)
    out["torchcfm, independent"] = _torchcfm(ConditionalFlowMatcher(sigma=0.0), source, target)
    return out


def _w2_curve(v, x1, ref) -> dict:
    res = {n: w2(I.transport(v, x1, steps=n, method="euler").x, ref) for n in NFES}
    conv = I.transport(v, x1, method="dopri5", rtol=1e-5, atol=1e-5)
    res["dopri5"], res["dopri5 nfe"] = w2(conv.x, ref), conv.nfe
    return res


def _step_times(methods, init, blocks=5, k=40) -> dict:
    """CPU seconds per training step: the median over ``blocks`` blocks of ``k`` steps, methods alternating."""
    times: dict[str, list] = {m: [] for m in methods}
    for b in range(blocks):
        for m, (train, _) in methods.items():
            net = copy.deepcopy(init)
            t0 = time.process_time()
            done = train(net, k, 100 + b, math.inf)
            times[m].append((time.process_time() - t0) / done)
    return {m: statistics.median(v) for m, v in times.items()}


def _peer_task(a, name, source, target, seed) -> dict:
    g = torch.Generator().manual_seed(2000 + seed)
    x1, ref = source(a.n_eval, g), target(a.n_eval, g)
    floor = [w2(target(a.n_eval, g), ref) for _ in range(3)]
    methods = _methods(source, target)
    torch.manual_seed(seed)
    init = PeerMLP()
    out = {"floor": _mean(floor), "floor_std": statistics.stdev(floor), "rows": {}, "reflow": {}}
    for m, (train, velocity) in methods.items():
        net = copy.deepcopy(init)
        t0 = time.process_time()
        steps = train(net, a.peer_steps, seed, a.peer_budget)
        cpu = time.process_time() - t0
        v = velocity(net)
        row = _w2_curve(v, x1, ref)
        row.update(steps=steps, cpu=cpu, straightness=float(I.straightness(v, x1[:500], steps=16).mean()))
        out["rows"][m] = row
        print(f"{name} seed {seed} {m}: {steps} steps {cpu:.0f} CPU s, W2 NFE1 {row[1]:.3f} NFE8 {row[8]:.3f} "
              f"conv {row['dopri5']:.3f} (floor {out['floor']:.3f})", flush=True)
        if m.startswith("ours"):
            rounds = I.reflow(v, PeerMLP, source, rounds=1, n_pairs=4096, solve_steps=32, fit_steps=a.peer_steps,
                              batch_size=256, lr=1e-3, seed=seed, n_eval=500)
            rv = I.net_velocity(rounds[0].net)
            out["reflow"][m] = {n: w2(I.transport(rv, x1, steps=n, method="euler").x, ref) for n in (1, 2, 4)}
            out["reflow"][m]["straightness"] = rounds[0].straightness
            print(f"  reflow from {m}: W2 NFE1 {out['reflow'][m][1]:.3f}", flush=True)
    if seed == a.seeds[0]:
        out["step_s"] = _step_times(methods, init)
    return out


def _needed(row, tau):
    return next((str(n) for n in NFES if row[n] <= tau), f">{NFES[-1]}")


def part_peers(a) -> list[str]:
    cpu0 = time.process_time()
    res = {name: [_peer_task(a, name, s, t, seed) for seed in a.seeds] for name, (s, t) in TASKS.items()}
    lines = ["# Peer comparison with torchcfm on its 2-D benchmarks, and reflow", "",
             f"Command: `PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/interpolants.py --part peers --seeds "
             f"{' '.join(map(str, a.seeds))} --peer-steps {a.peer_steps} --peer-budget {a.peer_budget:g} --n-eval "
             f"{a.n_eval}` ({time.process_time() - cpu0:.0f} CPU s, one thread, shared 2-core machine).", "",
             f"Every method trains the same PeerMLP from the same initial weights (per seed) for at most "
             f"{a.peer_steps} steps of batch 256, Adam lr 1e-3, within {a.peer_budget:g} CPU s. W2: exact "
             f"2-Wasserstein distance between {a.n_eval} samples (Euler with NFE n, or dopri5 at rtol 1e-5) and "
             f"{a.n_eval} held-out target samples; floor: W2 between two target sets of that size (mean of 3). "
             "Mean over seeds.", ""]
    for name, runs in res.items():
        floor = _mean([r["floor"] for r in runs])
        lines += [f"## {name}: W2 against NFE (floor {floor:.3f} +- {runs[0]['floor_std']:.3f})", "",
                  "| method | steps | CPU ms/step | straightness | " + " | ".join(f"NFE {n}" for n in NFES)
                  + " | dopri5 (NFE) |", "|---" * (len(NFES) + 5) + "|"]
        for m in runs[0]["rows"]:
            rs = [r["rows"][m] for r in runs]
            lines.append(f"| {m} | {', '.join(str(r['steps']) for r in rs)} | {1e3 * runs[0]['step_s'][m]:.2f} | "
                         f"{_mean([r['straightness'] for r in rs]):.3f} | "
                         + " | ".join(f"{_mean([r[n] for r in rs]):.3f}" for n in NFES)
                         + f" | {_mean([r['dopri5'] for r in rs]):.3f} ({_mean([r['dopri5 nfe'] for r in rs]):.0f}) |")
        lines += ["", "NFE needed for W2 <= tau, tau = 1.1 x the worse converged (dopri5) W2 of our two couplings "
                  "(per seed):", ""]
        for m in runs[0]["rows"]:
            need = []
            for r in runs:
                tau = 1.1 * max(r["rows"]["ours, ot"]["dopri5"], r["rows"]["ours, independent"]["dopri5"])
                need.append(f"{_needed(r['rows'][m], tau)} (tau {tau:.3f})")
            lines.append(f"- {m}: {', '.join(need)}")
        lines += ["", f"One reflow round (4096 pairs from 32 Heun steps, {a.peer_steps} fitting steps), W2 of the "
                  f"reflowed net (floor {floor:.3f}, goal: one-step W2 <= 2 x floor = {2 * floor:.3f}):", "",
                  "| reflowed from | straightness | NFE 1 | NFE 2 | NFE 4 | NFE 1 / floor |", "|---" * 6 + "|"]
        for m in runs[0]["reflow"]:
            rs = [r["reflow"][m] for r in runs]
            one = _mean([r[1] for r in rs])
            lines.append(f"| {m} | {_mean([r['straightness'] for r in rs]):.4f} | {one:.3f} | "
                         f"{_mean([r[2] for r in rs]):.3f} | {_mean([r[4] for r in rs]):.3f} | {one / floor:.2f} |")
        lines.append("")
    return lines


def _median_ms(fn, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1e3 * statistics.median(times)


def part_solvers(a) -> list[str]:
    """CPU time of one minibatch OT pairing: ours (scipy's Hungarian) against torchcfm's (POT's network simplex)."""
    import ot as pot
    from scipy.optimize import linear_sum_assignment
    from torchcfm.optimal_transport import OTPlanSampler

    sampler, g = OTPlanSampler("exact"), torch.Generator().manual_seed(7)
    lines = ["# Minibatch OT pairing: CPU time per batch", "",
             "Command: `PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/interpolants.py --part solvers` "
             "(8 Gaussians and moons batches; median of 15 calls, CPU ms).", "",
             "| batch | ours: `couple('ot')` | its `linear_sum_assignment` | torchcfm: `sample_plan` | its `ot.emd` |",
             "|---|---|---|---|---|"]
    for n in (128, 256, 512):
        x0, x1 = moons(n, g), eight_gaussians(n, g)
        cost = torch.cdist(x0.double(), x1.double()).pow(2).numpy()
        u = pot.unif(n)
        calls = (lambda: I.couple("ot", x0, x1), lambda: linear_sum_assignment(cost),  # noqa: B023 - run at once
                 lambda: sampler.sample_plan(x1, x0), lambda: pot.emd(u, u, cost))  # noqa: B023
        row = [_median_ms(c) for c in calls]
        lines.append(f"| {n} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return lines


# ---------------------------------------------------------------------- results file

PARTS = {"couplings": part_couplings, "peers": part_peers, "solvers": part_solvers, "digits": part_digits,
         "blending": part_blending}


def _replace_section(text: str, part: str, body: str) -> str:
    start, end = f"<!-- part: {part} -->", f"<!-- end: {part} -->"
    block = f"{start}\n{body}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", nargs="+", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=400, help="couplings: fitting steps")
    p.add_argument("--budget", type=float, default=25.0, help="couplings: CPU seconds per fit (process time)")
    p.add_argument("--tol", type=float, default=0.05, help="couplings: RMS distance from the converged solution")
    p.add_argument("--peer-steps", type=int, default=2000, help="peers, blending (2-D): training steps")
    p.add_argument("--peer-budget", type=float, default=40.0, help="peers, blending (2-D): CPU seconds per fit")
    p.add_argument("--n-eval", type=int, default=1000, help="2-D: samples per W2")
    p.add_argument("--digit-steps", type=int, default=1500, help="digits: training steps")
    p.add_argument("--digit-budget", type=float, default=40.0, help="digits: CPU seconds per fit")
    p.add_argument("--n-digits", type=int, default=1000, help="digits: samples per FD")
    p.add_argument("--out", default=str(RESULTS / "interpolants.md"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    for part in a.part:
        body = "\n".join(PARTS[part](a)) + "\n"
        print(body, flush=True)
        path = Path(a.out)
        write_results(path, _replace_section(path.read_text() if path.exists() else "", part, body))


if __name__ == "__main__":
    main()
