"""Couplings against each other on the exact oracle: straightness of the learned paths and the NFE
each needs.

Target: the 2-D ring of 8 Gaussians (`oracle.ring()`), source N(0, I). For each coupling
(independent, minibatch OT, Sinkhorn) and seed, a small velocity network is fitted with the same
steps, batch and CPU-time cap (`interpolants.fit`, process-time budget `--budget` seconds per fit);
the exact velocity of the independent coupling (`ExactVelocity`) is the reference row. Reported:
mean straightness on held-out sources (Liu et al.'s S, 16 Heun steps); the RMS distance of Euler
sampling with n steps (NFE = n) from the same velocity's converged ODE solution (dopri5, rtol = atol
= 1e-6), which isolates what the coupling does to the NFE from how well the net was fitted; "NFE
needed" is the smallest tried NFE within `--tol` (default 0.05, the ring's mode std) of it; and the
fit's quality, the mean exact log-density of the converged samples under the target (nats; the
target's own samples give the ceiling, -entropy). Every number is a mean over the seeds (each with
its own fit and held-out draw); "steps" is what each fit reached within its budget.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/interpolants.py --seeds 0 1 --steps 400 --budget 40
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import diffusionlens.interpolants as I
from diffusionlens import oracle

try:
    from benchmarks._write import write_results
except ImportError:  # run as a script from the repository root
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


def _row(velocity, gm, x1, tol):
    s = float(I.straightness(velocity, x1, steps=16).mean())
    ref = I.transport(velocity, x1, method="dopri5", rtol=1e-6, atol=1e-6).x
    rms = {n: float((I.transport(velocity, x1, steps=n, method="euler").x - ref).pow(2).sum(1).mean().sqrt())
           for n in NFES}
    need = next((n for n in NFES if rms[n] <= tol), None)
    return s, rms, need, float(gm.log_prob(ref).mean())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--budget", type=float, default=40.0, help="CPU seconds per fit (process time)")
    p.add_argument("--tol", type=float, default=0.05, help="RMS distance from the converged solution that counts")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "interpolants.md"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
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
        f"Command: `PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/interpolants.py --seeds "
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
        s = sum(r[0] for r in rs) / len(rs)
        rms = [sum(r[1][n] for r in rs) / len(rs) for n in NFES]
        need = ", ".join(str(r[2]) if r[2] is not None else f">{NFES[-1]}" for r in rs)
        lp = sum(r[3] for r in rs) / len(rs)
        st = ", ".join(map(str, steps.get(name, ["-"])))
        lines.append(f"| {name} | {st} | {s:.4f} | " + " | ".join(f"{v:.3f}" for v in rms) + f" | {need} | {lp:.2f} |")
    text = "\n".join(lines) + "\n"
    write_results(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
