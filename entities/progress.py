"""Where a party's work is: which unit and net, epoch and step of how many, images per second.

Entities import neither the simulator nor flwr, so whoever runs a party installs a sink (`reporting`) and
the training loops report to it through a `Tracker`; with no sink installed nothing is reported, and a
step costs one attribute check. A snapshot holds names, counts and rates only, never data.

    with reporting(sink), unit("row 7: E1 + E2 poisoned"):
        fit(..., net="decider")   # the sink gets a snapshot at most every INTERVAL_S, and one at the end

    progress = tracker("aligner", steps)   # a loop of its own
    for _ in range(steps):
        ...
        progress.step(batch_size)
    progress.finish()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

INTERVAL_S = 0.5  # at most two snapshots a second per party reach the sink, whatever the step rate


@dataclass(frozen=True)
class Snapshot:
    """One net's training so far (net "" while the unit does other work: measuring, encoding)."""

    unit: str
    net: str = ""
    epoch: int = 0  # the current epoch, 1-based (0: not started)
    epochs: int = 0
    step: int = 0  # steps done, of `steps`
    steps: int = 0
    images: int = 0  # images (samples) seen so far
    elapsed_s: float = 0.0
    done: bool = False

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.elapsed_s if self.images and self.elapsed_s > 0 else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far (None before the first step)."""
        if self.done:
            return 0.0
        if not self.step or not self.steps:
            return None
        return self.elapsed_s * (self.steps - self.step) / self.step


Sink = Callable[[Snapshot], None]

_SINK: ContextVar[Sink | None] = ContextVar("veil_progress_sink", default=None)
_UNIT: ContextVar[str] = ContextVar("veil_progress_unit", default="")


@contextmanager
def reporting(sink: Sink) -> Iterator[None]:
    """Send this context's snapshots (this thread's: parties in one process do not mix) to `sink`."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


@contextmanager
def unit(label: str) -> Iterator[None]:
    """Name the unit of work the nets trained inside the block belong to (a table row, an attack)."""
    token = _UNIT.set(label)
    try:
        sink = _SINK.get()
        if sink is not None:
            sink(Snapshot(label))  # the display shows the unit at once, before its first net
        yield
    finally:
        _UNIT.reset(token)


class Tracker:
    """Counts one net's steps and reports them to the installed sink, rate-limited."""

    def __init__(self, net: str, steps: int, epochs: int = 1, sink: Sink | None = None):
        self.net, self.steps, self.epochs = net, steps, epochs
        self.sink = sink
        self.unit = _UNIT.get()
        self.step_n = self.images = 0
        self.epoch = 1
        self.t0 = time.monotonic()
        self.next_at = self.t0 + INTERVAL_S
        if sink is not None:
            sink(self.snapshot(self.t0))

    def snapshot(self, now: float, done: bool = False) -> Snapshot:
        return Snapshot(
            self.unit,
            self.net,
            self.epoch,
            self.epochs,
            self.step_n,
            self.steps,
            self.images,
            now - self.t0,
            done,
        )

    def step(self, images: int, epoch: int | None = None) -> None:
        """One step over `images` samples; `epoch` (1-based) when the loop knows it."""
        if self.sink is None:
            return
        self.step_n += 1
        self.images += images
        if epoch is not None:
            self.epoch = epoch
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + INTERVAL_S
            self.sink(self.snapshot(now))

    def finish(self) -> None:
        if self.sink is not None:
            self.epoch = self.epochs
            self.sink(self.snapshot(time.monotonic(), done=True))


def tracker(net: str, steps: int, epochs: int = 1) -> Tracker:
    """A Tracker for one net's training loop of `steps` steps, reporting to this context's sink; call
    `finish()` when the loop ends (a loop that raises reports no end)."""
    return Tracker(net, steps, epochs, _SINK.get())
