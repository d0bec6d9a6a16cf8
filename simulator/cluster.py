"""Checks and set-up for a run on an existing Ray cluster (`veil run --ray-address HOST:PORT`).

Before anything is written, the address must accept a TCP connection (`check_reachable`). Before a run
starts, every alive Ray node must read a probe file the driver wrote in the run's directory
(`check_nodes_see`): the nodes read and write the run directory themselves, so it must be on storage
they all mount at the same absolute path. Ray's own output goes to `<run>/ray.log` (`ray_log_to`).
Only `check_reachable` and `parse_address` are import-light; the rest imports ray when called.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.schema import Problem, ScenarioError

CONNECT_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 60.0
PROBE_PREFIX = ".veil-probe-"
RAY_LOG = "ray.log"
_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


class ClusterError(RuntimeError):
    """The cluster cannot run this run (a node that cannot see the run directory, a failed connect)."""


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT of a Ray head's GCS (what `ray start --head` prints), as (host, port)."""
    m = _ADDRESS.fullmatch(text.strip())
    port = int(m.group("port")) if m else 0
    if m is None or not 0 < port < 65536:
        why = (
            "Ray Client (ray://) is not supported"
            if text.startswith("ray://")
            else f"{text!r} is not HOST:PORT"
        )
        raise ScenarioError(
            "--ray-address",
            [Problem("--ray-address", f"{why}; expected the head's HOST:PORT, e.g. 10.0.0.5:6379")],
        )
    return m.group("host").strip("[]"), port


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connect to the head within `timeout`; ScenarioError naming the address when it fails
    (without this, ray.init retries for a minute and then prints a traceback)."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        why = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ScenarioError(
            "--ray-address",
            [
                Problem(
                    "--ray-address",
                    f"cannot reach the Ray head at {address} ({why} within {timeout:g} s); expected a "
                    "running head (`ray start --head --port PORT`) reachable from this machine",
                )
            ],
        ) from None


def pythonpath() -> str:
    """What Flower's Ray backend exports to its actors: this driver's sys.path (so they import Veil)."""
    parts = [p for p in sys.path if p]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def connect(address: str) -> None:
    """Join the cluster (once per process; Flower's backend then reuses the connection).

    Workers' output is streamed to the driver (log_to_driver), where `ray_log_to` sends it to ray.log."""
    import ray

    if ray.is_initialized():
        return
    with tempfile.TemporaryFile() as said, _stderr_to(said):  # Ray's C++ retry lines, kept for the error
        try:
            ray.init(
                address=address,
                log_to_driver=True,
                logging_level=logging.WARNING,
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath()}},
            )
            return
        except Exception as err:  # noqa: BLE001 - a version mismatch, a head that went away: said plainly
            failure = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        said.seek(0)
        lines = said.read().decode(errors="replace").strip().splitlines()
    last = f" (Ray said: {lines[-1].split('] ', 1)[-1][:300]})" if lines else ""
    raise ClusterError(f"cannot join the Ray cluster at {address}: {failure}{last}")


@contextmanager
def _stderr_to(fh: Any) -> Iterator[None]:
    """File descriptor 2 into `fh` while it lasts (Ray's core writes there directly, not through sys)."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fh.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@dataclass
class Node:
    node_id: str
    ip: str
    host: str


def alive_nodes() -> list[Node]:
    import ray

    return [
        Node(str(n["NodeID"]), str(n.get("NodeManagerAddress", "?")), str(n.get("NodeManagerHostname", "?")))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def _read_probe(path: str) -> str:
    """Run on a node: the probe file's text, or why it could not be read."""
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as err:
        return f"!{err.strerror or err}"


def ray_reader(nodes: list[Node], path: str, timeout: float) -> dict[str, str]:
    """Read `path` on each node with a task pinned there (hard affinity, no CPU asked, so a busy node
    answers too); node id -> what it read, or '!why'."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(_read_probe)
    refs = {
        n.node_id: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        ).remote(path)
        for n in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    out: dict[str, str] = {}
    for node_id, ref in refs.items():
        if ref not in ready:
            out[node_id] = f"!gave no answer within {timeout:g} s"
            ray.cancel(ref, force=True)
            continue
        try:
            out[node_id] = ray.get(ref, timeout=timeout)
        except Exception as err:  # noqa: BLE001 - the node could not run the probe (no Veil there, say)
            out[node_id] = f"!could not run the probe: {str(err).splitlines()[0] if str(err) else err}"
    return out


Reader = Callable[[list[Node], str, float], dict[str, str]]


def check_nodes_see(
    directory: Path,
    nodes: list[Node] | None = None,
    read: Reader | None = None,
    timeout: float = PROBE_TIMEOUT_S,
) -> int:
    """Every node reads a probe file written in `directory` (by default: every alive node, read with
    ray_reader); ClusterError naming each node that does not read it back (its id, ip, host, the path
    and why). The probe is removed either way. Returns how many nodes read it."""
    nodes = alive_nodes() if nodes is None else nodes
    read = ray_reader if read is None else read
    token = secrets.token_hex(16)
    probe = Path(directory).resolve() / f"{PROBE_PREFIX}{token}"
    probe.write_text(token)
    try:
        seen = read(nodes, str(probe), timeout)
    finally:
        probe.unlink(missing_ok=True)
    blind = []
    for n in nodes:
        got = seen.get(n.node_id, "!no answer")
        if got != token:
            why = got[1:] if got.startswith("!") else "read other content (a different file system there?)"
            blind.append(f"  node {n.node_id} (ip {n.ip}, host {n.host}) cannot read {probe}: {why}")
    if blind:
        raise ClusterError(
            f"{len(blind)} of {len(nodes)} Ray node(s) cannot see the run directory {directory}; every node "
            "must mount it at the same absolute path:\n" + "\n".join(blind)
        )
    return len(nodes)


class _RayLogFile(logging.Handler):
    def __init__(self, fh: Any):
        super().__init__()
        self.fh = fh

    def emit(self, record: logging.LogRecord) -> None:
        self.fh.write(f"{time.strftime('%H:%M:%S')} [{record.name}] {self.format(record)}\n")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextmanager
def ray_log_to(path: Path) -> Iterator[None]:
    """While it lasts, what Ray prints for its workers (the coloured `(ClientAppActor pid=...)` lines) and
    what the `ray` logger says go to `path` (appended), not to Veil's console."""
    from ray._private import worker as ray_worker

    fh = open(path, "a", buffering=1, errors="replace")  # noqa: SIM115 - closed in finally
    dispatcher = ray_worker.global_worker_stdstream_dispatcher

    def to_file(data: dict[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name") or "worker"
        for line in data.get("lines", []):
            fh.write(f"({who} pid={data.get('pid')} ip={data.get('ip')}) {_ANSI.sub('', line)}\n")

    logger = logging.getLogger("ray")
    handlers = list(logger.handlers)
    file_handler = _RayLogFile(fh)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("veil_ray_log", to_file)
    for h in handlers:
        logger.removeHandler(h)
    logger.addHandler(file_handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        dispatcher.remove_handler("veil_ray_log")
        logger.removeHandler(file_handler)
        for h in handlers:
            logger.addHandler(h)
        logger.propagate = propagate
        fh.close()
