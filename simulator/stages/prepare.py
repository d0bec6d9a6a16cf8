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
PARTITIONS = "partitions"  # the table of each entity's partition size (n_train)


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


def partition_set(view: PartyView, kept: bytes, owner: str) -> ImageSet:
    """The images of a partition file `owner` kept (its indices into D_p's training set), their pixels read
    when used; refused if the dataset has changed since."""
    with np.load(io.BytesIO(kept)) as arrays:
        index, digest = arrays["index"], str(arrays["digest"])
    data = cache.dataset(view)
    if digest != data.digest:
        raise ValueError(
            f"{owner}/{PARTITION_FILE}: the partition was drawn from another dataset "
            f"(digest {digest[:12]}, now {data.digest[:12]}): its files or section changed since 'prepare'"
        )
    return data.task_train.subset(index)


def partition_sizes(server: Server) -> dict[str, int]:
    """Each entity's number of training images, as its node reported them (once `prepare` is done)."""
    return {r.entity: int(r.value) for r in server.run.results("prepare") if r.table == PARTITIONS}


def own_set(view: PartyView) -> ImageSet:
    """The entity's partition of D_p."""
    kept = view.read_private(PARTITION_FILE, missing=f"stage 'prepare' has not run for {view.name}")
    return partition_set(view, kept, view.name)


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
        splits = {
            name: getattr(data, name) for name in ("task_train", "task_test", "public_train", "public_test")
        }
        return Payload(
            config={"dataset_digest": data.digest, "dataset_kind": scenario.dataset.kind},
            metrics={
                "n_train": len(mine),
                "n_classes": len(classes),
                "n_public_classes": len(data.public_train.classes),
                "side": data.task_train.side,
                **{f"images_{name}": len(split) for name, split in splits.items()},
                "bytes": data.nbytes,
            },
            records=histogram,
        )

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        n = int(reply.number("n_train"))
        server.records.append(Record(PARTITIONS, None, task.party, task.party, "n_train", n))
        server.records += [r for r in reply.records if r.table == HISTOGRAM and r.entity == task.party]
        if task.party == server.of_role(Role.ENTITY)[0]:  # every entity reads the same dataset
            m = reply.metrics
            server.run.record_facts(
                "dataset",
                {
                    "kind": reply.config["dataset_kind"],
                    "digest": reply.config["dataset_digest"],
                    "classes": {"task": int(m["n_classes"]), "public": int(m["n_public_classes"])},
                    "images": {
                        k.removeprefix("images_"): int(v) for k, v in m.items() if k.startswith("images_")
                    },
                    "side": int(m["side"]),
                    "bytes": int(m["bytes"]),
                },
            )
