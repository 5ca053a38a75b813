"""Couplings against each other on the exact oracle: straightness of the learned paths and the NFE
each needs.

Target: the 2-D ring of 8 Gaussians (`oracle.ring()`), source N(0, I). For each coupling
(independent, minibatch OT, Sinkhorn) and seed, a small velocity network is fitted with the same
steps, batch and CPU-time cap (`interpolants.fit`, process-time budget `--budget` seconds per fit);
the exact velocity of the independent coupling (`ExactVelocity`) is the reference row. Reported:
mean straightness on held-out sources (Liu et al.'s S, 16 Heun steps), and the quality of Euler
sampling with n steps (NFE = n) as the mean exact log-density of the samples under the target
(nats; the target's own samples give the ceiling, -entropy). "NFE needed" is the smallest tried NFE
whose log-density is within `--tol` nats of that ceiling. Every number is a mean over the seeds
(each with its own fit and held-out draw).

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


def _row(velocity, gm, x1, ceiling, tol):
    s = float(I.straightness(velocity, x1, steps=16).mean())
    lp = {n: float(gm.log_prob(I.transport(velocity, x1, steps=n, method="euler").x).mean()) for n in NFES}
    need = next((n for n in NFES if lp[n] >= ceiling - tol), None)
    return s, lp, need


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--budget", type=float, default=40.0, help="CPU seconds per fit (process time)")
    p.add_argument("--tol", type=float, default=0.5, help="nats below the ceiling that count as converged")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "interpolants.md"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    gm, src = oracle.ring(), I.standard_normal(2)
    rows: dict[str, list] = {}
    cpu0 = time.process_time()
    for seed in a.seeds:
        g = torch.Generator().manual_seed(1000 + seed)
        x1 = src.sample(2000, g)
        ceiling = float(gm.log_prob(gm.sample(20000, g)).mean())
        rows.setdefault("exact (independent)", []).append(_row(I.ExactVelocity(gm, src), gm, x1, ceiling, a.tol))
        for coupling in ("independent", "ot", "sinkhorn"):
            torch.manual_seed(seed)
            net = TinyVelocity().double()

            def draw(n, gen, coupling=coupling):
                x0 = gm.sample(n, gen)
                return x0, I.couple(coupling, x0, src.sample(n, gen), gen)

            t0 = time.process_time()
            losses = I.fit(net, draw, steps=a.steps, batch_size=256, lr=3e-3, seed=seed, budget_s=a.budget)
            print(f"seed {seed} {coupling}: {len(losses)} steps in {time.process_time() - t0:.1f} CPU s", flush=True)
            rows.setdefault(f"trained, {coupling}", []).append(_row(I.net_velocity(net), gm, x1, ceiling, a.tol))
    lines = [
        "# Couplings on the oracle: straightness and NFE",
        "",
        f"Command: `PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/interpolants.py --seeds "
        f"{' '.join(map(str, a.seeds))} --steps {a.steps} --budget {a.budget:g} --tol {a.tol:g}` "
        f"({time.process_time() - cpu0:.0f} CPU s in all, one thread, on a shared 2-core machine).",
        "",
        "Target ring of 8 Gaussians (std 0.05), source N(0, I); mean over seeds. Log-density: mean exact",
        "log p_target of Euler samples at each NFE (nats; ceiling = -entropy of the target, "
        f"{ceiling:.2f} for the last seed). NFE needed: smallest NFE within {a.tol:g} nats of the ceiling.",
        "",
        "| velocity | straightness | " + " | ".join(f"NFE {n}" for n in NFES) + " | NFE needed (per seed) |",
        "|---" * (len(NFES) + 3) + "|",
    ]
    for name, rs in rows.items():
        s = sum(r[0] for r in rs) / len(rs)
        lp = [sum(r[1][n] for r in rs) / len(rs) for n in NFES]
        need = ", ".join(str(r[2]) if r[2] is not None else f">{NFES[-1]}" for r in rs)
        lines.append(f"| {name} | {s:.4f} | " + " | ".join(f"{v:.2f}" for v in lp) + f" | {need} |")
    text = "\n".join(lines) + "\n"
    write_results(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
