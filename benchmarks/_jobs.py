"""Benchmark runs as parallel subprocesses: each run its own process (its own CPU clock for process-time
budgets, its own torch thread), at most ``parallel`` at a time."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    """A command (argv list) whose result is JSON: in the file ``out`` when given (its output then goes to the
    terminal), else on the last line of its stdout."""

    cmd: list[str]
    out: Path | None = None

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(self.cmd, stdout=None if self.out else subprocess.PIPE, text=True)

    def result(self, proc: subprocess.Popen):
        if self.out is not None:
            return json.loads(Path(self.out).read_text())
        return json.loads(proc.stdout.read().strip().splitlines()[-1])


def run_jobs(jobs: list[Job], parallel: int, on_result: Callable[[Job, object], None], *,
             keep_going: bool = False, poll_s: float = 1.0) -> None:
    """Run ``jobs``, at most ``parallel`` at once, calling ``on_result(job, result)`` as each succeeds (in the
    order they finish). A failed job stops the others and raises, or with ``keep_going`` is reported and
    skipped."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    pending, running = list(jobs), []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                running.append((job, job.start()))
            time.sleep(poll_s)
            for item in list(running):
                job, proc = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if proc.returncode == 0:
                    on_result(job, job.result(proc))
                elif keep_going:
                    print(f"a run failed (exit code {proc.returncode}): {' '.join(job.cmd)}", flush=True)
                else:
                    raise RuntimeError(f"a run failed (exit code {proc.returncode}): {' '.join(job.cmd)}")
    finally:
        for _, proc in running:
            proc.kill()
