"""Check a report page in a real browser: headless Chromium, no extra Python package.

The page is copied (with its figures) into a temporary directory and a small script is put first in
its ``<head>``: it records console errors and failed resource loads, and after the load event writes
what it measured (each image's natural width, elements reaching past the viewport, the load time
from navigation start) into the DOM as JSON. ``chromium --dump-dom`` prints that DOM, which is
parsed back. A second run with ``--screenshot`` takes a full-page picture at the page's measured
height. The run directory itself is never written to.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["find_chromium", "BrowserCheck", "check_page", "screenshot", "FLAGS"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# root in a container: no sandbox; no GPU, network services, first-run or background traffic
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")
WIDTH = 1280

_PROBE = """<script>
(function () {
  var errors = [];
  var orig = console.error;
  console.error = function () {
    errors.push(Array.prototype.map.call(arguments, String).join(" "));
    return orig.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(t && t !== window ? "failed to load " + (t.src || t.href || t.tagName) : "error: " + e.message);
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("unhandled rejection: " + e.reason); });
  function clipped(el) {
    for (var a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      var o = getComputedStyle(a).overflowX;
      if (o === "auto" || o === "scroll" || o === "hidden") return true;
    }
    return false;
  }
  window.addEventListener("load", function () {
    var de = document.documentElement, W = de.clientWidth, over = [];
    if (de.scrollWidth > W) over.push("document is " + de.scrollWidth + " px wide in a " + W + " px window");
    var all = document.body.getElementsByTagName("*");
    for (var i = 0; i < all.length; i++) {
      var r = all[i].getBoundingClientRect();
      if (r.right > W + 0.5 && !clipped(all[i]))
        over.push(all[i].tagName.toLowerCase() + (all[i].id ? "#" + all[i].id : "") + " reaches " +
                  Math.round(r.right) + " px");
    }
    var nav = performance.getEntriesByType("navigation")[0];
    var imgs = Array.prototype.map.call(document.images, function (im) {
      return {src: im.getAttribute("src"), width: im.naturalWidth, complete: im.complete};
    });
    var out = document.createElement("script");
    out.type = "application/json";
    out.id = "__dl_check";
    out.textContent = JSON.stringify({images: imgs, overflow: over, errors: errors,
      load_ms: nav ? nav.loadEventStart : performance.now(), width: W, height: de.scrollHeight});
    document.body.appendChild(out);
  });
})();
</script>"""


@dataclass
class BrowserCheck:
    """What the browser measured on a page: ``images`` (src, natural width, complete), ``overflow``
    (what reaches past the window's width), ``errors`` (console errors and failed loads), ``load_ms``
    (navigation start to the load event), ``height`` (the page's full height in CSS pixels)."""

    images: list = field(default_factory=list)
    overflow: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    load_ms: float = 0.0
    width: int = WIDTH
    height: int = 0

    @property
    def broken_images(self) -> list[str]:
        return [im["src"] for im in self.images if not (im["complete"] and im["width"] > 0)]

    @property
    def ok(self) -> bool:
        return not (self.broken_images or self.overflow or self.errors)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable ($CHROMIUM first), or None."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser(chromium: str | None) -> str:
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (install the Debian package chromium, or set $CHROMIUM)")
    return exe


def _run(exe: str, args: list[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="dl-chromium-profile-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{exe} did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.split()[-40:])
        raise RuntimeError(f"{exe} exited with code {proc.returncode}: {tail}")
    return proc.stdout


def _instrumented(page: Path, into: Path) -> Path:
    """Copy ``page`` and the files beside it that it references into ``into``, with the probe first in <head>."""
    html = page.read_text(encoding="utf-8")
    for ref in set(re.findall(r'(?:src|href)="([^":#?]+)"', html)):
        src = page.parent / ref
        if src.is_file() and src.resolve().parent == page.parent.resolve():
            shutil.copy2(src, into / src.name)
    head = re.search(r"<head[^>]*>", html, flags=re.I)
    at = head.end() if head else 0
    out = into / page.name
    out.write_text(html[:at] + _PROBE + html[at:], encoding="utf-8")
    return out


def check_page(page, *, chromium: str | None = None, timeout: float = 60.0, width: int = WIDTH) -> BrowserCheck:
    """Load ``page`` (an HTML file) in headless Chromium at ``width`` CSS pixels and measure it."""
    page = Path(page)
    if not page.is_file():
        raise FileNotFoundError(f"no page {page}")
    exe = _browser(chromium)
    with tempfile.TemporaryDirectory(prefix="dl-browser-") as tmp:
        probe = _instrumented(page, Path(tmp))
        dom = _run(exe, [f"--window-size={width},900", "--dump-dom", probe.as_uri()], timeout)
    m = re.search(r'<script type="application/json" id="__dl_check">(.*?)</script>', dom, flags=re.S)
    if m is None:
        raise RuntimeError(f"{exe} printed no measurement for {page}: the load event never fired")
    return BrowserCheck(**json.loads(m.group(1)))


def screenshot(page, out, *, chromium: str | None = None, width: int = WIDTH, height: int | None = None,
               timeout: float = 60.0) -> Path:
    """Write a PNG of ``page`` at ``width`` CSS pixels, the whole page unless ``height`` is given."""
    page, out = Path(page), Path(out)
    exe = _browser(chromium)
    height = height or check_page(page, chromium=exe, timeout=timeout, width=width).height
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(exe, [f"--window-size={width},{max(height, 100)}", f"--screenshot={out.resolve()}", page.resolve().as_uri()],
         timeout)
    if not out.is_file():
        raise RuntimeError(f"{exe} wrote no screenshot {out}")
    return out
