"""`prepare`: each entity loads its private partition of D_p (chosen by `dataset.seed`) and keeps it."""

from __future__ import annotations

import io

import numpy as np

from entities.data import partition
from simulator import cache
from simulator.protocol import Payload, Record, Task
from simulator.roles import Role
from simulator.stages.base import Server, Stage, register
from simulator.views import PartyView

PARTITION_FILE = "partition.npz"


def own_partition(view: PartyView) -> tuple[np.ndarray, np.ndarray]:
    """The entity's images and labels, from its private directory."""
    data = view.read_private(PARTITION_FILE, missing=f"stage 'prepare' has not run for {view.name}")
    with np.load(io.BytesIO(data)) as arrays:
        return arrays["images"], arrays["labels"]


@register
class Prepare(Stage):
    name = "prepare"
    roles = frozenset({Role.ENTITY})

    def plan(self, server: Server) -> list[Task]:
        return [Task(self.name, p) for p in server.of_role(Role.ENTITY)]

    def work(self, view: PartyView, task: Task) -> Payload:
        scenario = view.scenario
        data = cache.dataset(view)
        index = partition(
            data.task_train.labels, [e.fraction for e in scenario.entities], seed=scenario.task_seed
        )
        mine = data.task_train.subset(index[[e.name for e in scenario.entities].index(view.name)])
        buffer = io.BytesIO()
        np.savez(buffer, images=mine.images, labels=mine.labels)
        view.write_private(PARTITION_FILE, buffer.getvalue())
        return Payload(metrics={"n_train": len(mine), "n_classes": len(data.task_train.classes)})

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        n = int(reply.number("n_train"))
        server.records.append(Record("partitions", None, task.party, task.party, "n_train", n))
