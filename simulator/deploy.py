"""One organisation's SuperNode in Flower's deployment engine: `veil supernode`, and its node's directory.

    veil supernode --party E1 --dir /srv/veil-E1 --superlink linkhost:8000 --scenario scenarios/smoke.yaml

checks its inputs (the party is one of the scenario's, the directory is new or this party's own, the
SuperLink answers), marks the directory as the party's (`.veil-party`) and becomes
`flower-supernode --insecure --superlink HOST:PORT --node-config 'party="E1" dir="..." scenario="smoke"'`.
The node keeps each run under DIR/<run name>/, laid out as a run directory holds one party's share:
scenario.yaml, parties/<party>/ (private, 0700), and its copies of the shared pool/ and public/, which
reach it as messages (simulator.engines.flower.courier). Imports no torch and no flwr.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from pathlib import Path

from simulator import roles
from simulator.schema import Problem, ScenarioError, load_scenario

PARTY_FILE = ".veil-party"  # in a node's --dir: whose directory it is
NODE_PARTY, NODE_DIR, NODE_SCENARIO = "party", "dir", "scenario"  # the node config veil supernode sets
CONNECT_TIMEOUT_S = 5.0
FLWR_HOME_DIR = ".flwr"  # the node's Flower state (its FAB copies), inside its --dir
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ADDRESS = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")


def _refuse(option: str, message: str) -> ScenarioError:
    return ScenarioError(option, [Problem(option, message)])


def check_party(scenario_file: str, party: str) -> str:
    """The scenario's name, once `party` is one of its parties; ScenarioError otherwise."""
    scenario = load_scenario(Path(scenario_file))
    names = [p.name for p in roles.parties(scenario)]
    if party not in names:
        raise _refuse(
            "--party",
            f"{party!r} is no party of scenario {scenario.name!r} ({scenario_file}); expected one of"
            f" {', '.join(names)}",
        )
    return scenario.name


def check_dir(text: str, party: str) -> Path:
    """--dir as an absolute path: new, empty, or marked as `party`'s; ScenarioError otherwise."""
    path = Path(text).absolute()
    if '"' in str(path) or "\\" in str(path):
        raise _refuse("--dir", f"{path}: expected a path without quotes or backslashes")
    if path.exists() and not path.is_dir():
        raise _refuse("--dir", f"{path} is a file; expected the party's own directory")
    if path.is_dir():
        marker = path / PARTY_FILE
        if marker.is_file():
            owner = marker.read_text().strip()
            if owner != party:
                raise _refuse(
                    "--dir",
                    f"{path} is {owner}'s directory ({PARTY_FILE} says so); expected {party}'s own,"
                    " or a new one",
                )
        elif any(path.iterdir()):
            raise _refuse(
                "--dir",
                f"{path} holds files and no {PARTY_FILE}; expected a new or empty directory for {party}",
            )
    return path


def parse_superlink(text: str) -> tuple[str, int]:
    m = _ADDRESS.fullmatch(text.strip())
    if m is None or not 0 < int(m.group("port")) < 65536:
        raise _refuse("--superlink", f"{text!r}: expected HOST:PORT of the SuperLink, e.g. linkhost:8000")
    return m.group("host").strip("[]"), int(m.group("port"))


def check_superlink(text: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connect to the SuperLink within `timeout` (flower-supernode would retry forever)."""
    host, port = parse_superlink(text)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        why = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise _refuse(
            "--superlink",
            f"cannot reach {text} ({why}; waited up to {timeout:g} s); expected a running SuperLink"
            " (`flower-superlink --insecure --host HOST`, port 8000 by default)",
        ) from None


def free_port() -> int:
    """A loopback port for the node's own Runtime API (two SuperNodes on one host need two)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def supernode_command(party: str, directory: Path, superlink: str, scenario: str) -> list[str]:
    exe = Path(sys.executable).with_name("flower-supernode")
    config = f'{NODE_PARTY}="{party}" {NODE_DIR}="{directory}" {NODE_SCENARIO}="{scenario}"'
    return [
        str(exe if exe.exists() else shutil.which("flower-supernode") or "flower-supernode"),
        "--insecure",
        "--superlink",
        superlink,
        "--node-config",
        config,
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    ]


def start_supernode(party: str, directory: str, superlink: str, scenario_file: str) -> list[str]:
    """Check every input (ScenarioError, nothing written), then mark the directory; the command to exec."""
    scenario = check_party(scenario_file, party)
    path = check_dir(directory, party)
    check_superlink(superlink)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    (path / PARTY_FILE).write_text(party + "\n")
    return supernode_command(party, path, superlink, scenario)


def node_env(directory: Path) -> dict[str, str]:
    """The SuperNode's environment: its Flower state inside its own directory, no telemetry."""
    return {
        **os.environ,
        "FLWR_HOME": str(directory / FLWR_HOME_DIR),
        "FLWR_TELEMETRY_ENABLED": "0",
    }


# --- inside the node (the ClientApp) ------------------------------------------------------------


def node_root(node_config: dict[str, object], run_dir: str) -> Path:
    """Where a deployed node keeps run `run_dir` (the server's path: only its name is used)."""
    name = Path(run_dir).name
    if not _RUN_NAME.fullmatch(name):
        raise ValueError(f"run name {name!r} is not a plain directory name")
    return Path(str(node_config[NODE_DIR])) / name


def join_run(node_config: dict[str, object], run_dir: str, scenario_yaml: str) -> tuple[Path, str]:
    """A deployed node's first contact with a run: its directory, with the run's resolved scenario,
    once the scenario is the one the organisation agreed to and names this party."""
    from entities.files import write_atomic
    from simulator.cache import SCENARIO_FILE, scenario_of

    root, party = node_root(node_config, run_dir), str(node_config[NODE_PARTY])
    path = root / SCENARIO_FILE
    if path.is_file():
        if path.read_text() != scenario_yaml:
            raise ValueError(f"{root} already holds another scenario under this run's name")
        return root, party
    # checked before the run is taken in: a refused run leaves nothing in the party's directory
    probe = Path(str(node_config[NODE_DIR])) / f".scenario-{os.getpid()}.yaml"
    try:
        write_atomic(probe, scenario_yaml)
        scenario = load_scenario(probe)
    finally:
        probe.unlink(missing_ok=True)
    if scenario.name != node_config[NODE_SCENARIO]:
        raise ValueError(
            f"the run is of scenario {scenario.name!r}; {party}'s node serves {node_config[NODE_SCENARIO]!r}"
        )
    roles.party(scenario, party)  # ValueError naming the scenario when it has no such party
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(path, scenario_yaml)
    scenario_of(root)
    return root, party
