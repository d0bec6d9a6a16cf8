"""`refine`: every row of the collaboration table (the paper's Table 5). The row's entity trains F + C
from scratch on raw images, or refines the shared C on a mix of feature sources, and reports top-1/top-5.
Each row's results are written as it finishes, so a resumed run skips finished rows.

The rows trained from raw images need only the partitions, so they go out early, beside pretrain and
poison; the centralised reference row goes to whichever entity's node is free. The leader's own-raw row
is its pre-trained classifier, so its results are copied from pretrain's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from entities import entity as E
from entities import progress
from entities.registry import SOURCES
from entities.rows import Rows
from entities.training import recording, schedule_of
from simulator import cache
from simulator.protocol import Payload, Record, StateDict, Task
from simulator.roles import Role
from simulator.schema import Row, Scenario, Source
from simulator.stages.base import TRAINING, Server, Stage, curve_records, register, write_curves
from simulator.stages.poison import mirrored
from simulator.stages.prepare import own_partition, partition_sizes
from simulator.stages.pretrain import own_raw_seed
from simulator.views import PartyView

Data = tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]


@SOURCES.register("raw")
def raw_images(view: PartyView, source: Source, nets: E.SharedNets | None) -> Data:
    """Raw images: the party's own, or all of D_p (`raw:all`, the centralised reference)."""
    if source.of == "all":
        train = cache.dataset(view).task_train
        return train.images, train.labels
    return own_partition(view)


@SOURCES.register("original")
def original_features(view: PartyView, source: Source, nets: E.SharedNets | None) -> Data:
    """F(x): computed here for the party's own images, read from the pool for another entity's."""
    if source.of != view.name:
        return pooled(view, source, nets)
    assert nets is not None
    images, labels = own_partition(view)
    features = E.featurize(nets.featurizer, images, mirrored=mirrored(view.scenario)).half()
    return features, np.concatenate([labels, labels]) if mirrored(view.scenario) else labels


@SOURCES.register("poisoned")
def pooled(view: PartyView, source: Source, nets: E.SharedNets | None) -> Data:
    """A shard of the pool, verified against its digest: its memory map, read a batch at a time."""
    return view.pool.read(source.of, source.kind)


def row_unit(index: int) -> str:
    return f"refine-row{index + 1:02d}"


def pretrained(scenario: Scenario, row: Row) -> bool:
    """Whether the row is the leader's own raw images: the classifier it pre-trained (same images,
    recipe and seed, stage `pretrain`), so its results are pretrain's, not trained again."""
    return row.entity == scenario.leading_entity and [(x.kind, x.of) for x in row.sources()] == [
        ("raw", row.entity)
    ]


def anywhere(row: Row) -> bool:
    """Whether the row uses no party's own data (the centralised reference, `raw:all`): any entity's
    node may train it."""
    return all(x.kind == "raw" and x.of == "all" for x in row.sources())


@register
class Refine(Stage):
    name = "refine"
    roles = frozenset({Role.ENTITY})
    early_after = "prepare"  # the rows trained from raw images need only the partitions

    def early(self, server: Server) -> list[Task]:
        """The rows trained from raw images: they need nothing the leader shares."""
        s = server.scenario
        return self._tasks(server, [r.trains_from_raw and not pretrained(s, r) for r in s.collaboration])

    def plan(self, server: Server) -> list[Task]:
        """The rows of features; the leader's own-raw row written from pretrain's results."""
        s = server.scenario
        for i, row in enumerate(s.collaboration):
            if pretrained(s, row) and not server.run.has_results(row_unit(i)):
                self._write_pretrained(server, i, row)
        nets = server.run.load_nets()
        arrays = {name: cache.to_numpy(nets[name]) for name in ("featurizer", "decider")}
        return self._tasks(server, [not r.trains_from_raw for r in s.collaboration], arrays)

    def _tasks(
        self, server: Server, wanted: list[bool], arrays: dict[str, StateDict] | None = None
    ) -> list[Task]:
        s = server.scenario
        sizes = partition_sizes(server)
        everything = float(server.run.manifest()["dataset"]["images"]["task_train"])
        tasks = []
        for i, row in enumerate(s.collaboration):
            if not wanted[i]:
                continue
            if server.run.has_results(row_unit(i)):
                server.log(f"  refine row {row.label}: done in an earlier attempt, skipped")
                continue
            # the row's optimiser steps, so that the longest rows go out first
            copies = 1 if row.trains_from_raw or not mirrored(s) else 2
            n = sum(everything if x.of == "all" else copies * sizes[x.of] for x in row.sources())
            recipe = s.pretrain if row.trains_from_raw else s.refine
            assert recipe is not None
            epochs, steps = schedule_of(recipe, int(n))
            payload = Payload(config={"row": i}, arrays=arrays or {})
            runs_on = tuple(server.of_role(Role.ENTITY)) if anywhere(row) else ()
            key = f"row {row.label}"
            tasks.append(Task(self.name, row.entity, payload, key, cost=epochs * steps, runs_on=runs_on))
        return tasks

    def _write_pretrained(self, server: Server, i: int, row: Row) -> None:
        """Row i's results and training curve: those of the leader's pre-training."""
        got = {r.metric: r.value for r in server.run.results("pretrain") if r.label == "F+C"}
        sizes = partition_sizes(server)
        curve = [
            replace(r, label=f"F+C row {i + 1}")
            for r in server.run.results(f"{TRAINING}-pretrain-{row.entity}")
            if r.label == "F+C"
        ]
        write_curves(server, row_unit(i), curve)
        values = {"top1": got["top1"], "top5": got["top5"], "n_train": float(sizes[row.entity])}
        server.run.write_results(
            row_unit(i), [Record("table5", i + 1, row.label, row.entity, m, v) for m, v in values.items()]
        )
        server.log(f"  refine row {row.label}: the leader's pre-trained classifier (stage pretrain)")

    def work(self, view: PartyView, task: Task) -> Payload:
        s = view.scenario
        data = cache.dataset(view)
        row: Row = s.collaboration[int(task.payload.number("row"))]
        if row.entity != view.name and not anywhere(row):
            raise ValueError(f"row {row.label!r} belongs to {row.entity}, not to {view.name}")
        sources = row.sources()
        if [(x.kind, x.of) for x in sources] == [("raw", view.name)]:
            seed = own_raw_seed(s, view.name)
        else:
            seed = E.derive_seed(s.seed, "refine", row.label)
        nets = None if row.trains_from_raw else cache.shared_nets(view, task.payload.arrays)
        parts = [SOURCES.get(x.kind)(view, x, nets) for x in sources]
        number = int(task.payload.number("row")) + 1
        with recording() as curves, progress.unit(f"row {number}: {row.label}"):
            if row.trains_from_raw:
                assert s.pretrain is not None
                images = np.concatenate([p[0] for p in parts])
                labels = np.concatenate([p[1] for p in parts])
                num_classes = len(data.task_train.classes)
                featurizer, decider = E.train_classifier(
                    s.backbone, s.pretrain, images, labels, num_classes, seed=seed
                )
                n = len(images)
                net = f"F+C row {number}"
            else:
                assert nets is not None and s.refine is not None
                feats = Rows([p[0] for p in parts])  # the parts as one, without copying the pool's maps
                labels_t = torch.cat([torch.as_tensor(np.asarray(p[1]), dtype=torch.int64) for p in parts])
                featurizer = nets.featurizer
                decider = E.train_decider(s.refine, nets.decider, feats, labels_t, seed=seed)
                n = len(feats)
                net = f"C refined row {number}"
        return Payload(
            metrics={**E.evaluate(featurizer, decider, data.task_test), "n_train": n},
            records=curve_records(net, row.entity, curves),  # the row's, whichever node trained it
        )

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        i = int(task.payload.number("row"))
        row = server.scenario.collaboration[i]
        write_curves(server, row_unit(i), reply.records)  # before the row's unit, which marks it done
        records = [
            Record("table5", i + 1, row.label, row.entity, metric, reply.number(metric))
            for metric in ("top1", "top5", "n_train")
        ]
        server.run.write_results(row_unit(i), records)

    def finish(self, server: Server) -> None:
        """Each row's results are written as it finishes (collect); nothing more to write."""
