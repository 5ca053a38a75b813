"""Discrete diffusion against an autoregressive baseline at equal size and equal CPU time.

For each token data set (digits17: 8x8 digits as 17-level images; text: 64-character sequences of
Python's documentation topics; mnist-binary: 28x28 binarized MNIST) the same small TokenTransformer is
trained for the same process CPU time (``--cpu-minutes`` per model, ``clock="process"``) through the
generic training loop with each objective: ``masked`` (MDLM / MD4), ``ctmc-uniform`` (uniform
corruption in continuous time, its CTMC ELBO), ``d3pm-absorbing``, ``d3pm-uniform``, and a causal copy
trained by next-token cross-entropy (the ``autoregressive`` objective, registered by this script only).
On digits17 also ``analog-bits``: the tokens' +-1 bits as 5 channels, the compact UNet with
self-conditioning, the denoising loss (Chen et al. 2022), the same CPU time. Then:

* test bits per token: the negative ELBO (continuous time: ``n_t`` stratified times per sequence; D3PM:
  the one-step estimate averaged over ``n_t`` draws) -- an upper bound -- and the AR model's exact NLL;
  none for analog bits (no bound on token probabilities: see ``diffusionlens.discrete.analog``);
* sampling quality against steps: images: Fréchet distance in the data set's classifier features
  (digits17: v / 8 - 1; mnist-binary: 2 v - 1) next to the floor (train images against test images);
  text: the AR model's NLL of the samples ("generative perplexity", bits per character) and the
  samples' unigram entropy, next to the test text's own. MaskGIT three ways: pure confidence order
  (choice temperature 0), the reference decoder's annealed Gumbel noise (4.5, the default), random order.

Rows are written to the results file as they finish, so an interrupted run keeps what it measured.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/discrete.py --cpu-minutes 2
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
from diffusionlens.discrete import analog  # noqa: E402
from diffusionlens.discrete import run as drun  # noqa: E402
from diffusionlens.objectives import OBJECTIVES, Objective  # noqa: E402
from diffusionlens.training import TrainConfig, load_denoiser, train  # noqa: E402

OBJS = {  # the baseline first: rows compare to it
    "digits17": ("autoregressive", "masked", "ctmc-uniform", "d3pm-absorbing", "d3pm-uniform", "analog-bits"),
    "text": ("autoregressive", "masked", "ctmc-uniform", "d3pm-absorbing", "d3pm-uniform"),
    "mnist-binary": ("autoregressive", "masked"),
}
# (row label, run, sampler, options); a row is measured when its run was trained
ROWS = (("ancestral", "masked", "ancestral", {}), ("tau-leaping", "masked", "tau-leaping", {}),
        ("maskgit, confidence order (choice T 0)", "masked", "maskgit", {"choice_temperature": 0.0}),
        ("maskgit, reference (choice T 4.5, default)", "masked", "maskgit", {}),
        ("maskgit, random order", "masked", "maskgit", {"choice_temperature": math.inf}),
        ("ctmc-uniform, ancestral", "ctmc-uniform", "ancestral", {}),
        ("ctmc-uniform, tau-leaping", "ctmc-uniform", "tau-leaping", {}),
        ("analog bits, heun (NFE 2 x steps - 1)", "analog-bits", "heun", {}))
BATCH = {"mnist-binary": 16}  # 784 tokens a sequence: more, smaller steps in the same CPU time
ANALOG_SIZE = {"channels": 16, "emb_dim": 32, "channel_mult": [1, 2]}  # about the token models' size
MNIST_ROWS = ("ancestral", "maskgit, reference (choice T 4.5, default)")  # 784 tokens: the costly set
MNIST_STEPS = (16,)


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
    masked = objective in ("masked", "d3pm-absorbing")
    return {"kind": "token-transformer", "vocab": data.vocab, "length": L, "shape": list(data.data_shape),
            "states": data.vocab + masked, "dim": dim, "depth": depth, "heads": 4,
            "causal": objective == "autoregressive"}


def _train(name, objective, args, root: Path):
    data = load_dataset(name, "train")
    cfg = TrainConfig(dataset=name, objective=objective, steps=None, minutes=args.cpu_minutes, clock="process",
                      batch_size=BATCH.get(name, 64), lr=1e-3, warmup_steps=50, ckpt_every=0, log_every=50)
    if objective == "analog-bits":
        cfg = analog.config(cfg)
        cfg = cfg.replace(net={**cfg.net, **ANALOG_SIZE})
    else:
        cfg = cfg.replace(net=_spec(data, objective, args.dim, args.depth))
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


def _images(name, x: torch.Tensor) -> torch.Tensor:
    return x[:, None].float() / 8 - 1 if name == "digits17" else x[:, None].float() * 2 - 1


def _draw(name, root, label, objective, sampler, options, steps, n):
    path = root / f"{name}-{objective}"
    if objective == "analog-bits":
        return analog.sample_run(path, n, sampler=sampler, steps=steps, seed=1)
    return drun.sample(drun.open_run(path), n, sampler=sampler, steps=steps, seed=1, **options)


def _quality(name, root, args, test, lines):
    """The sampling-quality table of one data set, a row at a time (yields after each row)."""
    image = name != "text"
    steps = MNIST_STEPS if name == "mnist-binary" else args.steps
    if image:
        from diffusionlens.evaluate import image_frechet

        clf = "digits" if name == "digits17" else "mnist"
        ref = _images(name, test.x)
        floor = image_frechet(_images(name, load_dataset(name, "train").x[: args.n_samples]), ref, dataset=clf)
        lines.append(f"\nFréchet distance ({clf} classifier features, {args.n_samples} samples vs the "
                     f"{len(ref)} test images; floor = {args.n_samples} train images: {floor['fd']:.2f})\n")
    else:
        own = float(_ar_nll(root / f"{name}-autoregressive", test.x[: args.n_samples]).mean())
        lines.append(f"\nText: AR model's NLL of the samples, bits/char (the test text's own: {own:.3f}; "
                     f"unigram entropy of the test text {_entropy(test.x, test.vocab):.3f} bits)\n")
    lines.append("| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |")
    lines.append("|---" * (len(steps) + 1) + "|")
    for label, objective, sampler, options in ROWS:
        if objective not in OBJS[name] or (name == "mnist-binary" and label not in MNIST_ROWS):
            continue
        cells = []
        for s in steps:
            x = _draw(name, root, label, objective, sampler, options, s, args.n_samples)
            if image:
                cells.append(f"{image_frechet(_images(name, x), ref, dataset=clf)['fd']:.2f}")
            else:
                gen = float(_ar_nll(root / f"{name}-autoregressive", x).mean())
                cells.append(f"{gen:.3f} (H {_entropy(x, test.vocab):.2f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        yield


def _header(args, argv) -> list[str]:
    cmd = "OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/discrete.py " + " ".join(argv or sys.argv[1:])
    return ["# Discrete diffusion vs an autoregressive baseline (equal size, equal CPU time)", "",
            f"Command: `{cmd}`", "",
            f"Token models: TokenTransformer dim {args.dim}, depth {args.depth}, 4 heads; analog bits: the compact "
            "UNet at about the same size (channels 16, levels 1-2, bits as channels, self-conditioning). "
            "Batch 64 (mnist-binary 16), lr 1e-3, "
            f"{args.cpu_minutes} process-CPU minutes of training per model on one thread (shared 2-core "
            f"machine). Test bits/token: negative ELBO ({args.n_t} draws per sequence; an upper bound) for the "
            "diffusion models, exact NLL for the AR model; ± one standard error over sequences"
            + (f" (the first {args.n_test} test sequences)." if args.n_test else "."), ""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-minutes", type=float, default=2.0, help="process CPU minutes of training per model")
    ap.add_argument("--datasets", default="digits17,text,mnist-binary")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--n-t", type=int, default=4, help="ELBO draws per test sequence")
    ap.add_argument("--n-samples", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=None, help="test sequences scored (default: the whole split)")
    ap.add_argument("--steps", default="8,16,32,64")
    ap.add_argument("--runs", default="runs/bench-discrete")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "discrete.md"))
    args = ap.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",")]
    OBJECTIVES["autoregressive"] = lambda cfg, data: Autoregressive()
    root = Path(args.runs)
    lines = _header(args, argv)
    for name in args.datasets.split(","):
        test = load_dataset(name, "test", n=args.n_test)
        lines += [f"## {name}", "", "| objective | params | steps trained | train CPU s | test bits/token | vs AR |",
                  "|---|---|---|---|---|---|"]
        ar_bits = None
        for obj in OBJS[name]:
            res, cpu = _train(name, obj, args, root)
            if obj == "analog-bits":
                bits = "no bound (see reading)"
                rel = "—"
            else:
                b, se = _bits(name, obj, root, test, args.n_t)
                ar_bits = b if obj == "autoregressive" else ar_bits
                bits = f"{b:.3f} ± {se:.3f}"
                rel = "baseline" if obj == "autoregressive" else f"{100 * (b / ar_bits - 1):+.0f} %"
            lines.append(f"| {obj} | {res.num_params / 1e3:.0f}k | {res.step} | {cpu:.0f} | {bits} | {rel} |")
            write_results(args.out, "\n".join(lines) + "\n")
        for _ in _quality(name, root, args, test, lines):
            write_results(args.out, "\n".join(lines) + "\n")
        lines.append("")
    write_results(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
