"""`prepare`: each entity picks its private partition of D_p (chosen by `dataset.seed` and the scenario's
`partition`: stratified, or label-skewed) and keeps it, as indices into the dataset with the dataset's
digest (not as pixels: a partition of ImageNet is gigabytes). Each entity reports its class histogram
(table "class_histogram": row = class index, label = class name, metric "count")."""

from __future__ import annotations

import io

import numpy as np

from entities.data import class_histogram, partition
from entities.datasets import ImageSet
from simulator import cache
from simulator.protocol import Payload, Record, Task
from simulator.roles import Role
from simulator.schema import ClassesPartition, DirichletPartition, Scenario
from simulator.stages.base import Server, Stage, register
from simulator.views import PartyView

PARTITION_FILE = "partition.npz"
HISTOGRAM = "class_histogram"


def partitions(scenario: Scenario, labels: np.ndarray) -> list[np.ndarray]:
    """Every entity's indices into D_p's training set, in entity order (deterministic from dataset.seed)."""
    skew = scenario.partition
    return partition(
        labels,
        [e.fraction for e in scenario.entities],
        seed=scenario.task_seed,
        concentration=skew.concentration if isinstance(skew, DirichletPartition) else None,
        classes_per_entity=skew.per_entity if isinstance(skew, ClassesPartition) else None,
    )


def own_set(view: PartyView) -> ImageSet:
    """The entity's partition of D_p, its pixels read when used; refused if the dataset has changed."""
    kept = view.read_private(PARTITION_FILE, missing=f"stage 'prepare' has not run for {view.name}")
    with np.load(io.BytesIO(kept)) as arrays:
        index, digest = arrays["index"], str(arrays["digest"])
    data = cache.dataset(view)
    if digest != data.digest:
        raise ValueError(
            f"{view.name}/{PARTITION_FILE}: the partition was drawn from another dataset "
            f"(digest {digest[:12]}, now {data.digest[:12]}): its files or section changed since 'prepare'"
        )
    return data.task_train.subset(index)


def own_partition(view: PartyView) -> tuple[np.ndarray, np.ndarray]:
    """The entity's images and labels in memory (a partition must fit the images budget)."""
    mine = own_set(view)
    return mine.images, mine.labels


@register
class Prepare(Stage):
    name = "prepare"
    roles = frozenset({Role.ENTITY})

    def plan(self, server: Server) -> list[Task]:
        return [Task(self.name, p) for p in server.of_role(Role.ENTITY)]

    def work(self, view: PartyView, task: Task) -> Payload:
        scenario = view.scenario
        data = cache.dataset(view)
        index = partitions(scenario, data.task_train.labels)
        mine = index[[e.name for e in scenario.entities].index(view.name)]
        buffer = io.BytesIO()
        np.savez(buffer, index=mine, digest=np.array(data.digest))
        view.write_private(PARTITION_FILE, buffer.getvalue())
        classes = data.task_train.classes
        counts = class_histogram(data.task_train.labels[mine], len(classes))
        histogram = [
            Record(HISTOGRAM, c, str(name), view.name, "count", float(k))
            for c, (name, k) in enumerate(zip(classes, counts, strict=True))
        ]
        return Payload(metrics={"n_train": len(mine), "n_classes": len(classes)}, records=histogram)

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        n = int(reply.number("n_train"))
        server.records.append(Record("partitions", None, task.party, task.party, "n_train", n))
        server.records += [r for r in reply.records if r.table == HISTOGRAM and r.entity == task.party]
