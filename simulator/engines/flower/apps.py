"""The Flower apps: the ServerApp that drives a run, and the one ClientApp every node runs.

The ClientApp registers one handler per registered stage, plus `query.whoami`; a node learns its party
from its partition id (its index in `roles.parties`), and hands each task to `simulator.node`.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from simulator import node, roles
from simulator.cache import scenario_of
from simulator.engines import Log, drive
from simulator.engines.flower import codec
from simulator.engines.flower.grid import AuditedGrid
from simulator.engines.flower.session import FlowerSession
from simulator.federation import PHASE, ROUND
from simulator.protocol import Task
from simulator.rundir import RunDir
from simulator.stages import STAGES


def _party(msg: Message, context: Context) -> tuple[Path, str]:
    root = Path(str(codec.header(msg.content)["run_dir"]))
    names = [p.name for p in roles.parties(scenario_of(root))]
    pid = int(context.node_config["partition-id"])
    if not 0 <= pid < len(names):
        raise ValueError(f"partition id {pid} has no party; the scenario has {len(names)}")
    return root, names[pid]


def make_client_app() -> ClientApp:
    app = ClientApp()

    @app.query("whoami")
    def whoami(msg: Message, context: Context) -> Message:
        root, name = _party(msg, context)
        return Message(content=codec.encode(node.hello(root, name)), reply_to=msg)

    def handle(msg: Message, context: Context) -> Message:
        root, name = _party(msg, context)
        head = codec.header(msg.content)
        task = Task(str(head["stage"]), str(head["party"]), codec.decode(msg.content), key=str(head["key"]))
        return Message(content=codec.encode(node.handle(root, name, task)), reply_to=msg)

    def federated(msg: Message, context: Context) -> Message:
        """A round of Flower's FedAvg (plain "train" / "evaluate", simulator.federation): the run and the
        stage come in the strategy's config record, the phase is the message type."""
        config = dict(msg.content.config_records["config"])
        root = Path(str(config["run_dir"]))
        names = [p.name for p in roles.parties(scenario_of(root))]
        pid = int(context.node_config["partition-id"])
        if not 0 <= pid < len(names):
            raise ValueError(f"partition id {pid} has no party; the scenario has {len(names)}")
        payload = codec.decode(msg.content)
        payload.config[PHASE] = msg.metadata.message_type
        task = Task(str(config["stage"]), names[pid], payload, key=f"round {config[ROUND]!s}")
        return Message(content=codec.encode(node.handle(root, names[pid], task)), reply_to=msg)

    for stage_name in STAGES.names:
        app.train(stage_name)(handle)
    app.train()(federated)
    app.evaluate()(federated)
    return app


def drive_on(grid: Grid, run: RunDir, log: Log, window: int | None = None) -> None:
    """Every stage of `run` through Flower's `grid` (audited), as the ServerApp's main does: the one
    server loop of both the in-process simulation (launch.py) and the Flower App (app.py). `window`:
    at most that many tasks out at once (FlowerSession)."""
    timeout = run.scenario().timeouts.stage_seconds
    session = FlowerSession(AuditedGrid(grid, run), str(run.root), timeout=timeout, window=window)
    drive(run, session, log)


def make_server_app(
    run: RunDir, log: Log, failures: list[BaseException], window: int | None = None
) -> ServerApp:
    """A ServerApp bound to one run directory. Under run_simulation it runs in a thread of this
    process, so an exception is kept in `failures` for the launcher to raise."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            drive_on(grid, run, log, window)
        except BaseException as err:  # noqa: BLE001 - handed to the launcher, which fails loudly
            failures.append(err)

    return app
