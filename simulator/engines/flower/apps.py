"""The Flower apps: the ServerApp that drives a run, and the one ClientApp every node runs.

The ClientApp registers one handler per registered stage, plus `query.whoami`; a node learns its party
from its partition id (its index in `roles.parties`), and hands each task to `simulator.node`. A node
`veil supernode` started (Flower's deployment engine) knows its party and its own directory from its node
config instead, and takes the shared files as messages (`query.put`, `query.get`: courier).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from simulator import deploy, node, roles
from simulator.cache import scenario_of
from simulator.engines import Log, drive
from simulator.engines.flower import codec, courier
from simulator.engines.flower.grid import AuditedGrid
from simulator.engines.flower.session import DEPLOYED, SCENARIO, FlowerSession
from simulator.federation import PHASE, ROUND
from simulator.protocol import Payload, Task
from simulator.rundir import RunDir
from simulator.stages import STAGES


def _deployed(context: Context) -> bool:
    """A SuperNode `veil supernode` started (its node config names its party and directory), rather
    than one of a simulation's, which share the server's disk and know only their partition id."""
    return deploy.NODE_DIR in context.node_config


def _node(run_dir: str, context: Context) -> tuple[Path, str]:
    """The run's directory as this node sees it, and the party it is."""
    if _deployed(context):
        return deploy.node_root(dict(context.node_config), run_dir), str(
            context.node_config[deploy.NODE_PARTY]
        )
    root = Path(run_dir)
    names = [p.name for p in roles.parties(scenario_of(root))]
    pid = int(context.node_config["partition-id"])
    if not 0 <= pid < len(names):
        raise ValueError(f"partition id {pid} has no party; the scenario has {len(names)}")
    return root, names[pid]


def _party(msg: Message, context: Context) -> tuple[Path, str]:
    return _node(str(codec.header(msg.content)["run_dir"]), context)


def _work(root: Path, name: str, task: Task, context: Context) -> Payload:
    """node.handle; on a deployed node, the reply also says what the task left for the server to fetch
    (its pool shards, public files, figures: courier.outbox), which the server then asks for."""
    if not _deployed(context):
        return node.handle(root, name, task)
    before = courier.stats(root, courier.OUTBOX_PLACES)
    reply = node.handle(root, name, task)
    if files := courier.outbox(root, before):
        reply.config[courier.OUTBOX] = files
        if entries := courier.pool_entries(root, name, files):
            reply.config[courier.POOL_ENTRIES] = entries
    return reply


def make_client_app() -> ClientApp:
    app = ClientApp()

    @app.query("whoami")
    def whoami(msg: Message, context: Context) -> Message:
        head = codec.header(msg.content)
        if not _deployed(context):
            root, name = _party(msg, context)
            return Message(content=codec.encode(node.hello(root, name)), reply_to=msg)
        # a deployed node's first sight of the run: the resolved scenario comes with the question
        root, name = deploy.join_run(dict(context.node_config), str(head["run_dir"]), str(head[SCENARIO]))
        reply = node.hello(root, name)
        reply.config[DEPLOYED] = True
        return Message(content=codec.encode(reply), reply_to=msg)

    def deployed_root(msg: Message, context: Context, way: str) -> Path:
        if not _deployed(context):
            raise ValueError(
                f"files travel as messages only {way} deployed nodes; this one shares the run directory"
            )
        root, _ = _party(msg, context)
        return root

    @app.query("put")
    def put(msg: Message, context: Context) -> Message:
        root = deployed_root(msg, context, "to")
        return Message(content=courier.receive(root, msg.content), reply_to=msg)

    @app.query("get")
    def get(msg: Message, context: Context) -> Message:
        root = deployed_root(msg, context, "from")
        return Message(content=courier.serve(root, msg.content), reply_to=msg)

    def handle(msg: Message, context: Context) -> Message:
        root, name = _party(msg, context)
        head = codec.header(msg.content)
        task = Task(str(head["stage"]), str(head["party"]), codec.decode(msg.content), key=str(head["key"]))
        return Message(content=codec.encode(_work(root, name, task, context)), reply_to=msg)

    def federated(msg: Message, context: Context) -> Message:
        """A round of Flower's FedAvg (plain "train" / "evaluate", simulator.federation): the run and the
        stage come in the strategy's config record, the phase is the message type."""
        config = dict(msg.content.config_records["config"])
        root, name = _node(str(config["run_dir"]), context)
        payload = codec.decode(msg.content)
        payload.config[PHASE] = msg.metadata.message_type
        task = Task(str(config["stage"]), name, payload, key=f"round {config[ROUND]!s}")
        return Message(content=codec.encode(node.handle(root, name, task)), reply_to=msg)

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
