"""`pretrain`: the leader trains F + C on its own images and R on the public set; F, C, R go to everyone.
When an entity declares a shared protection (a shared obfuscator), the leader trains it here too, on its
own images, and it goes to those who declared it (stage `poison`)."""

from __future__ import annotations

import time

from entities import entity as E
from entities.training import recording
from simulator import cache
from simulator import protection as P
from simulator.protocol import ConfigValue, Payload, Record, Task
from simulator.roles import Role
from simulator.schema import Scenario
from simulator.stages.base import Server, Stage, curve_records, register, write_curves
from simulator.stages.prepare import own_partition, own_set
from simulator.views import PartyView

SHARED_NETS = ("featurizer", "decider", "reconstructor")


def own_raw_seed(scenario: Scenario, party: str) -> int:
    """The seed of a classifier trained on a party's own raw images alone.

    The leader's pre-training and its "own raw images" table row share it, so that row is the very
    classifier the leader shared (retrained bit for bit), and the rows refined from its C compare with it.
    """
    return E.derive_seed(scenario.seed + scenario.entity(party).seed_offset, "own:raw", party)


@register
class Pretrain(Stage):
    name = "pretrain"
    roles = frozenset({Role.ENTITY})

    def plan(self, server: Server) -> list[Task]:
        holders = P.holders(server.scenario)
        config: dict[str, ConfigValue] = {}
        if holders:  # (Flower's records hold no empty list)
            config = {"holders": holders, "public_keys": [server.public_keys[h] for h in holders]}
        return [Task(self.name, server.scenario.leading_entity, Payload(config=config))]

    def work(self, view: PartyView, task: Task) -> Payload:
        s = view.scenario
        assert s.pretrain is not None and s.reconstructor is not None  # the schema requires them
        data = cache.dataset(view)
        mine = own_set(view)  # decoded batch by batch when it does not fit in memory
        seed = own_raw_seed(s, view.name)
        t0 = time.monotonic()
        with recording() as fc_curves:
            featurizer, decider = E.train_classifier(
                s.backbone, s.pretrain, mine, mine.labels, len(data.task_train.classes), seed=seed
            )
        t1 = time.monotonic()
        with recording() as r_curves:
            recon = E.train_reconstructor(
                s.reconstructor, s.backbone, featurizer, data.public_train, seed=seed + 1
            )
        t2 = time.monotonic()
        nets = E.SharedNets(featurizer, decider, recon)
        acc = E.evaluate(featurizer, decider, data.task_test)
        arrays = {name: cache.to_numpy(state) for name, state in nets.state_dicts().items()}
        sealed = []
        if P.shared_declaration(s) is not None:
            shared = P.train_shared(s, nets, *own_partition(view))
            holders, keys = task.payload.config["holders"], task.payload.config["public_keys"]
            assert isinstance(holders, list) and isinstance(keys, list)
            public_keys = {str(h): k for h, k in zip(holders, keys, strict=True) if isinstance(k, bytes)}
            sealed = P.seal_shared(shared, view.name, public_keys)
        return Payload(
            arrays=arrays,
            sealed=sealed,
            metrics={**acc, "classifier_s": t1 - t0, "reconstructor_s": t2 - t1},
            records=curve_records("F+C", view.name, fc_curves) + curve_records("R", view.name, r_curves),
        )

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        server.run.save_nets({name: cache.to_torch(reply.arrays[name]) for name in SHARED_NETS})
        for item in reply.sealed:  # the shared protection, kept for `poison` as the ciphertext it is
            server.run.keep_sealed(item.recipient, item.what, item.ciphertext)
        write_curves(server, f"{self.name}-{task.party}", reply.records)
        for metric in ("top1", "top5", "classifier_s", "reconstructor_s"):
            server.records.append(Record("pretrain", None, "F+C", task.party, metric, reply.number(metric)))
