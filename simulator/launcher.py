"""Start (or resume) a run: a run directory, then an engine (by default a Flower simulation on Ray with
one node per party) that drives its stages."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

from simulator.engines import RunFailed, get_engine
from simulator.rundir import RunDir
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

__all__ = ["RunFailed", "resume_run", "start_run"]


def _log(text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")


def _simulate(run: RunDir, engine: str, ray_address: str | None) -> None:
    _log(f"run [bold]{run.root}[/] ({engine} engine)")
    t0 = time.monotonic()
    get_engine(engine)(run, _log, ray_address)
    missing = [s.name for s in stage_order() if not run.stage_done(s.name)]
    if missing:
        raise RunFailed(
            f"the simulation ended before stage(s) {', '.join(missing)} finished; see the log above"
        )
    _log(f"all stages done in {time.monotonic() - t0:.1f} s")


def start_run(
    scenario: Scenario, *, out: Path, engine: str = "flower", ray_address: str | None = None
) -> Path:
    run = RunDir.create(scenario, out)
    _simulate(run, engine, ray_address)
    return run.root


def resume_run(root: Path, *, engine: str = "flower", ray_address: str | None = None) -> Path:
    run = RunDir.open(root)
    run.drop_torn_audit_line()
    _simulate(run, engine, ray_address)
    return run.root
