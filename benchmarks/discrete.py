"""Discrete diffusion against an autoregressive baseline at equal size and equal CPU time.

For each token data set (digits17: 8x8 digits as 17-level images; text: 64-character sequences of
Python's documentation topics) the same small TokenTransformer is trained for the same process CPU
time (``--cpu-minutes`` per model, ``clock="process"``) through the generic training loop with each
objective: ``masked`` (MDLM / MD4), ``d3pm-absorbing``, ``d3pm-uniform``, and a causal copy trained
by next-token cross-entropy (the ``autoregressive`` objective, registered by this script only). Then:

* test bits per token: the negative ELBO (masked: ``n_t`` stratified times per sequence; D3PM: the
  one-step estimate averaged over ``n_t`` draws) -- an upper bound -- and the AR model's exact NLL;
* sampling quality against steps (8/16/32/64) for ancestral, tau-leaping and MaskGIT (masked model):
  digits17: Fréchet distance in the digits classifier's features (tokens v mapped to v / 8 - 1), next
  to the floor (train images against test images); text: the AR model's NLL of the samples
  ("generative perplexity", bits per character) and the samples' unigram entropy, next to the test
  text's own.

Rows are written to the results file as they finish, so an interrupted run keeps what it measured.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/discrete.py --cpu-minutes 1.5
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._write import write_results  # noqa: E402
from diffusionlens.data import load_dataset  # noqa: E402
from diffusionlens.discrete import run as drun  # noqa: E402
from diffusionlens.objectives import OBJECTIVES, Objective  # noqa: E402
from diffusionlens.training import TrainConfig, load_denoiser, train  # noqa: E402

OBJS = ("autoregressive", "masked", "d3pm-absorbing", "d3pm-uniform")  # the baseline first: rows compare to it


class Autoregressive(Objective):
    """Next-token cross-entropy of a causal TokenTransformer, per token (the baseline)."""

    def __call__(self, model, batch, rng):
        x0 = batch.local(batch.x0)
        net = getattr(model, "net", model)
        logits = net(x0, torch.zeros(x0.shape[0], device=x0.device))
        lp = torch.log_softmax(logits.double(), -1)
        return -torch.gather(lp, -1, x0[..., None]).reshape(x0.shape[0], -1).mean(-1).float()


def _spec(data, objective: str, dim: int, depth: int) -> dict:
    L = math.prod(data.data_shape)
    states = data.vocab if objective in ("d3pm-uniform", "autoregressive") else data.vocab + 1
    return {"kind": "token-transformer", "vocab": data.vocab, "length": L, "shape": list(data.data_shape),
            "states": states, "dim": dim, "depth": depth, "heads": 4, "causal": objective == "autoregressive"}


def _train(name, objective, args, root: Path):
    data = load_dataset(name, "train")
    cfg = TrainConfig(dataset=name, objective=objective, steps=None, minutes=args.cpu_minutes, clock="process",
                      batch_size=64, lr=1e-3, warmup_steps=50, net=_spec(data, objective, args.dim, args.depth),
                      ckpt_every=0, log_every=50)
    t0 = time.process_time()
    res = train(cfg, root / f"{name}-{objective}", overwrite=True, progress=False)
    return res, time.process_time() - t0


def _ar_nll(path: Path, x: torch.Tensor) -> torch.Tensor:
    """(batch,) exact NLL in bits per token of the causal model at ``path``."""
    den, _ = load_denoiser(path)
    net = den.net.eval()
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], 256):
            xb = x[s : s + 256]
            lp = torch.log_softmax(net(xb, torch.zeros(xb.shape[0])).double(), -1)
            out.append(-torch.gather(lp, -1, xb[..., None]).reshape(xb.shape[0], -1).mean(-1) / math.log(2))
    return torch.cat(out)


def _bits(name, objective, root, test, n_t):
    path = root / f"{name}-{objective}"
    if objective == "autoregressive":
        b = _ar_nll(path, test.x)
    else:
        r = drun.open_run(path)
        b = drun.elbo(r, test.x, n_t=n_t) / (math.prod(r.shape) * math.log(2))
    return float(b.mean()), float(b.std() / math.sqrt(len(b)))


def _entropy(x: torch.Tensor, vocab: int) -> float:
    p = torch.bincount(x.reshape(-1), minlength=vocab).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def _quality(name, root, args, test, lines):
    r = drun.open_run(root / f"{name}-masked")
    if name == "digits17":
        from diffusionlens.evaluate import image_frechet

        ref = test.x[:, None].float() / 8 - 1
        floor = image_frechet(load_dataset("digits17", "train").x[: args.n_samples, None].float() / 8 - 1, ref)
        lines.append(f"\nFréchet distance (digits classifier features, {args.n_samples} samples vs the "
                     f"{len(ref)} test images; floor = train images: {floor['fd']:.2f})\n")
    else:
        ar = root / f"{name}-autoregressive"
        own = float(_ar_nll(ar, test.x[: args.n_samples]).mean())
        lines.append(f"\nText: AR model's NLL of the samples, bits/char (the test text's own: {own:.3f}; "
                     f"unigram entropy of the test text {_entropy(test.x, test.vocab):.3f} bits)\n")
    lines.append("| sampler | " + " | ".join(f"{s} steps" for s in args.steps) + " |")
    lines.append("|---" * (len(args.steps) + 1) + "|")
    for sampler in ("ancestral", "tau-leaping", "maskgit"):
        cells = []
        for steps in args.steps:
            x = drun.sample(r, args.n_samples, sampler=sampler, steps=steps, seed=1)
            if name == "digits17":
                cells.append(f"{image_frechet(x[:, None].float() / 8 - 1, ref)['fd']:.2f}")
            else:
                gen = float(_ar_nll(root / f"{name}-autoregressive", x).mean())
                cells.append(f"{gen:.3f} (H {_entropy(x, test.vocab):.2f})")
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
        yield


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-minutes", type=float, default=1.5, help="process CPU minutes of training per model")
    ap.add_argument("--datasets", default="digits17,text")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--n-t", type=int, default=4, help="ELBO draws per test sequence")
    ap.add_argument("--n-samples", type=int, default=200)
    ap.add_argument("--steps", default="8,16,32,64")
    ap.add_argument("--runs", default="runs/bench-discrete")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "discrete.md"))
    args = ap.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",")]
    OBJECTIVES["autoregressive"] = lambda cfg, data: Autoregressive()
    root = Path(args.runs)
    cmd = "OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/discrete.py " + " ".join(argv or sys.argv[1:])
    lines = ["# Discrete diffusion vs an autoregressive baseline (equal size, equal CPU time)", "",
             f"Command: `{cmd}`", "",
             f"Each model: TokenTransformer dim {args.dim}, depth {args.depth}, 4 heads, batch 64, lr 1e-3, "
             f"{args.cpu_minutes} process-CPU minutes of training on one thread (shared 2-core machine). "
             f"Test bits/token: negative ELBO ({args.n_t} draws per sequence; an upper bound) for the "
             "diffusion models, exact NLL for the AR model; ± one standard error over sequences.", ""]
    for name in args.datasets.split(","):
        test = load_dataset(name, "test")
        lines += [f"## {name}", "", "| objective | steps trained | train CPU s | test bits/token | vs AR |",
                  "|---|---|---|---|---|"]
        ar_bits = None
        for obj in OBJS:
            res, cpu = _train(name, obj, args, root)
            bits, se = _bits(name, obj, root, test, args.n_t)
            ar_bits = bits if obj == "autoregressive" else ar_bits
            rel = "baseline" if obj == "autoregressive" else f"{100 * (bits / ar_bits - 1):+.0f} %"
            lines.append(f"| {obj} | {res.step} | {cpu:.0f} | {bits:.3f} ± {se:.3f} | {rel} |")
            write_results(args.out, "\n".join(lines) + "\n")
        for _ in _quality(name, root, args, test, lines):
            write_results(args.out, "\n".join(lines) + "\n")
        lines.append("")
    write_results(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
