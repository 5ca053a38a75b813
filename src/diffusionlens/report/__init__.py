"""The report: evaluate a trained run, draw its figures and write ``report.html`` beside them.

    from diffusionlens.report import evaluate_run, write_report
    evaluate_run("runs/main")      # samples + metrics -> runs/main/evaluation.json
    write_report("runs/main")      # figures (PNG) + runs/main/report.html

See :mod:`.pipeline` for the run-directory layout, :mod:`.html` for the page and its registered sections
(one function per view) and :mod:`.figures` for the figures.
"""

from .html import SECTIONS, NotApplicable, section, write_report
from .pipeline import DEFAULT_NFE, DEFAULT_SWEEP, evaluate_run, generate, sampling_range

__all__ = ["DEFAULT_NFE", "DEFAULT_SWEEP", "SECTIONS", "NotApplicable", "evaluate_run", "generate", "sampling_range",
           "section", "write_report"]
