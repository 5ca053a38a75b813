"""The command line's arguments: value types, shared argument groups and one parser builder per command.

Choices come from the library's own registries and enums (``DATASETS``, ``PROCESSES``, ``SAMPLERS``,
``Grid``, ``Param``, ``Density``, ``Weighting``), so a new entry there is offered here without an edit.
An option left unset is None, so that a command can tell "given" from "default" and reject options
that do not apply.
"""

from __future__ import annotations

import argparse
import math
import textwrap

from .run._core import MAIN_STEPS

TRAIN_FLAGS = {  # CLI flag -> TrainConfig field, for flags that override the config file
    "dataset": "dataset", "seed": "seed", "process": "process", "param": "param", "density": "density",
    "weighting": "weighting", "batch_size": "batch_size", "lr": "lr", "warmup_steps": "warmup_steps",
    "cooldown": "cooldown", "clock": "clock", "ema": "ema", "label_dropout": "label_dropout",
    "log_every": "log_every", "ckpt_every": "ckpt_every", "n_train": "n_train",
    "objective": "objective",
    "net": "net",
}


class UsageError(ValueError):
    """Bad command-line input (reported as one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line naming the bad value (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _fmt(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=100)


# ----------------------------------------------------------------------------- value types


def _number(kind, low: float, strict: bool, what: str):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(v) and (v > low if strict else v >= low)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


positive_int = _number(int, 0, True, "a positive integer")
nonneg_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0, True, "a positive number")
nonneg_float = _number(float, 0, False, "a number >= 0")


def int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 4,8,16, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return vals


def float_list(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.1,0.5,2, got {text!r}") from None
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return vals


def sampler_list(text: str) -> tuple[str, ...]:
    from .run import sweep_entry

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    for n in names:
        try:
            sweep_entry(n)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return names


def net_kind(text: str) -> dict:
    """A network kind, as the spec {"kind": ...} that training completes for the data set."""
    from .nets import NETS

    if text not in NETS:
        raise argparse.ArgumentTypeError(f"unknown network {text!r}; choose one of: {', '.join(NETS)}")
    return {"kind": text}


def device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is checked by torch."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but no CUDA GPU is available")
    return name


# ----------------------------------------------------------------------------- shared groups


def add_common(q, device: bool = True) -> None:
    if device:
        q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU if there is one; default)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")


def add_run_arg(q) -> None:
    q.add_argument("run", help="run directory, or a run name under runs/ (e.g. main)")


def add_sampler_arg(q, what: str = "sampler", default: str | None = None) -> None:
    from .samplers import DEFAULT_SAMPLER, SAMPLERS

    default = default or DEFAULT_SAMPLER
    q.add_argument("--sampler", default=default, choices=list(SAMPLERS), metavar="NAME",
                   help=f"{what} (default {default}; one of {', '.join(SAMPLERS)})")


def add_sweep_samples_arg(q) -> None:
    from .run import SWEEP_SAMPLES

    q.add_argument("--sweep-samples", type=positive_int, help="samples per point of the quality-vs-NFE sweep, its "
                   f"floor measured at the same size (default: the scored samples, at most {SWEEP_SAMPLES})")


def add_sampling_args(q) -> None:
    """--sampler, --steps, --grid, --analytic-start, --teleport, --seed: how samples are drawn."""
    from .samplers import Grid

    add_sampler_arg(q)
    q.add_argument("--steps", type=positive_int, help="grid intervals (default 16; not with --sampler adaptive); "
                                                      "a distilled run: network evaluations (default its fewest)")
    q.add_argument("--grid", choices=[g.value for g in Grid],
                   help="noise-level grid: karras (rho = 7), logsnr (uniform in log sigma), time (uniform in the "
                        "process time), timesteps (a discrete model's own), fitted (steps placed where a pilot "
                        "solve measures the error; diffusionlens.samplers.fitted_grid) or fitted-stop (the fitted "
                        "grid ending where this sampler comes closest to the pilot's exact-flow end points; "
                        "diffusionlens.samplers.stop_grid); default: the sampler's recommended grid")
    q.add_argument("--analytic-start", action="store_true",
                   help="replace the first evaluation, at sigma_max, by the data mean measured on a pilot: one "
                        "NFE fewer for the same grid (diffusionlens.samplers.AnalyticStart)")
    q.add_argument("--teleport", action="store_true",
                   help="with --grid fitted-stop, unconditional runs: start below sigma_max, carried there by the "
                        "exact flow of the Gaussian with the data's mean and covariance measured on the model "
                        "(diffusionlens.samplers.gaussian)")
    add_seed_arg(q, help="seed of the noise (default 0)")


def add_plan_arg(q) -> None:
    q.add_argument("--plan", default="auto", choices=["auto", "none"],
                   help="auto (default): use the sampling plan stored by `diffusionlens tune` when the run has one "
                        "(its tuned grid and start where it holds one for this sampler and NFE); none: ignore it")


def add_data_args(q, n: int) -> None:
    q.add_argument("--n", type=positive_int, default=n, help=f"points (default {n}; at most the split's size)")
    q.add_argument("--split", default="test", choices=["test", "train"], help="data split (default test)")


def add_seed_arg(q, default: int | None = 0, help: str = "seed (default 0)") -> None:
    q.add_argument("--seed", type=nonneg_int, default=default, help=help)


def add_guidance_arg(q) -> None:
    q.add_argument("--guidance", type=nonneg_float, default=1.0,
                   help="classifier-free guidance weight for conditional runs (1 = conditional, 0 = unconditional)")


def add_nfe_arg(q, shown, default=None, what: str = "NFE budgets of the sweep") -> None:
    q.add_argument("--nfe", type=int_list, default=default, help=f"{what} (default {','.join(map(str, shown))})")


def add_dataset_arg(q, default: str | None = None) -> None:
    from .data import DATASETS

    q.add_argument("--dataset", default=default, choices=DATASETS, metavar="NAME",
                   help=f"data set: {', '.join(DATASETS)} (default digits; all ship with the package or are "
                        "generated, nothing is downloaded)")


def add_run_dir_args(q, name: str | None, name_help: str) -> None:
    """--name, --run-dir, --overwrite: where a training job writes its run."""
    q.add_argument("--name", default=name, help=f"run name: the run directory is runs/<name> ({name_help})")
    q.add_argument("--run-dir", help="explicit run directory (overrides --name)")
    q.add_argument("--overwrite", action="store_true", help="start over in a run directory that holds a run: "
                                                            "removes that run's own files (and nothing else) first")


def add_budget_args(q, steps: int) -> None:
    """--steps, --minutes: a training budget (whichever comes first)."""
    q.add_argument("--steps", type=positive_int, help=f"training budget in steps (default {steps} unless --minutes "
                                                      "is given)")
    q.add_argument("--minutes", type=positive_float, help="training budget in minutes (with --steps: whichever comes "
                                                          "first)")


def _sub(sub, name: str, help: str, description: str, epilog: str):
    return sub.add_parser(name, formatter_class=_fmt, help=help, description=textwrap.fill(description, 98),
                          epilog=epilog)


# ----------------------------------------------------------------------------- one builder per command


def _train_parser(sub) -> None:
    from .losses import Density, Weighting
    from .parameterization import Param
    from .training import PROCESSES, TrainConfig

    D = TrainConfig()  # the defaults shown in --help are the library's own
    q = _sub(sub, "train", "train a denoiser (writes a run directory)",
             "Train a denoiser D(x_t/s, sigma) ~ E[x0|x_t] on a data set. Writes runs/<name>/: config.json, "
             "checkpoints/ (safetensors + JSON, atomically), metrics.jsonl (loss and throughput) and result.json. "
             "Budget: --steps and/or --minutes (whichever comes first). Other settings come from the defaults (the "
             "EDM recipe), from the run's own stored configuration (--resume), from --config, and from the flags "
             "below, in that order of precedence.",
             "examples:\n"
             "  diffusionlens train --dataset digits --minutes 3\n"
             "  diffusionlens train --dataset moons --steps 2000 --name moons\n"
             "  diffusionlens train --dataset digits --conditional --process vp --param v\n"
             "  diffusionlens train --name moons --resume --steps 4000    # the stored configuration, more steps\n"
             "  torchrun --standalone --nproc_per_node=2 -m diffusionlens.cli train --dataset mnist")
    add_dataset_arg(q)
    add_run_dir_args(q, None, "default: the data set's name")
    add_budget_args(q, D.steps)
    q.add_argument("--clock", choices=["wall", "process"],
                   help=f"what --minutes measures: wall time or this process's CPU time (default {D.clock})")
    q.add_argument("--process", choices=list(PROCESSES), help=f"noise process (default {D.process})")
    _objective_arg(q, D)
    q.add_argument("--param", choices=[v.value for v in Param],
                   help=f"what the network predicts (default {D.param}; edm = preconditioned)")
    q.add_argument("--density", choices=[v.value for v in Density],
                   help=f"distribution of training noise levels (default {D.density})")
    q.add_argument("--weighting", choices=[v.value for v in Weighting],
                   help=f"loss weighting over noise levels (default {D.weighting})")
    q.add_argument("--batch-size", type=positive_int, help=f"global batch size (default {D.batch_size})")
    q.add_argument("--lr", type=positive_float, help=f"AdamW learning rate (default {D.lr:g})")
    q.add_argument("--warmup-steps", type=nonneg_int, help=f"linear learning-rate warm-up steps (default "
                                                            f"{D.warmup_steps})")
    q.add_argument("--cooldown", type=nonneg_float,
                   help=f"fraction of the budget at the end over which the learning rate falls linearly to 0 "
                        f"(default {D.cooldown:g}; 0 = constant)")
    q.add_argument("--ema", choices=["power", "exp", "none"], help=f"EMA of the weights (default {D.ema}; power = "
                                                                   "EDM2's)")
    q.add_argument("--conditional", action="store_true", help="class-conditional (digits, mnist) with label "
                                                              "dropout, for classifier-free guidance")
    q.add_argument("--label-dropout", type=nonneg_float,
                   help=f"probability of dropping the label (default {D.label_dropout:g})")
    q.add_argument("--n-train", type=positive_int, help="use only the first N training examples")
    add_seed_arg(q, None, "seed of every random choice (default 0)")
    q.add_argument("--log-every", type=positive_int, help="steps between metrics.jsonl lines")
    q.add_argument("--ckpt-every", type=nonneg_int, help="steps between checkpoints (0: only at the end)")
    q.add_argument("--config", help="JSON file of TrainConfig fields (flags given here override it)")
    q.add_argument("--resume", action="store_true", help="continue the run in the run directory exactly where its "
                                                         "last checkpoint left off, with its stored configuration "
                                                         "(flags given here override it)")
    q.add_argument("--compile", action="store_true", help="torch.compile the network (opt-in; slow to start)")
    q.add_argument("--self-condition", action="store_true",
                   help="self-conditioning: the network also sees its previous estimate of x0 (Chen et al. 2022); "
                        "stored in the run, so sampling needs nothing")
    q.add_argument("--experts", type=positive_int, metavar="K",
                   help="train K experts, one per noise range (equal shares of the training density unless "
                        "--expert-boundaries), each for 1/K of the budget, into one run directory")
    q.add_argument("--expert-boundaries", type=float_list, metavar="S1,S2,...",
                   help="noise levels sigma where one expert hands over to the next (increasing, inside the "
                        "training range); K = their number + 1")
    q.add_argument("--base", metavar="RUN",
                   help="with --experts: every expert starts from this trained run (its configuration, weights and "
                        "optimiser state), trained on its own noise range for the budget given here")
    q.add_argument("--net", type=net_kind, metavar="KIND",
                   help="network: unet, mlp or diffusers-unet (diffusers' UNet2DModel, exportable with "
                        "`diffusionlens export-diffusers`; needs the diffusers extra); default: unet for images, "
                        "mlp otherwise")
    _interpolant_args(q)
    add_common(q)


def _sample_parser(sub) -> None:
    q = _sub(sub, "sample", "draw samples from a trained run",
             "Draw samples from a trained run's EMA denoiser with any sampler and step count. Writes "
             "<run>/samples-<sampler>-<steps>.safetensors (tensor 'x', and labels 'y' for conditional runs) and a "
             ".png beside it (an image grid next to real test images, or a scatter plot over held-out points for "
             "2-D data). Prints the NFE (denoiser evaluations per sample). Sample i depends only on the seed and "
             "i: --n 10 gives the first 10 samples of --n 100.",
             "examples:\n"
             "  diffusionlens sample main --sampler dpmpp_2m --steps 10 --n 100\n"
             "  diffusionlens sample main --sampler unipc --steps 9 --grid fitted-stop --analytic-start\n"
             "  diffusionlens sample runs/cond --guidance 2 --label 3")
    add_run_arg(q)
    add_sampling_args(q)
    q.add_argument("--n", type=positive_int, default=100, help="number of samples (default 100)")
    add_guidance_arg(q)
    q.add_argument("--label", type=nonneg_int, help="class of every sample (conditional runs; default: cycle 0-9)")
    q.add_argument("--out", help="output path without extension, in an existing directory (default "
                                 "<run>/samples-<sampler>-<steps>)")
    add_plan_arg(q)
    add_common(q)


def _evaluate_parser(sub) -> None:
    from .run import DEFAULT_NFE, DEFAULT_SWEEP

    q = _sub(sub, "evaluate", "score a run: metric vs floor, quality vs NFE",
             "Sample a trained run and score the samples against the held-out split, each metric next to its noise "
             "floor (the same metric between exact samples). Images: Fréchet distance in the features of the "
             "project's digits classifier, floor = train split vs test split, and test bits/dim. 2-D and oracle "
             "data: sliced W2 and MMD with floors, the true log-density of the samples, the PF-ODE log-likelihood "
             "of test points, and (oracle, ring8) the gap to the exact E[x0|x_t]. Also sweeps several samplers over "
             "NFE budgets. Writes <run>/evaluation.json and samples.safetensors.",
             "examples:\n"
             "  diffusionlens evaluate main\n"
             "  diffusionlens evaluate runs/moons --samplers euler,heun --nfe 4,8,16\n"
             "  diffusionlens evaluate main --no-sweep --bpd-n 0      # quick: headline only")
    add_run_arg(q)
    add_sampler_arg(q, "headline sampler")
    q.add_argument("--steps", type=positive_int, help="headline sampler's steps (default 16; a distilled run: "
                                                      "its fewest)")
    q.add_argument("--n", type=positive_int, help="samples to score (default: the train split's size for images, "
                                                  "5000 otherwise)")
    q.add_argument("--samplers", type=sampler_list,
                   help="comma-separated entries of the quality-vs-NFE sweep, each a sampler or sampler@grid "
                        f"(default {','.join(DEFAULT_SWEEP)})")
    add_nfe_arg(q, DEFAULT_NFE)
    add_sweep_samples_arg(q)
    q.add_argument("--no-sweep", action="store_true", help="skip the quality-vs-NFE sweep")
    q.add_argument("--bpd-n", type=nonneg_int, default=100, help="test points for bits/dim or log-likelihood "
                                                                  "(0 skips; default 100)")
    add_guidance_arg(q)
    add_seed_arg(q)
    add_plan_arg(q)
    add_common(q)


def _tune_parser(sub) -> None:
    from .run.plan import TUNED_NFES, TUNED_SAMPLERS

    q = _sub(sub, "tune", "measure a run's sampling plan once and store it",
             "Solve a pilot on the model once (its error density over the noise levels, the data mean and the "
             "Gaussian moments) and, for each sampler and NFE budget, choose the grid's stop and start that come "
             "closest to the pilot's exact solutions. Writes <run>/plan.json and plan.safetensors (atomically); "
             "sample and evaluate then use it by default (--plan none turns it off). Class-conditional runs: one "
             "pilot per class, the stops chosen on all of them, each class's own mean start.",
             "examples:\n"
             "  diffusionlens tune main\n"
             "  diffusionlens tune runs/moons --samplers unipc --nfe 4,8,16")
    add_run_arg(q)
    q.add_argument("--samplers", type=lambda t: tuple(v.strip() for v in t.split(",") if v.strip()),
                   default=TUNED_SAMPLERS, help=f"comma-separated deterministic samplers (default "
                                                f"{','.join(TUNED_SAMPLERS)})")
    add_nfe_arg(q, TUNED_NFES, TUNED_NFES, "NFE budgets")
    add_common(q)


def _objective_arg(q, D) -> None:
    from .objectives import OBJECTIVES

    q.add_argument("--objective", choices=list(OBJECTIVES), metavar="NAME",
                   help=f"what a training step minimises: {', '.join(OBJECTIVES)} (default {D.objective}). "
                        "consistency-training: improved consistency training from scratch, sampled in 1, 2, 4 "
                        "steps; the distillation objectives need a teacher (use `diffusionlens distill`); masked, "
                        "ctmc-uniform and d3pm-*: discrete diffusion on token data (digits17, mnist-binary, text); "
                        "analog-bits: token data as +-1 bits through the denoising loss (sampled with "
                        "diffusionlens.discrete.analog.sample_run); blurring: blurring diffusion (heat dissipation "
                        "in the DCT basis plus noise); interpolant (or --source/--coupling): velocity matching "
                        "between a source and the data; reflow: see `diffusionlens reflow`")


def _interpolant_args(q) -> None:
    from .interpolants import COUPLINGS, DEGRADATIONS

    q.add_argument("--source", metavar="SPEC",
                   help="interpolant source (implies --objective interpolant, --process flow --param velocity): "
                        "gaussian (default), a data set name, or degraded:KIND[:LEVEL] with KIND one of "
                        f"{', '.join(DEGRADATIONS)} (a paired copy of each training image, for InDI restoration)")
    q.add_argument("--coupling", choices=list(COUPLINGS),
                   help="how source and target samples pair up: independent (default), ot (exact minibatch OT), "
                        "sinkhorn, or paired (default for a degraded source)")


def _restore_parser(sub) -> None:
    from .run.interpolants import RESTORE_STEPS

    q = _sub(sub, "restore", "restore degraded images with an InDI run in n small steps",
             "InDI (Delbracio & Milanfar 2023) with a run trained on a degraded source (train --objective interpolant "
             "--source degraded:KIND --coupling paired): restore degraded images in n uniform steps "
             "x <- x - d v(x, t) from t = 1 to 0 for each n of --steps (n = 1 is the MMSE regressor E[x0|y]) and "
             "print the PSNR against the clean images. Inputs: the --split degraded as in training, or a "
             "safetensors --input holding 'degraded' (or 'x') and optionally 'clean'. Writes <stem>.safetensors, "
             "<stem>.json (PSNR per n) and <stem>.png (degraded | restored | clean).",
             "examples:\n"
             "  diffusionlens train --dataset digits --source degraded:blur:1.0 --minutes 3 --name blur\n"
             "  diffusionlens restore blur --steps 1,4,16\n"
             "  diffusionlens restore blur --input degraded.safetensors --steps 8 --out restored.safetensors")
    add_run_arg(q)
    q.add_argument("--steps", type=int_list, default=RESTORE_STEPS, metavar="N[,N...]",
                   help=f"InDI step counts (default {','.join(map(str, RESTORE_STEPS))})")
    q.add_argument("--split", choices=["test", "train"], help="degrade this split's images (default test)")
    q.add_argument("--input", metavar="FILE.safetensors", help="degraded images to restore instead of a split")
    q.add_argument("--n", type=positive_int, default=256, help="images of the split (default 256)")
    q.add_argument("--seed", type=nonneg_int, default=0, help="seed of the degradation's noise (default 0)")
    q.add_argument("--out", help="output path without extension, in an existing directory (default "
                                 "<run>/restore-<split or input name>)")
    add_common(q)


def _reflow_parser(sub) -> None:
    q = _sub(sub, "reflow", "one reflow round of a Gaussian-source velocity run (rectified flow)",
             "Rectified flow's reflow (Liu et al. 2023): transport --pairs Gaussian samples with the run's velocity "
             "(--solve-steps Heun steps) and train a new velocity on these (sample, noise) pairs, starting from the "
             "run's weights, into an ordinary run directory: its paths are straighter, so it samples in few steps "
             "(diffusionlens sample NEW --steps 1). One round per call; reflow the new run for another.",
             "examples:\n"
             "  diffusionlens train --dataset moons --source gaussian --coupling ot --steps 2000 --name moons-ot\n"
             "  diffusionlens reflow moons-ot --name moons-rf --minutes 1\n"
             "  diffusionlens sample moons-rf --steps 1")
    add_run_arg(q)
    q.add_argument("--name", help="the new run: runs/<name>")
    q.add_argument("--run-dir", help="explicit directory of the new run (overrides --name)")
    q.add_argument("--pairs", type=positive_int, default=4096, help="(sample, noise) pairs (default 4096)")
    q.add_argument("--solve-steps", type=positive_int, default=32, help="Heun steps making the pairs (default 32)")
    q.add_argument("--steps", type=positive_int, help="training steps (default 500 unless --minutes)")
    q.add_argument("--minutes", type=positive_float, help="training budget in CPU minutes of this process")
    q.add_argument("--lr", type=positive_float, help="learning rate (default a quarter of the run's)")
    q.add_argument("--seed", type=nonneg_int, default=0, help="seed of the pairs and the training (default 0)")
    add_common(q)


def _discrete_parser(sub) -> None:
    from .discrete.ctmc import MASK_SCHEDULES, SAMPLERS

    q = _sub(sub, "discrete", "sample and score a discrete-diffusion run (bits/token)",
             "For a run trained with a discrete objective (masked, ctmc-uniform, d3pm-absorbing, d3pm-uniform): "
             "the test set's negative ELBO in bits per token (mean ± standard error; an upper bound on the NLL), "
             "the bound per time, and samples from the reverse chain (exact ancestral steps, tau-leaping or MaskGIT "
             "decoding). Writes <run>/evaluation.json and <run>/samples.safetensors; prints text samples.",
             "examples:\n"
             "  diffusionlens train --dataset digits17 --objective masked --minutes 5 --name d17\n"
             "  diffusionlens discrete d17 --sampler maskgit --steps 16\n"
             "  diffusionlens discrete runs/text --sampler tau-leaping --steps 128 --n-test 200")
    add_run_arg(q)
    q.add_argument("--sampler", default="ancestral", choices=list(SAMPLERS), help="reverse sampler")
    q.add_argument("--steps", type=positive_int, default=64, help="time steps of the reverse chain (default 64)")
    q.add_argument("--n", type=positive_int, default=64, help="samples to draw (default 64)")
    q.add_argument("--n-test", type=positive_int, help="test sequences scored (default: the whole split)")
    q.add_argument("--schedule", default="cosine", choices=list(MASK_SCHEDULES), help="maskgit's mask schedule")
    q.add_argument("--temperature", type=nonneg_float, default=1.0, help="maskgit's sampling temperature")
    q.add_argument("--choice-temperature", type=nonneg_float, default=4.5,
                   help="maskgit's Gumbel noise on the confidences, annealed by 1 - k/K (default 4.5, the reference "
                        "decoder's; 0 = pure confidence order, mode seeking)")
    q.add_argument("--random-order", action="store_true",
                   help="maskgit fixes tokens in a uniformly random order instead (exact for an exact model when "
                        "each step fixes one token)")
    q.add_argument("--seed", type=nonneg_int, default=0, help="seed of the sampler and the ELBO draws")
    add_common(q)


def _likelihood_parser(sub) -> None:
    q = _sub(sub, "likelihood", "test bits/dim or log-likelihood (PF-ODE)",
             "Exact log-likelihood of held-out data through the probability-flow ODE, with mean ± standard error "
             "over the points. Images: uniformly dequantized bits per dimension (an upper bound on the discrete "
             "NLL; Hutchinson trace). 2-D data: nats per point (exact divergence), next to the true density where "
             "it is known. Conditional runs are scored unconditionally (null label). Writes <run>/likelihood.json.",
             "examples:\n"
             "  diffusionlens likelihood main --n 300\n"
             "  diffusionlens likelihood runs/moons --n 1000")
    add_run_arg(q)
    add_data_args(q, 100)
    q.add_argument("--probes", type=positive_int, default=1, help="Hutchinson probes per point (images)")
    q.add_argument("--rtol", type=positive_float, default=1e-4, help="ODE solver tolerance (default 1e-4)")
    q.add_argument("--batch-size", type=positive_int, help="points per solver batch (default: a tenth of --n)")
    add_seed_arg(q, help="seed of dequantization and probes (default 0)")
    add_common(q)


def _encode_parser(sub) -> None:
    from .samplers import DETERMINISTIC

    q = _sub(sub, "encode", "data -> latent noise -> data; round-trip error",
             "Encode held-out data into the model's latent noise by integrating the probability-flow ODE from "
             "sigma_min to sigma_max, decode it back, and report the round-trip error ||x_rec - x|| / ||x|| (the "
             "ODE is a bijection: the error is the solver's). Writes <run>/latents.safetensors (x, z, x_rec) and "
             "encode.json.",
             "examples:\n"
             "  diffusionlens encode main --n 16                       # adaptive solver\n"
             "  diffusionlens encode main --steps 20 --sampler heun    # fixed grid")
    add_run_arg(q)
    add_data_args(q, 16)
    q.add_argument("--rtol", type=positive_float, help="adaptive solver tolerance (default 1e-5; not with --steps)")
    q.add_argument("--steps", type=positive_int, help="use a fixed log-uniform grid of this many steps instead")
    q.add_argument("--sampler", choices=sorted(DETERMINISTIC - {"adaptive"}),
                   help="deterministic sampler for --steps (default heun)")
    add_common(q)


def _report_parser(sub) -> None:
    q = _sub(sub, "report", "write report.html with figures for an evaluated run",
             "Draw the figures (samples next to real data, loss curve, quality vs NFE with the floor, denoising at "
             "several noise levels, implied loss weighting, and the expectation gap for oracle data) and write "
             "<run>/report.html beside them. Needs `diffusionlens evaluate` first.",
             "example:\n  diffusionlens report main && xdg-open runs/main/report.html")
    add_run_arg(q)
    add_common(q)


def _distill_parser(sub) -> None:
    q = _sub(sub, "distill", "distil a run into a 1-, 2- or 4-step student (writes a new run directory)",
             "Distil a trained run (the teacher) into a few-step student, written as an ordinary run directory that "
             "`sample --steps 1|2|4`, `evaluate` and `report` use like any other. progressive (Salimans & Ho "
             "2022): rounds that halve the teacher's Euler/DDIM grid of --steps steps down to 1, each student "
             "learning two teacher steps in one; the run keeps every round's student. consistency (Song et al. "
             "2023): a consistency function learning the teacher's probability-flow map from its Heun steps over "
             "--steps + 1 levels, sampled in one step or several. The budget is process CPU minutes, turned into "
             "training steps by timing a few steps first; resume a killed run with `train --name NEW --resume`.",
             "examples:\n"
             "  diffusionlens distill main --method progressive --minutes 10 --name main-pd\n"
             "  diffusionlens sample main-pd --steps 1\n"
             "  diffusionlens distill main --method consistency --minutes 10 --name main-cd")
    add_run_arg(q)
    q.add_argument("--method", default="progressive", choices=["progressive", "consistency"],
                   help="progressive (default) or consistency distillation")
    q.add_argument("--minutes", type=positive_float, required=True, help="CPU-time budget in minutes")
    q.add_argument("--name", required=True, help="the new run: runs/<name> (must not exist)")
    q.add_argument("--steps", type=positive_int, help="the teacher's grid: progressive, a power of two (default 16); "
                                                      "consistency, ODE intervals (default 17)")
    q.add_argument("--seed", type=nonneg_int, default=0, help="seed of the student's training (default 0)")
    add_common(q)


def _main_parser(sub) -> None:
    from .run import DEFAULT_NFE, MAIN_SAMPLER

    q = _sub(sub, "main", "the whole job: train, sample, evaluate, report",
             f"The README's main job: train the default model on the 8x8 digits for {MAIN_STEPS} steps (or "
             "--minutes), sample it with a fast sampler, evaluate it (Fréchet distance vs the train-vs-test floor, "
             "test bits/dim, quality vs NFE for several samplers) and write runs/main/report.html with PNG figures. "
             "Training takes about 4.5 minutes on 2 idle CPU cores and the rest about 3.5, of which tuning the "
             "sampling plan 1.5 (--plan none skips it). Running it again resumes runs/main (extends training to a "
             "larger budget, or only re-evaluates); --overwrite starts afresh.",
             "examples:\n"
             "  diffusionlens main\n"
             "  diffusionlens main --steps 300 --name quick\n"
             "  diffusionlens main --dataset mnist --minutes 20 --device cuda")
    add_dataset_arg(q, "digits")
    add_budget_args(q, MAIN_STEPS)
    add_run_dir_args(q, "main", "default main")
    add_sampler_arg(q, "headline sampler (the sweep's tuned one, so that one plan serves both)", MAIN_SAMPLER)
    q.add_argument("--sampler-steps", type=positive_int, default=16, help="headline sampler steps (default 16)")
    add_nfe_arg(q, DEFAULT_NFE, DEFAULT_NFE)
    add_sweep_samples_arg(q)
    q.add_argument("--n-samples", type=positive_int, help="samples per evaluation (default: the train split's "
                                                          "size, 1497 for the digits)")
    q.add_argument("--bpd-n", type=nonneg_int, default=50, help="test images for bits/dim (default 50)")
    add_seed_arg(q)
    add_plan_arg(q)
    add_common(q)


def add_out_arg(q, default: str) -> None:
    q.add_argument("--out", help=f"figure path (.png), in an existing directory (default {default})")


def _elbo_parser(sub) -> None:
    q = _sub(sub, "elbo", "the variational bound: DDPM term by term, continuous time, probability flow",
             "The latent-variable view of a run on held-out points: the discrete-time DDPM bound of a chain of --steps "
             "noise levels term by term, the continuous-time (VDM) bound with its Monte-Carlo standard error per "
             "point (importance-sampled noise levels and independent rounds until --target nats per dimension), and "
             "the probability-flow value (the evaluation's, or computed on the same points with --pf). Images: bits "
             "per dimension of the discrete data; 2-D data: nats per point. Writes <run>/fig_elbo.png.",
             "examples:\n"
             "  diffusionlens elbo main\n"
             "  diffusionlens elbo main --n 100 --steps 200 --pf")
    add_run_arg(q)
    q.add_argument("--n", type=positive_int, default=32, help="test points (default 32)")
    q.add_argument("--steps", type=positive_int, default=64, help="noise levels of the DDPM chain (default 64)")
    q.add_argument("--samples", type=positive_int, default=16, help="draws per point and round of the continuous "
                                                                   "bound (even; default 16)")
    q.add_argument("--target", type=positive_float, default=0.05,
                   help="standard error per point to reach, nats per dimension (default 0.05)")
    q.add_argument("--pf", action="store_true", help="compute the probability-flow likelihood of the same points")
    q.add_argument("--seed", type=nonneg_int, default=0, help="seed (default 0)")
    add_common(q)


def _denoise_parser(sub) -> None:
    q = _sub(sub, "denoise", "x_t and the model's E[x0|x_t] at chosen noise levels",
             "The denoising-autoencoder view: add noise of level sigma to held-out points and denoise them with the "
             "model's E[x0|x_t]; prints the MSE per dimension at each level (next to the exact posterior mean's for "
             "oracle data) and draws noisy and denoised points side by side. Each sigma must lie in the model's "
             "noise-level range.",
             "examples:\n"
             "  diffusionlens denoise main --sigma 0.1,0.5,2\n"
             "  diffusionlens denoise runs/ring --sigma 0.3 --n 1000")
    add_run_arg(q)
    q.add_argument("--sigma", type=float_list, required=True, help="comma-separated noise levels")
    q.add_argument("--n", type=positive_int, default=256, help="test points for the MSE (default 256)")
    q.add_argument("--show", type=positive_int, default=6, help="images in the figure (default 6)")
    q.add_argument("--seed", type=nonneg_int, default=0, help="seed of the noise (default 0)")
    add_out_arg(q, "<run>/fig_denoise.png")
    add_common(q)


def _weighting_parser(sub) -> None:
    from .losses import Density, Weighting
    from .parameterization import Param
    from .training import PROCESSES, TrainConfig

    D = TrainConfig()
    q = _sub(sub, "weighting", "the weighting over log-SNR that a loss configuration implies",
             "Print and plot the weighting over log-SNR lambda = -2 log sigma that a training configuration implies "
             "(its density of noise levels times its loss weight, in the eps-MSE form of Kingma & Gao 2023, "
             "'Understanding diffusion objectives as the ELBO with simple data augmentation'), normalised to a "
             "maximum of 1, and whether it is monotone (their condition for the objective to be an ELBO of "
             "noise-augmented data). No run needed.",
             "examples:\n"
             "  diffusionlens weighting\n"
             "  diffusionlens weighting --process vp --param eps --density uniform --weighting target")
    q.add_argument("--process", choices=list(PROCESSES), default=D.process, help=f"noise process (default {D.process})")
    q.add_argument("--param", choices=[v.value for v in Param], default=D.param,
                   help=f"what the network predicts (default {D.param})")
    q.add_argument("--density", choices=[v.value for v in Density], default=Density(D.density.kind).value,
                   help="distribution of training noise levels (default: the train default)")
    q.add_argument("--weighting", choices=[v.value for v in Weighting], default=Weighting(D.weighting.kind).value,
                   help="loss weighting (default: the train default)")
    q.add_argument("--sigma-data", type=positive_float, default=0.5,
                   help="data standard deviation of EDM's preconditioning and weighting (default 0.5)")
    q.add_argument("--points", type=positive_int, default=13, help="rows printed (default 13)")
    add_out_arg(q, "weighting.png in the current directory")
    add_common(q, device=False)


def _interpolate_parser(sub) -> None:
    q = _sub(sub, "interpolate", "slerp between test points in the probability-flow latent, decoded",
             "The flow view: encode pairs of held-out points into the model's latent noise through the "
             "probability-flow ODE (Heun on a log-uniform grid), interpolate between the two latents of each pair "
             "by slerp, decode every frame, and print the round-trip error of the ends. Writes the figure.",
             "examples:\n"
             "  diffusionlens interpolate main\n"
             "  diffusionlens interpolate main --pairs 5 --frames 9 --steps 32")
    add_run_arg(q)
    q.add_argument("--pairs", type=positive_int, default=3, help="pairs of test points (default 3)")
    q.add_argument("--frames", type=positive_int, default=7, help="frames per pair, ends included (default 7)")
    q.add_argument("--steps", type=positive_int, default=24, help="Heun steps each way (default 24)")
    add_out_arg(q, "<run>/fig_interpolate.png")
    add_common(q)


def _spectrum_parser(sub) -> None:
    q = _sub(sub, "spectrum", "power spectrum, power-law fit, hinge and coarse-to-fine order",
             "The frequency view of a data set or a run: the radially averaged power spectrum (DCT basis) with its "
             "power-law fit and 95% interval, the hinge per noise level (the frequency below which the data's "
             "power exceeds the noise's), and for a run the coarse-to-fine order its sampler measurably follows "
             "(the sigma at which each frequency is half settled). Writes <stem>.json and <stem>.png.",
             "examples:\n"
             "  diffusionlens spectrum photos\n"
             "  diffusionlens spectrum digits --sigmas 0.1,0.5,1\n"
             "  diffusionlens spectrum main                  # writes runs/main/spectrum.json + .png")
    q.add_argument("source", help="a data set name (digits, mnist, photos) or a run directory / name")
    q.add_argument("--n", type=positive_int, default=2000, help="images of the train split (default 2000 or all)")
    q.add_argument("--sigmas", type=float_list, help="noise levels of the hinge (default 0.01 ... 5; a run's "
                                                     "must lie in its noise range)")
    q.add_argument("--out", help="output path without extension (default <run>/spectrum, or spectrum-<dataset> "
                                 "in the current directory)")
    q.add_argument("--no-settling", action="store_true", help="skip sampling the run's model (data view only)")
    add_common(q)


EPILOG = f"""\
commands, in the order of a workflow:
  train       train a denoiser on a data set and write a run directory (runs/<name>)
  sample      draw samples from a trained run with any sampler, write .safetensors + .png
  evaluate    sample and score a run against held-out data (metric next to its floor), quality vs NFE
  tune        measure a run's sampling plan once and store it (sample and evaluate then use it)
  likelihood  test-set bits/dim (images) or log-likelihood in nats (2-D) through the PF-ODE
  encode      map test data to latent noise through the PF-ODE and back; report the round-trip error
  report      draw the figures and write report.html for an evaluated run
  elbo        the variational bound of a run: DDPM term by term, continuous time, probability flow
  denoise     x_t and the model's E[x0|x_t] at chosen noise levels, with the MSE per level
  weighting   the weighting over log-SNR that a loss configuration implies (no run needed)
  interpolate slerp between test points in the probability-flow latent, decoded
  distill     distil a run into a 1-, 2- or 4-step student (progressive or consistency distillation)
  spectrum    power spectrum, hinge and coarse-to-fine order of a data set or a run
  finetune    fine-tune a run by back-propagation through unrolled sampler steps
  discrete    sample and score a discrete-diffusion (token) run in bits/token, write its report
  import-diffusers  a local diffusers UNet2DModel + scheduler as a run directory
  export-diffusers  a run trained with --net diffusers-unet as a diffusers directory
  restore     restore degraded images with an InDI run (train --source degraded:KIND) in n steps, PSNR
  reflow      one reflow round of a Gaussian-source velocity run: a new run that samples in few steps
  main        the whole job: train on digits ({MAIN_STEPS} steps), evaluate, write runs/main/report.html

quick start:
  diffusionlens main --steps 300                 # a quick end-to-end run, then open runs/main/report.html
  diffusionlens train --dataset moons --steps 2000 --name moons
  diffusionlens sample moons --sampler dpmpp_2m --steps 10
"""


def _finetune_parser(sub) -> None:
    from .run.rnn import TARGETS

    q = _sub(sub, "finetune", "fine-tune a run by back-propagation through unrolled sampler steps",
             "Fine-tune a trained run through K unrolled steps of a deterministic sampler (the RNN view: train the "
             "recurrent network over several steps instead of one), against a longer Heun solve of the run as it "
             "was (--target solve) or against the data (--target data: windows of K steps of the --grid-steps "
             "grid). Every network evaluation is recomputed in the backward pass (checkpointing). Writes a new run "
             "directory (--out) that every other command opens like any run.",
             "examples:\n"
             "  diffusionlens finetune main --unroll 4 --sampler dpmpp_2m --minutes 2 --out runs/main-unrolled\n"
             "  diffusionlens finetune moons --unroll 2 --target data --steps 300 --out runs/moons-ft")
    add_run_arg(q)
    q.add_argument("--out", required=True, help="the new run directory (must not hold files)")
    q.add_argument("--unroll", type=positive_int, default=2, metavar="K",
                   help="sampler steps to back-propagate through (default 2)")
    add_sampler_arg(q, "deterministic sampler to unroll")
    q.add_argument("--target", choices=list(TARGETS), default="solve",
                   help="solve: a longer Heun solve of the run (default); data: the training data")
    q.add_argument("--steps", type=positive_int, help="fine-tuning updates (default 200 unless --minutes)")
    q.add_argument("--minutes", type=positive_float, help="budget in CPU minutes of this process")
    q.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate (default 1e-4)")
    q.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32)")
    q.add_argument("--grid-steps", type=positive_int, default=8, help="--target data: the grid's steps (default 8)")
    q.add_argument("--solve-steps", type=positive_int, default=32,
                   help="--target solve: Heun steps of the reference solve (default 32)")
    q.add_argument("--seed", type=nonneg_int, default=0, help="seed of the noise and data draws (default 0)")
    add_common(q)


def _import_diffusers_parser(sub) -> None:
    q = _sub(sub, "import-diffusers", "make a run directory from a diffusers UNet2DModel and its scheduler",
             "Read a local diffusers directory written by save_pretrained (a pipeline's unet/ and scheduler/, or a "
             "UNet directory with scheduler_config.json beside config.json; nothing is downloaded), convert its "
             "conventions (discrete timesteps and alphas_cumprod, or EDM preconditioning; epsilon, sample or "
             "v_prediction) into this package's canonical denoiser and write a run directory, so that every "
             "command (sample, evaluate, likelihood, encode, report, ...) runs on it. Needs the diffusers extra.",
             "examples:\n"
             "  diffusionlens import-diffusers ./ddpm-digits --name ddpm\n"
             "  diffusionlens evaluate ddpm && diffusionlens report ddpm")
    q.add_argument("path", help="the diffusers model directory")
    q.add_argument("--name", help="run name: the run directory is runs/<name> (default: the directory's name)")
    q.add_argument("--run-dir", help="explicit run directory (overrides --name)")
    q.add_argument("--dataset", help="data set the run is evaluated against (default: the image set of the "
                                     "model's shape)")
    q.add_argument("--overwrite", action="store_true", help="replace a run already in the run directory")


def _export_diffusers_parser(sub) -> None:
    q = _sub(sub, "export-diffusers", "write a run trained with --net diffusers-unet as a diffusers directory",
             "Write the run's EMA network as diffusers' UNet2DModel (unet/) with the scheduler that describes its "
             "process (scheduler/: DDPMScheduler for a ddpm process with eps, x0 or v; EDMEulerScheduler for EDM "
             "preconditioning), loadable with UNet2DModel.from_pretrained. Needs the diffusers extra.",
             "example:\n  diffusionlens train --net diffusers-unet --name dd --minutes 2\n"
             "  diffusionlens export-diffusers dd --out ./dd-diffusers")
    add_run_arg(q)
    q.add_argument("--out", required=True, help="output directory (must not exist)")


PARSERS = (_train_parser, _sample_parser, _evaluate_parser, _tune_parser, _likelihood_parser, _encode_parser,
           _report_parser, _main_parser,
           _elbo_parser, _denoise_parser, _weighting_parser, _interpolate_parser, _distill_parser,
           _discrete_parser,
           _spectrum_parser,
           _finetune_parser,
           _import_diffusers_parser, _export_diffusers_parser,
           _restore_parser, _reflow_parser)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="diffusionlens", formatter_class=_fmt, epilog=EPILOG,
                description="Diffusion models as one system seen from every angle: train one denoiser, then sample "
                            "it, score it, compute its likelihood and encode data with it.")
    p.add_argument("--version", action="version", version=f"diffusionlens {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in PARSERS:
        add(sub)
    return p
