"""Writing a benchmark's results file: one place, atomic (a run killed mid-write leaves the old table)."""

from __future__ import annotations

from pathlib import Path

from diffusionlens.training.checkpoint import atomic_write


def write_results(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, creating its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode())
