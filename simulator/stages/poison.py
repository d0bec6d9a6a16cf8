"""`poison`: each entity trains its protection (the one it declared: by default its private DPM), measures
it (Tables 1 and 2 for a DPM, Table 3 when the scenario compares protections; a grid of test images and
their reconstructions in `figures/`), and publishes its protected ("poisoned") features with their labels
to the pool. The protector stays in the entity's private directory; a shared protection's part comes from
the leader, sealed to the entity (stage `pretrain`)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import torch

from entities import entity as E
from entities import threats
from entities.data import to_float
from entities.grids import IMAGES, grid_png
from entities.protections import channels_of
from entities.training import recording
from simulator import cache
from simulator import protection as P
from simulator.pool import Pool
from simulator.protocol import Payload, Publication, Record, Sealed, Task
from simulator.roles import Role
from simulator.schema import Adversary, Scenario
from simulator.stages.base import Server, Stage, curve_records, register, write_curves
from simulator.stages.prepare import own_partition
from simulator.views import PartyView

DPM_FILE = "dpm.pt"  # the entity's protector (its DPM by default): its weights, a state dict


def victims_of(scenario: Scenario, adversary: Adversary) -> list[str]:
    """The entities an adversary attacks: those it names, or every entity but the one it is."""
    return list(adversary.victims) or [e.name for e in scenario.entities if e.name != adversary.of]


def mirrored(scenario: Scenario) -> bool:
    """Whether the pool holds each image's mirror image too (`dpm.share_mirrored`; yes without one)."""
    return True if scenario.dpm is None else scenario.dpm.share_mirrored


def originals_published(scenario: Scenario) -> set[str]:
    """The entities that also publish their original (unprotected) features: only for the table's
    reference rows, and for the attacks' counterfactual (the same entity without a DPM, to show what the
    protection buys)."""
    wanted = {
        src.of
        for row in scenario.collaboration
        for src in row.sources()
        if src.kind == "original" and src.of != row.entity
    }
    for adversary in scenario.adversaries:
        if any(threats.ATTACKS[a.name].target == "pool" for a in adversary.attack_specs()):
            wanted |= set(victims_of(scenario, adversary))
    return wanted


@register
class Poison(Stage):
    name = "poison"
    roles = frozenset({Role.ENTITY})

    def plan(self, server: Server) -> list[Task]:
        wanted_original = originals_published(server.scenario)
        nets = server.run.load_nets()
        arrays = {name: cache.to_numpy(nets[name]) for name in ("featurizer", "decider", "reconstructor")}
        tasks = []
        for p in server.of_role(Role.ENTITY):
            sealed = []
            if P.protection_of(server.scenario, p).shared:  # the leader's part, sealed to its holders
                sealed = [Sealed(p, P.SHARED, server.run.sealed(p, P.SHARED), "")]
            config = {"publish_original": p in wanted_original}
            payload = Payload(config=config, arrays=arrays, sealed=sealed)  # type: ignore[arg-type]
            tasks.append(Task(self.name, p, payload))
        return tasks

    def work(self, view: PartyView, task: Task) -> Payload:
        s = view.scenario
        nets = cache.shared_nets(view, task.payload.arrays)
        images, labels = own_partition(view)
        entity = s.entity(view.name)
        seed = E.derive_seed(s.seed + entity.seed_offset, "poison", view.name)
        kind = P.protection_of(s, view.name)
        shared = None
        if kind.shared:
            shared = kind.build(
                channels_of(nets, s.dataset.side), P.holdings(s, entity, nets, images, labels)
            )
            (item,) = (x for x in task.payload.sealed if x.what == P.SHARED)
            shared.load_state_dict(P.open_shared(view.identity(), item, s.leading_entity, view.name))
        with recording() as curves:
            dpm = kind.train(P.holdings(s, entity, nets, images, labels, shared), seed=seed)
        buffer = io.BytesIO()
        torch.save(dpm.state_dict(), buffer)
        view.write_private(DPM_FILE, buffer.getvalue())
        test = cache.dataset(view).task_test
        measured = kind.measure(nets, dpm, test)
        # Table 2 to look at: the task's common test images (not this entity's partition, so nothing
        # private), the first ones, so that every entity's grid shows the same images.
        shown = test.images[:IMAGES]
        grid = grid_png(
            to_float(shown),
            E.reconstruct(nets, shown),
            E.reconstruct(nets, shown, dpm),
            labels=(
                "test image x",
                "R(F(x))",
                "R(P(F(x)))" if entity.protection.kind == "dpm" else "R(protected)",
            ),
        )
        view.write_figure(f"table2-{view.name}.png", grid)

        mirror = mirrored(s)
        shared_labels = np.concatenate([labels, labels]) if mirror else labels

        def chunks(protection: torch.nn.Module | None) -> Iterator[np.ndarray]:
            # computed and written a chunk at a time: a shard never has to fit in memory
            for x in E.featurize_chunks(nets.featurizer, images, protection, mirrored=mirror):
                yield x.numpy()

        shards = [view.pool.publish("poisoned", chunks(dpm), shared_labels)]
        if task.payload.config["publish_original"]:  # NOT protected: for the reference rows only
            shards.append(view.pool.publish("original", chunks(None), shared_labels))
        publications = [
            Publication("pool", f"{x.owner}/{x.name}", x.shape, x.dtype, x.sha256) for x in shards
        ]
        return Payload(
            metrics=measured, publications=publications, records=curve_records("DPM", view.name, curves)
        )

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        write_curves(server, f"{self.name}-{task.party}", reply.records)
        declared = server.scenario.entity(task.party).protection
        if declared.kind == "dpm":  # Tables 1 and 2 are the DPM's
            for kind in ("original", "poisoned"):
                for table, metrics in (("table1", ("top1", "top5")), ("table2", ("l1", "ssim"))):
                    for metric in metrics:
                        value = reply.number(f"{metric}_{kind}")
                        server.records.append(Record(table, None, kind, task.party, metric, value))
        if P.compares_protections(server.scenario):  # Table 3: C after, R from, each protection
            for kind, label in (("original", "none"), ("poisoned", declared.label())):
                for metric in ("top1", "top5", "l1", "ssim"):
                    value = reply.number(f"{metric}_{kind}")
                    server.records.append(Record("table3", None, label, task.party, metric, value))

    def finish(self, server: Server) -> None:
        """The stage's records, and the pool's size in the manifest: no stage publishes after this one."""
        super().finish(server)
        server.run.record_pool(Pool(server.run.pool_dir).size())
