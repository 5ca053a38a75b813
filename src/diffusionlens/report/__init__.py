"""The report: evaluate a trained run, draw its figures and write ``report.html`` beside them.

    from diffusionlens.report import evaluate_run, write_report
    evaluate_run("runs/main")      # samples + metrics -> runs/main/evaluation.json
    write_report("runs/main")      # figures (PNG) + runs/main/report.html

See :mod:`.pipeline` for the run-directory layout and :mod:`.figures` for the figures.
"""

from .pipeline import DEFAULT_NFE, DEFAULT_SWEEP, evaluate_run, generate, sampling_range, write_report

__all__ = ["DEFAULT_NFE", "DEFAULT_SWEEP", "evaluate_run", "generate", "sampling_range", "write_report"]
