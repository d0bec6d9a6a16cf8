"""`refine`: every row of the collaboration table (the paper's Table 5). The row's entity trains F + C
from scratch on raw images, or refines the shared C on a mix of feature sources, and reports top-1/top-5.
Each row's results are written as it finishes, so a resumed run skips finished rows."""

from __future__ import annotations

import numpy as np
import torch

from entities import entity as E
from entities import progress
from entities.registry import SOURCES
from entities.rows import Rows
from entities.training import recording
from simulator import cache
from simulator.protocol import Payload, Record, Task
from simulator.roles import Role
from simulator.schema import Row, Source
from simulator.stages.base import Server, Stage, curve_records, register, write_curves
from simulator.stages.poison import mirrored
from simulator.stages.prepare import own_partition
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


@register
class Refine(Stage):
    name = "refine"
    roles = frozenset({Role.ENTITY})

    def plan(self, server: Server) -> list[Task]:
        nets = server.run.load_nets()
        arrays = {name: cache.to_numpy(nets[name]) for name in ("featurizer", "decider")}
        tasks = []
        for i, row in enumerate(server.scenario.collaboration):
            if server.run.has_results(row_unit(i)):
                server.log(f"  refine row {row.label}: done in an earlier attempt, skipped")
                continue
            payload = Payload(config={"row": i}, arrays={} if row.trains_from_raw else arrays)
            tasks.append(Task(self.name, row.entity, payload, key=f"row {row.label}"))
        return tasks

    def work(self, view: PartyView, task: Task) -> Payload:
        s = view.scenario
        data = cache.dataset(view)
        row: Row = s.collaboration[int(task.payload.number("row"))]
        if row.entity != view.name:
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
            records=curve_records(net, view.name, curves),
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
