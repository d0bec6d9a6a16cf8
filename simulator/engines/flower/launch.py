"""Start the Flower simulation of one run: the ServerApp in this process, one SuperNode per party on Ray."""

from __future__ import annotations

import logging
import warnings
from contextlib import AbstractContextManager, nullcontext

import torch
from flwr.simulation import run_simulation

from simulator import cluster, roles
from simulator.engines import Log, RunFailed
from simulator.engines.flower.apps import make_client_app, make_server_app
from simulator.rundir import RunDir
from simulator.schema import Scenario


def backend_config(scenario: Scenario, ray_address: str | None, log: Log) -> dict[str, object]:
    gpus = scenario.resources.num_gpus
    if gpus > 0 and not torch.cuda.is_available():
        # only with resources.cpu_fallback (simulator.preflight refuses otherwise); asking Ray for GPU
        # shares without a GPU makes the nodes never start
        log(f"[yellow]resources.num_gpus={gpus} but no CUDA device here; cpu_fallback: nodes get CPU only[/]")
        gpus = 0.0
    init_args: dict[str, object] = {"include_dashboard": False, "log_to_driver": False}
    if ray_address:  # simulate() joins the cluster first (simulator.cluster.connect); this is a fallback
        init_args = {"address": ray_address, "log_to_driver": False}
    return {
        "client_resources": {"num_cpus": scenario.resources.num_cpus, "num_gpus": gpus},
        "init_args": init_args,
    }


def task_window(scenario: Scenario, ray_address: str | None) -> int:
    """How many tasks go out at once: two per node Ray can run at a time (its CPUs, and GPUs where the
    nodes ask for them, over each node's share), so that a node finishing one has the next at hand."""
    import os

    if ray_address:  # joined already (simulate): the whole cluster's resources
        import ray

        total = ray.cluster_resources()
        cpus, gpus = float(total.get("CPU", 1)), float(total.get("GPU", 0))
    else:  # run_simulation starts Ray on this machine's CPUs
        cpus, gpus = float(len(os.sched_getaffinity(0))), float(torch.cuda.device_count())
    share = scenario.resources
    nodes = int(cpus // share.num_cpus)
    if share.num_gpus > 0 and gpus > 0:
        nodes = min(nodes, int(gpus // share.num_gpus))
    return 2 * max(1, nodes)


class _KnownDeprecation(logging.Filter):
    """Drop Flower's notice that `run_simulation` is deprecated: Veil uses it on purpose (an in-process
    simulation with the server in this process); see FLOWER-NOTES.md."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


_KNOWN_DEPRECATION = _KnownDeprecation()


def simulate(run: RunDir, log: Log, ray_address: str | None) -> None:
    scenario = run.scenario()
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("flwr").addFilter(_KNOWN_DEPRECATION)  # added once: the same object
    failures: list[BaseException] = []
    logs: AbstractContextManager[None] = nullcontext()
    if ray_address:  # joined before Flower's backend would (it reuses it); Ray's output to ray.log
        cluster.connect(ray_address)
        logs = cluster.ray_log_to(run.root / cluster.RAY_LOG)
    with warnings.catch_warnings(), logs:
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=make_server_app(run, log, failures, task_window(scenario, ray_address)),
            client_app=make_client_app(),
            num_supernodes=len(roles.parties(scenario)),
            backend_config=backend_config(scenario, ray_address, log),  # type: ignore[arg-type]
        )
    if failures:
        if isinstance(failures[0], RunFailed):  # Stopped, TaskFailed: their type tells the launcher more
            raise failures[0]
        raise RunFailed(str(failures[0])) from failures[0]
