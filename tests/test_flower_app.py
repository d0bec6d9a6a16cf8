"""Veil as a Flower App (simulator.engines.flower.app): pyproject's components and run config, the checks
the ServerApp makes before a run, and (slow) `flwr run .` of the smoke scenario against `veil run`."""

from __future__ import annotations

import importlib
import math
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SMOKE, kill_session, result_records

from simulator import roles
from simulator.schema import ScenarioError, load_scenario

FLWR = Path(sys.executable).with_name("flwr")
FLWR_RUN_TIMEOUT_S = 900.0


def app_section() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]  # type: ignore[no-any-return]


def test_pyproject_names_importable_components() -> None:
    from flwr.cli.config_utils import load_and_validate
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    flwr = app_section()
    assert "federations" not in flwr  # `flwr run` would rewrite pyproject.toml
    assert flwr["app"]["publisher"]
    components = flwr["app"]["components"]
    for key, cls in (("serverapp", ServerApp), ("clientapp", ClientApp)):
        module, _, attr = components[key].partition(":")
        assert isinstance(getattr(importlib.import_module(module), attr), cls), components[key]
    _, warnings = load_and_validate(ROOT / "pyproject.toml")  # raises on what `flwr run` refuses
    assert not warnings


def test_config_defaults_are_valid(tmp_path: Path) -> None:
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    from simulator.engines.flower.app import app_config
    from simulator.preflight import check_new_run

    defaults = app_section()["app"]["config"]
    assert all(isinstance(v, bool | int | float | str) for v in defaults.values()), defaults
    config = app_config(defaults, cwd=tmp_path)
    assert config.out == tmp_path / defaults["out"]
    warned: list[str] = []
    scenario = check_new_run(config.scenario, config.overrides, config.out, warned.extend)
    assert scenario == load_scenario(SMOKE) and not warned  # the defaults run the smoke scenario as it is
    # the app `flwr run` packages holds the default scenario where the ServerApp looks for it
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT)))
    assert defaults["scenario"] in fab.namelist()
    assert "simulator/engines/flower/app.py" in fab.namelist()


def test_run_config_errors_name_the_field(tmp_path: Path) -> None:
    from simulator.engines.flower.app import app_config
    from simulator.preflight import check_new_run

    with pytest.raises(ScenarioError) as err:
        app_config({"scenario": "", "out": "runs", "seed": "3", "set": ""})
    assert {p.path for p in err.value.problems} == {"run-config scenario", "run-config seed"}
    with pytest.raises(ScenarioError, match="drop one"):
        app_config({"scenario": "s.yaml", "out": "runs", "seed": 3, "set": "seed=4"})
    config = app_config({"scenario": str(SMOKE), "out": str(tmp_path), "seed": 7, "set": "dpm.lambda=2"})
    assert config.overrides == ["dpm.lambda=2", "seed=7"]
    bad = app_config({"scenario": str(SMOKE), "out": str(tmp_path), "seed": -1, "set": "dpm.epochs=0"})
    with pytest.raises(ScenarioError) as err:
        check_new_run(bad.scenario, bad.overrides, bad.out, print)
    assert [p.path for p in err.value.problems] == ["dpm.epochs"]


def test_federation_size_check_names_what_the_scenario_needs() -> None:
    from simulator.engines import RunFailed
    from simulator.engines.flower.app import check_federation_size, federation_config

    scenario = load_scenario(SMOKE)
    n = len(roles.parties(scenario))
    assert federation_config(scenario) == f"num-supernodes={n} client-resources-num-cpus=1"
    check_federation_size(n, scenario)
    for wrong in (2, n + 1):  # Flower's default federation has 2
        with pytest.raises(RunFailed) as err:
            check_federation_size(wrong, scenario)
        text = str(err.value)
        assert f"has {wrong} SuperNode(s)" in text and f"{n} parties" in text
        assert f'--federation-config "num-supernodes={n} client-resources-num-cpus=1"' in text
        assert f"options.num-supernodes = {n}" in text


# --- `flwr run .` ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def superlinks_of(home: Path) -> list[int]:
    """Pids of the SuperLinks that `flwr run` started for this FLWR_HOME (their log file lies in it)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if any(a.endswith(b"flower-superlink") for a in args) and str(home).encode() in b" ".join(args):
                pids.append(int(cmdline.parent.name))
    return pids


@contextmanager
def flower_home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment for `flwr run` with its own FLWR_HOME and local SuperLink ports; afterwards the
    SuperLink it started, and its session (the simulation process, Ray), are killed."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),  # never another session's SuperLink
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{FLWR.parent}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superlink, flwr-simulation
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "COLUMNS": "200",
    }
    try:
        yield env
    finally:
        for pid in superlinks_of(home):
            kill_session(pid)
        assert not superlinks_of(home)


def flwr_run(env: dict[str, str], run_config: str, federation: str) -> subprocess.CompletedProcess[str]:
    """`flwr run . --stream` to the end of the run; stdout and stderr hold the stream."""
    return subprocess.run(
        [str(FLWR), "run", ".", "--stream", "--run-config", run_config, "--federation-config", federation],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=FLWR_RUN_TIMEOUT_S,
    )


def records(run_dir: Path) -> list[tuple[Any, ...]]:
    """A run's result records without timings (metrics *_s), as comparable tuples."""
    keys = ("table", "row", "label", "entity", "metric", "value")
    rows = [tuple(r[k] for k in keys) for r in result_records(run_dir) if not r["metric"].endswith("_s")]
    assert all(not (isinstance(r[-1], float) and math.isnan(r[-1])) for r in rows)  # NaN is None here
    return sorted(rows, key=repr)


@pytest.mark.slow
def test_flwr_run_gives_the_records_of_veil_run(smoke_run: Path, tmp_path: Path) -> None:
    from simulator.engines.flower.app import federation_config

    out = tmp_path / "runs"
    federation = federation_config(load_scenario(SMOKE))
    with flower_home(tmp_path) as env:
        # A refused scenario: the error in the stream names the field, and no run directory is made.
        bad = flwr_run(env, f"scenario='scenarios/smoke.yaml' out='{out}' set='dpm.epochs=0'", federation)
        stream = bad.stdout + bad.stderr
        assert "dpm.epochs" in stream and "no run started" in stream, stream[-5000:]
        # Flower's default federation (2 SuperNodes): refused, saying what the scenario needs.
        small = flwr_run(env, f"scenario='scenarios/smoke.yaml' out='{out}'", "num-supernodes=2")
        stream = small.stdout + small.stderr
        assert f'--federation-config "{federation}"' in stream, stream[-5000:]
        assert not out.exists() or not any(out.iterdir())  # `flwr run` exits 0 all the same

        t0 = time.monotonic()
        done = flwr_run(env, f"scenario='scenarios/smoke.yaml' out='{out}' seed=0", federation)
        stream = done.stdout + done.stderr
        print(f"flwr run of the smoke scenario: {time.monotonic() - t0:.0f} s")
    assert done.returncode == 0, stream[-5000:]
    (run_dir,) = out.iterdir()
    assert "all stages done" in stream and str(run_dir) in stream, stream[-5000:]
    assert records(run_dir) == records(smoke_run)
    assert (run_dir / "scenario.yaml").read_bytes() == (smoke_run / "scenario.yaml").read_bytes()
