"""The run layer: one place that owns a *run directory*, shared by the command line and the report.

    from diffusionlens import run
    r = run.open_run("runs/main", device="cpu")       # denoiser, config, stored plan, device
    x, y, nfe = run.generate(r.denoiser, r.config, 100, sampler="deis", steps=10, seed=0)
    ev = run.evaluate(r)                               # -> runs/main/evaluation.json, samples.safetensors

Layout (``train`` writes the first line; each function here writes its own files, atomically, with
the permissions of any file the user creates)::

    run_dir/config.json, checkpoints/, metrics.jsonl, result.json     training
    run_dir/samples-<sampler>-<steps>.safetensors + .png               sample_to_files
    run_dir/evaluation.json, samples.safetensors                       evaluate
    run_dir/likelihood.json                                            likelihood
    run_dir/latents.safetensors, encode.json                           round_trip

Sampling uses the noise-level range the model was trained on, clipped to [0.002, 80]
(:func:`sampling_range`). The noise of sample i depends only on the seed and i (per-sample streams,
:func:`diffusionlens.samplers.randn`), so ``n=10`` gives the first 10 samples of ``n=100``.

Modules: :mod:`._core` (opening a run), :mod:`.files` (atomic writes), :mod:`.sampling` (generate),
:mod:`.measure` (evaluate, likelihood, round trip), :mod:`.plan`
(the stored sampling plan).
"""

from . import interpolants  # noqa: F401  (restore, reflow, the paths view)
from ._core import LEVELS, MAIN_SAMPLER, MAIN_STEPS, RUNS, Run, find_run, open_run, sampling_range
from .distill import distill
from .files import check_writable, output_stem, save_json, save_tensors
from .measure import (
    DEFAULT_NFE,
    DEFAULT_SWEEP,
    SWEEP_SAMPLES,
    evaluate,
    evaluate_run,
    likelihood,
    round_trip,
    split_size,
)
from .sampling import generate, sample_to_files, steps_for_nfe, sweep_entry
from .students import default_steps

__all__ = ["Run", "RUNS", "MAIN_STEPS", "MAIN_SAMPLER", "SWEEP_SAMPLES",
           "DEFAULT_SWEEP", "DEFAULT_NFE", "LEVELS", "find_run", "open_run",
           "sampling_range", "sweep_entry", "steps_for_nfe", "generate", "sample_to_files", "evaluate", "evaluate_run",
           "likelihood", "round_trip", "split_size", "distill",
           "default_steps", "check_writable", "output_stem", "save_json", "save_tensors"]
