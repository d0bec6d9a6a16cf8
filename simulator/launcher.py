"""Start (or resume) a run: a run directory, then a Flower simulation on Ray with one node per party."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from rich.console import Console

from simulator.courier import RunFailed
from simulator.rundir import RunDir
from simulator.schema import STAGES, Scenario

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


def _backend_config(scenario: Scenario, ray_address: str | None) -> dict[str, object]:
    import torch

    gpus = scenario.resources.num_gpus
    if gpus > 0 and not torch.cuda.is_available():
        # Asking Ray for GPU shares without a GPU makes the nodes never start.
        _log(f"[yellow]resources.num_gpus={gpus} but no CUDA device here; nodes get CPU only[/]")
        gpus = 0.0
    init_args: dict[str, object] = {"include_dashboard": False, "log_to_driver": False}
    if ray_address:
        init_args = {"address": ray_address}
    return {
        "client_resources": {"num_cpus": scenario.resources.num_cpus, "num_gpus": gpus},
        "init_args": init_args,
    }


class _KnownDeprecation(logging.Filter):
    """Drop Flower's notice that `run_simulation` is deprecated: Veil uses it on purpose (an in-process
    simulation with the server in this process); see FLOWER-NOTES.md."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


_KNOWN_DEPRECATION = _KnownDeprecation()


def _simulate(run: RunDir, ray_address: str | None) -> None:
    import warnings

    from flwr.simulation import run_simulation

    from simulator import client_app, node
    from simulator.server_app import make_server_app

    scenario = run.scenario()
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("flwr").addFilter(_KNOWN_DEPRECATION)  # added once: the same object
    failures: list[BaseException] = []
    _log(f"run [bold]{run.root}[/]")
    t0 = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=make_server_app(run, _log, failures),
            client_app=client_app.app,
            num_supernodes=len(node.parties(scenario)),
            backend_config=_backend_config(scenario, ray_address),  # type: ignore[arg-type]
        )
    if failures:
        raise RunFailed(str(failures[0])) from failures[0]
    missing = [s for s in STAGES if not run.stage_done(s)]
    if missing:
        raise RunFailed(
            f"the simulation ended before stage(s) {', '.join(missing)} finished; see the log above"
        )
    _log(f"all stages done in {time.monotonic() - t0:.1f} s")


def start_run(scenario: Scenario, *, out: Path, ray_address: str | None = None) -> Path:
    run = RunDir.create(scenario, out)
    _simulate(run, ray_address)
    return run.root


def resume_run(root: Path, *, ray_address: str | None = None) -> Path:
    run = RunDir.open(root)
    run.drop_torn_audit_line()
    _simulate(run, ray_address)
    return run.root
