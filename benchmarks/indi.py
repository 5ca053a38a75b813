"""InDI on the 8x8 digits: PSNR and Fréchet distance against the number of restoration steps, next to a
one-step MMSE regressor of the same network and budget (the perception-distortion trade).

    python -m benchmarks.indi                                  # downsample, block, blur: ~10 CPU-minutes
    python -m benchmarks.indi --minutes 0.2 --regressor-minutes 0.1 --n 200 --out $WORK/i.md     # smoke test

Per degradation (:data:`diffusionlens.interpolants.DEGRADATIONS`, given as KIND:LEVEL): an InDI run,
``TrainConfig(dataset="digits", objective="interpolant", objective_options={"source": "degraded:KIND:LEVEL",
"coupling": "paired"}, process="flow", param="velocity")`` with the default UNet, trained for ``--minutes``
of **CPU time of this process** (``clock="process"``); and a direct MMSE regressor, the same objective
with t confined to [1 - 1e-3, 1 - 1e-6] (it only ever sees the degraded image and learns E[x0 | y]), trained
for ``--regressor-minutes``. Both restore the first ``--n`` test images degraded with a fixed seed;
InDI in n = 1, 2, 4, ... uniform steps (``diffusionlens.interpolants.indi_restore``; n = 1 is InDI's own
MMSE estimate), clamped to [-1, 1].

Metrics: PSNR (peak-to-peak 2, the images' [-1, 1] range) against the clean images, mean ± standard
error over images; Fréchet distance in the digits classifier's features
(:func:`diffusionlens.evaluate.image_frechet`) of the restorations of the first ``--n`` test images
against the *other* test images (a restoration is not compared with its own original); its floor is
the clean first ``--n`` against the same others.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusionlens.data import load_dataset
from diffusionlens.evaluate import image_frechet
from diffusionlens.features import load_classifier
from diffusionlens.interpolants import indi_restore, net_velocity, psnr
from diffusionlens.interpolants.objective import source_of
from diffusionlens.training import TrainConfig, load_denoiser, train

from ._write import write_results


def _train(spec: str, minutes: float, seed: int, regressor: bool, root: Path):
    cfg = TrainConfig(dataset="digits", seed=seed, objective="interpolant",
                      objective_options={"source": f"degraded:{spec}", "coupling": "paired"}, process="flow",
                      param="velocity", steps=None, minutes=minutes, clock="process",
                      **({"t_min": 1 - 1e-3, "t_max": 1 - 1e-6} if regressor else {}))
    c0 = time.process_time()
    res = train(cfg, root / ("regressor" if regressor else "indi"), progress=False)
    den, _ = load_denoiser(root / ("regressor" if regressor else "indi"))
    return net_velocity(den.net.eval()), res.step, time.process_time() - c0


def _row(name, x, clean, test, clf, floor_x) -> dict:
    p = psnr(x, clean)
    fd = image_frechet(x.clamp(-1, 1), test, classifier=clf, floor_samples=floor_x)
    return {"method": name, "psnr": float(p.mean()), "psnr_se": float(p.std() / math.sqrt(p.numel())),
            "fd": fd["fd"], "floor": fd["fd_floor"]}


def run_degradation(spec: str, a, clf, clean, ref) -> list[dict]:
    y = source_of(f"degraded:{spec}", load_dataset("digits", "test"))(clean, torch.Generator().manual_seed(1234))
    rows = [{"degradation": spec, **_row("degraded input", y, clean, ref, clf, clean)}]
    print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        v, steps, cpu = _train(spec, a.minutes, a.seed, False, Path(tmp))
        for n in a.steps:
            x = indi_restore(v, y, n).clamp(-1, 1)
            rows.append({"degradation": spec, **_row(f"InDI, n = {n}", x, clean, ref, clf, clean),
                         "train_steps": steps, "train_cpu_s": cpu})
            print(rows[-1], flush=True)
        v, steps, cpu = _train(spec, a.regressor_minutes, a.seed, True, Path(tmp))
        x = indi_restore(v, y, 1).clamp(-1, 1)
        rows.append({"degradation": spec, **_row("MMSE regressor (t near 1 only)", x, clean, ref, clf, clean),
                     "train_steps": steps, "train_cpu_s": cpu})
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| degradation | method | PSNR (dB) | FD | FD floor | training steps | training CPU-s |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        tr = f"{r['train_steps']} | {r['train_cpu_s']:.0f}" if "train_steps" in r else "— | —"
        out.append(f"| {r['degradation']} | {r['method']} | {r['psnr']:.2f} ± {r['psnr_se']:.2f} | {r['fd']:.2f} | "
                   f"{r['floor']:.2f} | {tr} |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--degradations", nargs="+", default=["downsample:2", "block:0.5", "blur:1.0"])
    p.add_argument("--minutes", type=float, default=2.5, help="CPU-minutes of InDI training per degradation")
    p.add_argument("--regressor-minutes", type=float, default=0.75,
                   help="CPU-minutes of the MMSE regressor's training per degradation")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--n", type=int, default=150, help="test images restored; FD against the rest of the 300")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/indi.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    clf = load_classifier("digits")
    test = load_dataset("digits", "test").x
    clean, ref = test[: a.n], test[a.n:]  # restore one part, compare its law with the other's
    t0, c0 = time.perf_counter(), time.process_time()
    rows = [r for spec in a.degradations for r in run_degradation(spec, a, clf, clean, ref)]
    command = f"`{' '.join(['python -m benchmarks.indi', *(sys.argv[1:] if argv is None else argv)])}`"
    setup = (f"{a.minutes:g} CPU-minutes of InDI training and {a.regressor_minutes:g} of the regressor's per "
             f"degradation, default UNet, batch {TrainConfig().batch_size}; the first {a.n} test images restored, "
             f"FD against the other {ref.shape[0]} (floor: the {a.n} clean images against them); "
             f"{torch.get_num_threads()} thread(s), "
             f"torch {torch.__version__}, {platform.machine()}; {time.process_time() - c0:.0f} CPU-s, "
             f"{time.perf_counter() - t0:.0f} s wall.")
    text = (f"# InDI on the digits: PSNR and Fréchet distance against restoration steps\n\nCommand: {command}\n\n"
            f"{setup}\n\n{table(rows)}\n")
    write_results(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
