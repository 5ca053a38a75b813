"""What surrounds the training loop: its progress line (an ETA under a time budget, a heartbeat that shows a
hang) and the signals that stop it after a checkpoint."""

from __future__ import annotations

import signal
import threading
import time

from .config import TrainConfig

__all__ = ["project_total", "Heartbeat", "Interrupts"]


def project_total(bar, cfg: TrainConfig, done: int, seconds: float, left: float) -> None:
    """Under a time budget, the bar's total is the step the budget is projected to end at (the steps
    budget if that comes first), so that the bar shows a fraction and an ETA instead of a bare count."""
    if cfg.minutes is None or done < 5 or seconds <= 0:
        return
    projected = bar.n + 1 + max(0.0, left) * done / seconds
    bar.total = int(min(projected, cfg.steps)) if cfg.steps is not None else int(projected)


class Heartbeat:
    """The progress line's ``idle`` field: seconds since the last completed step, refreshed by a
    thread while the loop waits (e.g. on a hung DDP rank), so that a hang is visible."""

    INTERVAL = 1.0

    def __init__(self, bar):
        self.bar, self.fields, self.last = bar, {}, time.monotonic()
        self._done = threading.Event()
        self._thread = None
        if bar is not None:
            self._thread = threading.Thread(target=self._run, name="train-heartbeat", daemon=True)
            self._thread.start()

    def idle(self) -> float:
        return time.monotonic() - self.last

    def show(self, refresh: bool = True) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**self.fields, idle=f"{self.idle():.0f}s", refresh=refresh)

    def step_done(self) -> None:
        self.last = time.monotonic()
        self.show(refresh=False)  # the bar's own update() redraws at its rate

    def _run(self) -> None:
        while not self._done.wait(self.INTERVAL):
            self.show()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


class Interrupts:
    """SIGINT / SIGTERM while the loop runs: finish the step, save a checkpoint, then stop. A second
    SIGINT stops at once. Handlers are installed only from the main thread (Python's rule)."""

    def __enter__(self) -> Interrupts:
        self.signum, self._old = None, {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
