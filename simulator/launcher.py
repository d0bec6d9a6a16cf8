"""Start (or resume) a run: a run directory, then an engine (by default a Flower simulation on Ray with
one node per party) that drives its stages."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from rich.console import Console

from simulator.engines import Log, RunFailed, Stopped, audit_now, clear_stop, get_engine, request_stop
from simulator.progress import watching
from simulator.rundir import RunDir, RunLock
from simulator.schema import Scenario
from simulator.stages import stage_order

# Before flwr/ray are imported: no telemetry, no Ray accelerator warning.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


class ProgressConsole(Console):
    """Progress on stderr that falls silent when its reader goes away (`veil run ... 2>&1 | head`).

    rich's default exits the process on a broken pipe, which would kill the run in the middle of a stage.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        broken = os.fstat(self.file.fileno())
        devnull = os.open(os.devnull, os.O_WRONLY)
        # every standard stream on the same pipe (2>&1) goes to /dev/null, so Flower's and Ray's own
        # lines and the final "run directory" line cannot fail either
        for fd in sorted({self.file.fileno(), 1, 2}):
            try:
                if os.path.samestat(os.fstat(fd), broken):
                    os.dup2(devnull, fd)
            except OSError:  # a closed standard stream
                continue
        os.close(devnull)


console = ProgressConsole(stderr=True, highlight=False)

__all__ = ["Carry", "RunFailed", "Stopped", "resume_run", "start_run"]

# Drives a run's stages on an engine that is already running: the Flower App's ServerApp, given its Grid
# by `flwr run` (simulator.engines.flower.app), rather than an engine this process starts.
Carry = Callable[[RunDir, Log], None]


def _log(text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM ask the run to stop (simulator.engines.request_stop): the server stops
    dispatching within a poll, keeps what finished, and the engine shuts down. A second signal stops at once.
    Only the main thread can take signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    clear_stop()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and stops:
            raise KeyboardInterrupt
        stops.append(signum)
        _log(f"[yellow]{signal.Signals(signum).name}: stopping; finished work is kept (veil run --resume)[/]")
        request_stop(signum)

    stops: list[int] = []
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        clear_stop()


def _simulate(run: RunDir, engine: str, ray_address: str | None, carry: Carry | None = None) -> None:
    _log(f"run [bold]{run.root}[/] ({engine} engine)")
    t0 = time.monotonic()
    try:
        with stop_on_signals(), watching(run.root, console):
            if carry is not None:
                carry(run, _log)
            else:
                get_engine(engine)(run, _log, ray_address)
    except Stopped as err:
        stages = run.manifest()["stages"]
        done = [name for name, entry in stages.items() if entry.get("status") == "done"]
        units = sorted(u.stem for u in run.results_dir.glob("*.jsonl")) if run.results_dir.exists() else []
        audit_now(run, "stop", signal=signal.Signals(err.signum).name, stages_done=done, units_done=units)
        _log(f"[yellow]stopped after {time.monotonic() - t0:.1f} s; {len(units)} result unit(s) kept[/]")
        raise
    missing = [s.name for s in stage_order() if not run.stage_done(s.name)]
    if missing:
        raise RunFailed(
            f"the simulation ended before stage(s) {', '.join(missing)} finished; see the log above"
        )
    _log(f"all stages done in {time.monotonic() - t0:.1f} s")


def start_run(
    scenario: Scenario,
    *,
    out: Path,
    engine: str = "flower",
    ray_address: str | None = None,
    carry: Carry | None = None,
) -> Path:
    """A new run directory under `out`, its stages driven by `engine` (started here), or by `carry` (an
    engine already running; `engine` then only names it in the log)."""
    run = RunDir.create(scenario, out)
    with RunLock(run.root):
        _simulate(run, engine, ray_address, carry)
    return run.root


def resume_run(
    root: Path, *, engine: str = "flower", ray_address: str | None = None, locked: bool = False
) -> Path:
    """Complete a run. locked: the caller holds its RunLock already (`veil run --resume` takes it first)."""
    run = RunDir.open(root)
    with RunLock(run.root) if not locked else _held():
        run.drop_torn_audit_line()
        done = [name for name, entry in run.manifest()["stages"].items() if entry.get("status") == "done"]
        audit_now(run, "resume", pid=os.getpid(), stages_done=done)
        run.record_resume()
        _simulate(run, engine, ray_address)
    return run.root


@contextmanager
def _held() -> Iterator[None]:
    yield
