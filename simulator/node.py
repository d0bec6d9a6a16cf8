"""A party's node: its side of the engine, in whatever process the engine runs it.

`handle` builds the party's view from its role and runs one task's stage work with it; the party's
code never sees the run root. What a node loaded stays loaded (simulator.cache).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from entities import progress
from entities.training import accelerating, checkpointing
from simulator import roles, sealing
from simulator.cache import scenario_of
from simulator.progress import party_task
from simulator.protocol import Payload, Task
from simulator.stages import STAGES
from simulator.views import Forbidden, PartyView

EXPECTED, WROTE = "expected", "wrote"  # the task's and the reply's digest lists (simulator.engines)
# What a reply says of the node that ran the task, for the manifest (simulator.engines.drive).
NODE_FACTS = ("node_torch_threads", "node_torch_interop_threads", "node_pid")
# When the node began and ended the task (its wall clock, time.time()): the manifest's per-task timings
# (simulator.engines.drive), measured here so that both engines time the same span.
NODE_TIMES = ("node_started", "node_finished")
RESUMED = "resumed_fits"  # "FIT:NET:EPOCH" for each fit that went on from an earlier attempt's checkpoint


def hello(root: Path, name: str) -> Payload:
    """Who this node is: its party and the public half of its key pair (made on first contact)."""
    scenario = scenario_of(root)
    view = PartyView(root, roles.party(scenario, name), scenario)
    return Payload(config={"party": name, "public_key": sealing.public_key(view.identity())})


def handle(root: Path, name: str, task: Task) -> Payload:
    """Run one task as party `name`, with only that party's view of the run."""
    started = time.time()  # before the scenario and the dataset load: a cold node pays them in its task
    scenario = scenario_of(root)
    party = roles.party(scenario, name)
    if task.party != name:
        raise Forbidden(f"a task for {task.party!r} reached the node of {name!r}")
    stage = STAGES.get(task.stage)
    if party.role not in stage.roles:
        raise Forbidden(f"stage {task.stage!r} is not for {name} ({party.role})")
    torch.set_num_threads(max(1, int(scenario.resources.num_cpus)))
    expected = task.payload.config.get(EXPECTED, [])
    digests = dict(str(x).partition("=")[::2] for x in (expected if isinstance(expected, list) else []))
    view = PartyView(root, party, scenario, expected=digests)
    # what the party is doing, for the driver's display (simulator.progress); a stage may name finer units.
    # Its fits checkpoint in its private directory, so that a task killed mid-fit resumes mid-fit, and
    # train as resources.gpu says where the node has a GPU.
    with party_task(root, name, task.stage, task.key) as sink, progress.reporting(sink):
        with progress.unit(task.key if task.key != task.stage else ""), accelerating(scenario.resources.gpu):
            with checkpointing(view.checkpoint_dir(task.stage, task.key)) as checkpoints:
                reply = stage.work(view, task)
    if checkpoints.resumed:
        reply.config[RESUMED] = [f"{i}:{net}:{epoch}" for i, net, epoch in checkpoints.resumed]
    reply.reads = view.reads + reply.reads
    # the threads this node really trained with, not the driver's (they differ: a GPU host's driver has 16)
    facts = (torch.get_num_threads(), torch.get_num_interop_threads(), os.getpid())
    reply.config.update(zip(NODE_FACTS, facts, strict=True))
    if view.wrote:  # what the party keeps, as digests: the server records them, never the files
        reply.config[WROTE] = [f"{where}={sha}" for where, sha in sorted(view.wrote.items())]
    reply.config.update(zip(NODE_TIMES, (started, time.time()), strict=True))
    return reply
