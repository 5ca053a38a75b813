"""The report in a real browser (headless Chromium): every figure loads, nothing overflows, no console errors.

Skipped when no Chromium is installed (``bash scripts/setup.sh --test`` installs the Debian package
where the machine allows). The main job's report (``runs/main/report.html``) is checked too when it exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusionlens.report import evaluate_run, write_report
from diffusionlens.report.browser import check_page, find_chromium
from diffusionlens.training import TrainConfig, train

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (bash scripts/setup.sh --test "
                                                          "installs the Debian package chromium where it can)")
MAIN_REPORT = Path(__file__).resolve().parents[1] / "runs" / "main" / "report.html"
LOAD_MS = 2000  # the page must load from disk in under 2 s; a local page takes a few hundred ms


def _assert_renders(page: Path) -> None:
    c = check_page(page, chromium=CHROMIUM)
    assert c.images and not c.broken_images, f"figures that did not load: {c.broken_images}"
    assert not c.overflow, f"horizontal overflow: {c.overflow[:5]}"
    assert not c.errors, f"console errors: {c.errors[:5]}"
    assert c.load_ms < LOAD_MS, f"load took {c.load_ms:.0f} ms"


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    run = tmp_path_factory.mktemp("browser") / "toy"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(dataset="ring8", steps=20, log_every=5, ckpt_every=0, warmup_steps=2), run, progress=False)
        evaluate_run(run, n_samples=200, steps=4, sweep=("euler",), nfes=(2, 4), bpd_n=4, progress=False)
        return write_report(run, progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow  # training, evaluating and drawing a run: ~12 CPU-seconds before the browser starts
def test_a_tiny_runs_report_renders_cleanly(toy_report):
    _assert_renders(toy_report)


@pytest.mark.skipif(not MAIN_REPORT.is_file(), reason="no main-job report (runs/main/report.html): run "
                                                      "bash scripts/main.sh first")
def test_the_main_jobs_report_renders_cleanly():
    _assert_renders(MAIN_REPORT)


def test_the_check_sees_broken_figures_overflow_and_console_errors(tmp_path):
    """The probe must catch each fault it is there to catch, or the clean results above mean nothing."""
    (tmp_path / "page.html").write_text(
        "<!doctype html><html><head><title>t</title></head><body>"
        '<img src="missing.png"><div style="width:3000px">wide</div>'
        '<div style="overflow-x:auto"><table style="width:3000px"><tr><td>scrolls in its box</td></tr></table></div>'
        "<script>console.error('boom')</script></body></html>")
    c = check_page(tmp_path / "page.html", chromium=CHROMIUM)
    assert c.broken_images == ["missing.png"]
    assert any("document is" in o for o in c.overflow) and any(o.startswith("div reaches") for o in c.overflow)
    assert not any(o.startswith("table") for o in c.overflow)  # inside a scrolling box: fine
    assert "boom" in c.errors and any("missing.png" in e for e in c.errors)
