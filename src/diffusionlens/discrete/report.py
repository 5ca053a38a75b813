"""The report page of a discrete run: its rows and the discrete sections registered in
:mod:`diffusionlens.report.html` (``report.write_report`` hands discrete runs here)."""

from __future__ import annotations

import html
from pathlib import Path

__all__ = ["write_report", "SECTION_TITLES"]

SECTION_TITLES = ("training loss", "discrete samples", "discrete bound per time")


def write_report(run_dir, ev: dict) -> Path:
    """Write ``run_dir/report.html`` for a discrete run from its ``evaluation.json`` (``ev``)."""
    from safetensors.torch import load_file

    from ..data import load_dataset
    from ..report.html import _STYLE, SECTIONS, Context, ReportError, _render
    from ..training.checkpoint import atomic_write
    from .run import open_run

    run_dir = Path(run_dir)
    cfg = open_run(run_dir).config
    samples = load_file(str(run_dir / "samples.safetensors"))["tokens"]
    ctx = Context(run_dir, ev, cfg, None, load_dataset(cfg.dataset, "test"), samples)
    parts, failed = _render(ctx, [s for s in SECTIONS if s[0] in SECTION_TITLES])
    esc = html.escape
    rows = [("data set", cfg.dataset), ("objective", cfg.objective),
            ("test negative ELBO", f"{ev['test_bpd']:.4f} ± {ev['test_bpd_stderr']:.2g} bits/token "
                                   f"(n = {ev['n_test']})"),
            ("sampler", f"{ev['sampler']}, {ev['steps']} steps, {ev['n_samples']} samples")]
    table = "\n".join(f"<tr><th>{esc(a)}</th><td>{esc(str(b))}</td></tr>" for a, b in rows)
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>diffusionlens report: '
            f"{esc(run_dir.name)}</title>\n<style>{_STYLE}</style></head><body>\n<h1>diffusionlens report — "
            f"<code>{esc(run_dir.name)}</code> (discrete diffusion)</h1>\n<table>{table}</table>\n"
            + "\n".join(parts) + f"\n<p>Re-create: <code>diffusionlens discrete {esc(str(run_dir))}</code>.</p>"
            "\n</body></html>\n")
    atomic_write(run_dir / "report.html", page.encode())
    if failed:
        raise ReportError(f"report written to {run_dir / 'report.html'}, but these sections failed: "
                          f"{', '.join(failed)} (their errors are shown in place)")
    return run_dir / "report.html"
