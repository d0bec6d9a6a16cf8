"""The one ClientApp every node runs; a node learns its role from its partition id.

Thin routing over `simulator.node`: each handler reads the run directory from the message,
sets torch's thread count to the node's CPU share, and replies with the stage's records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from simulator import node
from simulator.courier import pack
from simulator.rundir import RunDir
from simulator.schema import Scenario

app = ClientApp()

Handler = Callable[[RunDir, Scenario, str, RecordDict], RecordDict]


def _handle(msg: Message, context: Context, work: Handler) -> Message:
    config = msg.content.config_records["config"]
    run = RunDir.open(Path(str(config["run_dir"])))
    scenario = run.scenario()
    torch.set_num_threads(max(1, int(scenario.resources.num_cpus)))
    party = node.role(scenario, int(context.node_config["partition-id"]))
    if party != config["party"]:
        raise ValueError(f"message for {config['party']!r} reached the node of {party!r}")
    return Message(content=work(run, scenario, party, msg.content), reply_to=msg)


@app.query("whoami")
def whoami(msg: Message, context: Context) -> Message:
    return Message(
        content=pack(config={"partition-id": int(context.node_config["partition-id"])}), reply_to=msg
    )


@app.train("prepare")
def prepare(msg: Message, context: Context) -> Message:
    return _handle(msg, context, node.prepare)


@app.train("pretrain")
def pretrain(msg: Message, context: Context) -> Message:
    return _handle(msg, context, node.pretrain)


@app.train("poison")
def poison(msg: Message, context: Context) -> Message:
    return _handle(msg, context, node.poison)


@app.train("refine")
def refine(msg: Message, context: Context) -> Message:
    return _handle(msg, context, node.refine)


@app.train("codes")
def codes(msg: Message, context: Context) -> Message:
    return _handle(msg, context, node.codes)


@app.train("access")
def access(msg: Message, context: Context) -> Message:
    return _handle(msg, context, node.access)
