"""`fedavg`: federated averaging over the entities' partitions, the baseline the Deep Poisoning paper
argued against without measuring it. Each round every entity trains F + C on its own images for
`fedavg.local_epochs`, the server averages the weights (weighted by images, Flower's FedAvg: the Flower
engine runs `flwr.serverapp.strategy.FedAvg` itself through the audited grid, restricted to the entity
nodes; the inline engine the same rounds, simulator.federation), and the leader evaluates the average
on the shared test set.

Records (table "fedavg"): row 0 the global model ("FedAvg"), rows 1.. each entity's own model after its
last round's local fit, before averaging ("FedAvg local E1"): top1, top5, n_train, and for the global
model the bytes of weights moved (down and up, every round) and the rounds. Table "fedavg_rounds": the
global model after each round, with the bytes moved so far. Table "bytes": what each approach moves, the
Table 5 rows' pooled features (the shards of other entities a row reads); table "bytes_total": the whole
pool, the shared nets the pool approach hands out, and FedAvg's weights (a table's rows are all numbered or
all not).
"""

from __future__ import annotations

import numpy as np

from entities import entity as E
from entities import federated as F
from entities import progress
from simulator import cache
from simulator.federation import ARRAYS, PHASE, ROUND, WEIGHT, Federation, FederationResult, nbytes
from simulator.pool import Pool
from simulator.protocol import Payload, Record, Task
from simulator.roles import Role
from simulator.schema import FedAvgSection, Scenario
from simulator.stages.base import Server, Stage, curve_records, register, write_curves
from simulator.stages.prepare import own_set
from simulator.views import PartyView

TABLE, ROUNDS, BYTES, TOTALS = "fedavg", "fedavg_rounds", "bytes", "bytes_total"
GLOBAL = "FedAvg"
METRICS = ("top1", "top5")


def section(scenario: Scenario) -> FedAvgSection:
    if scenario.fedavg is None:
        raise ValueError("the scenario has no fedavg section")
    return scenario.fedavg


def local_label(party: str) -> str:
    return f"{GLOBAL} local {party}"


def initial_state(server: Server) -> dict[str, np.ndarray]:
    """The first global model: the leader's pre-trained F + C, or F + C seeded from the run's seed."""
    s = server.scenario
    nets = server.run.load_nets()  # the pre-trained F, C (entities need pretrain): shapes, classes
    if section(s).init == "pretrained":
        return {
            f"{i}.{k}": v.detach().cpu().numpy()
            for i, n in enumerate(("featurizer", "decider"))
            for k, v in nets[n].items()
        }
    weights = [v for k, v in nets["decider"].items() if k.endswith("weight") and v.ndim == 2]
    model = F.new_model(s.backbone, int(weights[-1].shape[0]), seed=E.derive_seed(s.seed, "fedavg", "init"))
    return F.to_state(model)


@register
class FedAvg(Stage):
    name = "fedavg"
    roles = frozenset({Role.ENTITY})

    def absent(self, scenario: Scenario) -> str:
        if scenario.fedavg is None:
            return "the scenario has no fedavg section"
        return super().absent(scenario)

    def plan(self, server: Server) -> list[Task]:
        return []  # no tasks of its own: its rounds are a federation (below)

    def federation(self, server: Server) -> Federation:
        s = server.scenario
        parties = [e.name for e in s.entities]
        return Federation(
            stage=self.name,
            parties=parties,
            evaluator=s.leading_entity,
            rounds=section(s).rounds,
            initial=initial_state(server),
            config={"rounds": section(s).rounds},
        )

    def work(self, view: PartyView, task: Task) -> Payload:
        s = view.scenario
        recipe = section(s)
        data = cache.dataset(view)
        number, rounds = int(task.payload.number(ROUND)), int(task.payload.number("rounds"))
        model = F.load_state(
            F.new_model(s.backbone, len(data.task_train.classes), seed=0), task.payload.arrays[ARRAYS]
        )
        if task.payload.config.get(PHASE) == "evaluate":
            with progress.unit(f"round {number}: evaluate"):
                scores = E.evaluate(model[0], model[1], data.task_test)
            return Payload(
                metrics={**{m: float(scores[m]) for m in METRICS}, WEIGHT: float(len(data.task_test))}
            )
        mine = own_set(view)
        seed = E.derive_seed(s.seed, "fedavg", view.name, number)
        with progress.unit(f"round {number}: local fit"):
            model, history = F.train_local(model, recipe, mine.images, mine.labels, seed=seed)
        metrics = {WEIGHT: float(len(mine)), "loss": float(history[-1])}
        if number == rounds:  # the entity's own model after its last local fit, before averaging
            scores = E.evaluate(model[0], model[1], data.task_test)
            metrics.update({m: float(scores[m]) for m in METRICS})
        curves = curve_records(f"F+C FedAvg round {number}", view.name, [history])
        return Payload(arrays={ARRAYS: F.to_state(model)}, metrics=metrics, records=curves)

    def federated(self, server: Server, result: FederationResult) -> None:
        moved, curves = 0, []
        for done in result.rounds:
            moved += done.bytes_down + done.bytes_up
            n = sum(reply.metrics[WEIGHT] for _, reply in done.train)
            loss = sum(reply.metrics["loss"] * reply.metrics[WEIGHT] for _, reply in done.train) / n
            values = {**{m: done.evaluate.metrics[m] for m in METRICS}, "loss": loss, "bytes": moved}
            server.records += [
                Record(ROUNDS, done.number, GLOBAL, "all", k, float(v)) for k, v in values.items()
            ]
            curves += [r for _, reply in done.train for r in reply.records]
        write_curves(server, self.name, curves)
        last = result.rounds[-1]
        n_train = sum(reply.metrics[WEIGHT] for _, reply in last.train)
        final = {**{m: last.evaluate.metrics[m] for m in METRICS}, "n_train": n_train}
        final.update({"bytes": moved, "rounds": len(result.rounds)})
        server.records += [Record(TABLE, 0, GLOBAL, "all", k, float(v)) for k, v in final.items()]
        for i, (party, reply) in enumerate(last.train, 1):
            mine = {**{m: reply.metrics[m] for m in METRICS}, "n_train": reply.metrics[WEIGHT]}
            server.records += [
                Record(TABLE, i, local_label(party), party, k, float(v)) for k, v in mine.items()
            ]
        server.records += bytes_records(server, moved)


def bytes_records(server: Server, fedavg_bytes: int) -> list[Record]:
    """What each approach moves: each Table 5 row's pooled features (the other entities' shards it reads;
    its own features never leave it), the whole pool, the shared nets the pool approach hands out once,
    and FedAvg's weights."""
    shards = {(e.owner, e.name): e.bytes for e in Pool(server.run.pool_dir).shards()}
    out = []
    for i, row in enumerate(server.scenario.collaboration):
        read = [
            shards.get((x.of, x.kind), 0) for x in row.sources() if x.kind != "raw" and x.of != row.entity
        ]
        out.append(Record(BYTES, i + 1, row.label, row.entity, "bytes", float(sum(read))))
    out.append(Record(TOTALS, None, "pool (every shard)", "all", "bytes", float(sum(shards.values()))))
    # what the pool approach also moves, once: the leader's F, C, R to every other entity
    nets = server.run.load_nets()
    size = sum(v.numel() * v.element_size() for state in nets.values() for v in state.values())
    others = len(server.scenario.entities) - 1
    out.append(
        Record(
            TOTALS, None, "shared nets (F, C, R to each other entity)", "all", "bytes", float(size * others)
        )
    )
    out.append(Record(TOTALS, None, GLOBAL, "all", "bytes", float(fedavg_bytes)))
    return out


__all__ = ["FedAvg", "nbytes"]
