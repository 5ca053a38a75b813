"""Names kept importable from their earlier home: sampling and evaluation live in :mod:`diffusionlens.run`,
the page in :mod:`.html`."""

from ..run import DEFAULT_NFE, DEFAULT_SWEEP, evaluate_run, generate, sampling_range, sweep_entry
from .html import write_report

__all__ = ["sampling_range", "generate", "evaluate_run", "write_report", "sweep_entry", "DEFAULT_SWEEP",
           "DEFAULT_NFE"]
