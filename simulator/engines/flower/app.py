"""Veil as a Flower App: `flwr run .` runs the scenario its run config names, as `veil run` would.

    flwr run . --stream --run-config "scenario='scenarios/smoke.yaml' seed=0 out='/tmp/runs'" \\
        --federation-config "num-supernodes=11 client-resources-num-cpus=1"

pyproject.toml names `serverapp` and `clientapp` below ([tool.flwr.app.components]) and the run config's
defaults ([tool.flwr.app.config]): `scenario` (a path inside the app, as `flwr run` packaged it, or an
absolute one), `out` (where run directories go; relative to the SuperLink's working directory), `seed`
(-1: the scenario's own; else as `veil run --set seed=N`) and `set` (`veil run --set` overrides, separated
by ";").

The ServerApp checks the run config and the scenario as `veil run` does (simulator.preflight), checks that
the federation has one SuperNode per party, makes the run directory and drives the stages through the Grid
Flower gives it (simulator.launcher, apps.drive_on). The ClientApp is the engine's one ClientApp; a node is
the party whose index in `roles.parties` is its partition id, as under `veil run`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from simulator import roles
from simulator.engines import RunFailed
from simulator.engines.flower.apps import drive_on, make_client_app
from simulator.launcher import _log, start_run
from simulator.preflight import check_new_run
from simulator.schema import Problem, Scenario, ScenarioError

APP_DIR = Path(__file__).resolve().parents[3]  # the app's own files: the FAB `flwr run` installed
OWN_SEED = -1  # run config `seed`: keep the scenario's
REGISTER_WAIT_S = 120.0  # how long the ServerApp waits for the first SuperNodes
SETTLE_S = 3.0  # fewer nodes than parties, and none new for this long: the federation is that size


@dataclass(frozen=True)
class AppConfig:
    scenario: Path
    out: Path
    overrides: list[str]  # as `veil run --set`, the seed's last


def app_config(run_config: Mapping[str, object], cwd: Path | None = None) -> AppConfig:
    """The run config as `veil run`'s inputs; ScenarioError naming each field that is wrong."""
    problems: list[Problem] = []

    def text(key: str, *, required: bool) -> str:
        value = run_config.get(key, "")
        if not isinstance(value, str) or (required and not value.strip()):
            problems.append(Problem(f"run-config {key}", f"expected a non-empty string, got {value!r}"))
            return ""
        return value.strip()

    scenario, out = text("scenario", required=True), text("out", required=True)
    overrides = [item.strip() for item in text("set", required=False).split(";") if item.strip()]
    seed = run_config.get("seed", OWN_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < OWN_SEED:
        expected = f"expected a seed (0 or more), or {OWN_SEED} for the scenario's own"
        problems.append(Problem("run-config seed", f"{expected}; got {seed!r}"))
    elif seed != OWN_SEED:
        if any(item.partition("=")[0].strip() == "seed" for item in overrides):
            problems.append(Problem("run-config set", "sets seed, and so does run-config seed; drop one"))
        overrides.append(f"seed={seed}")
    if problems:
        raise ScenarioError("run config", problems)
    return AppConfig(APP_DIR / scenario, (cwd or Path.cwd()) / out, overrides)


def federation_config(scenario: Scenario) -> str:
    """The `flwr run --federation-config` a scenario needs: a SuperNode per party, the nodes' shares."""
    resources = scenario.resources
    parts = [
        f"num-supernodes={len(roles.parties(scenario))}",
        f"client-resources-num-cpus={max(1, math.ceil(resources.num_cpus))}",  # Flower takes whole CPUs
    ]
    if resources.num_gpus > 0:
        parts.append(f"client-resources-num-gpus={resources.num_gpus:g}")
    return " ".join(parts)


def check_federation_size(nodes: int, scenario: Scenario) -> None:
    """Raise RunFailed unless the federation has one SuperNode per party (node i is party i)."""
    parties = roles.parties(scenario)
    if nodes == len(parties):
        return
    raise RunFailed(
        f"the federation has {nodes} SuperNode(s), but scenario {scenario.name!r} has {len(parties)} parties"
        f" ({', '.join(p.name for p in parties)}), one SuperNode each. Run it with"
        f' `flwr run . --federation-config "{federation_config(scenario)}"`, or set'
        f" options.num-supernodes = {len(parties)} in the federation's SuperLink connection in"
        " $FLWR_HOME/config.toml (which Flower 1.41 still reads, and deprecates); on a SuperLink of your"
        " own, start one `veil supernode --party NAME` per party first"
    )


def registered_nodes(grid: Grid, expected: int) -> int:
    """How many SuperNodes the federation has, once `expected` have registered or no more arrive (the
    simulation runtime registers all of its nodes at once, as the ServerApp starts)."""
    deadline = time.monotonic() + REGISTER_WAIT_S
    count, since = -1, time.monotonic()
    while True:
        now = time.monotonic()
        found = len(list(grid.get_node_ids()))
        if found != count:
            count, since = found, now
        if count >= expected or now > deadline or (count and now - since >= SETTLE_S):
            return count
        time.sleep(0.2)


clientapp = make_client_app()
serverapp = ServerApp()


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    try:
        config = app_config(context.run_config)
        scenario = check_new_run(
            config.scenario, config.overrides, config.out, _warn, out_option="run-config out"
        )
        check_federation_size(registered_nodes(grid, len(roles.parties(scenario))), scenario)
        root = start_run(
            scenario, out=config.out, engine="Flower App", carry=lambda run, log: drive_on(grid, run, log)
        )
    except ScenarioError as err:  # said plainly in the stream (`flwr run --stream`), then the run fails
        _log(f"[red]veil: the run config or its scenario is refused; no run started[/]\n{err}")
        raise
    except RunFailed as err:
        _log(f"[red]veil run failed: {err}[/]")
        raise
    _log(f"run directory: {root}")


def _warn(lines: list[str]) -> None:
    for line in lines:
        _log(f"[yellow]warning: {line}[/]")
