"""Flower's own FedAvg (flwr.serverapp.strategy.FedAvg) restricted to a federation's parties, through
Veil's audited grid: the Flower engine's side of simulator.federation.

The strategy is Flower's, unchanged where it computes: it configures each round's train and evaluate
messages (plain "train" / "evaluate", with the global arrays under "arrays" and the round in
"server-round") and averages the replies' arrays weighted by "num-examples"
(strategy_utils.aggregate_arrayrecords). Veil narrows it where a run needs more than Flower promises:
- only the federation's nodes are sent train messages, only the evaluator evaluate messages (Flower's
  FedAvg samples every node the grid knows; here those are also the data owner, users, adversaries);
- every sent message must be answered without error (Flower skips failed replies; a run fails instead);
- the replies are aggregated in party order, not arrival order, so that the float sums, hence the
  weights, do not depend on which node answered first (and equal the inline engine's).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from simulator.engines import RunFailed, TaskFailed, check_stop
from simulator.engines.flower import codec
from simulator.federation import ARRAYS, ROUND, WEIGHT, Federation, FederationResult, Round, nbytes
from simulator.protocol import Payload


def _reason(reply: Message) -> str:
    from simulator.engines.flower.session import reason

    return reason(reply)


def _nbytes(arrays: ArrayRecord) -> int:
    """The arrays' own bytes (as the inline engine counts them; the audit log has the encoded sizes)."""
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays.values())


class EntityFedAvg(FedAvg):
    """FedAvg over `parties` only (node id per party, in aggregation order)."""

    def __init__(self, federation: Federation, nodes: dict[str, int]):
        everyone = len(nodes)
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=everyone,
            min_evaluate_nodes=everyone,
            min_available_nodes=everyone,
            weighted_by_key=WEIGHT,
            arrayrecord_key=ARRAYS,
        )
        self.federation = federation
        self.train_nodes = {nodes[p]: p for p in federation.parties}
        self.evaluator = nodes[federation.evaluator]
        self.rounds: dict[int, Round] = {}
        self._down: dict[int, int] = {}

    def _replies(self, number: int, replies: Iterable[Message], expected: dict[int, str]) -> list[Message]:
        """The replies in party order, after checking that each expected node answered without error."""
        got = {reply.metadata.src_node_id: reply for reply in replies}
        for node_id, party in expected.items():
            if node_id not in got:
                raise TaskFailed(
                    f"stage {self.federation.stage!r}: node of {party} gave no reply in FedAvg round"
                    f" {number}",
                    stage=self.federation.stage,
                    party=party,
                    key=f"round {number}",
                    kind="timeout",
                )
            if got[node_id].has_error():
                raise TaskFailed(
                    f"stage {self.federation.stage!r}: node of {party} (id {node_id}) failed on round"
                    f" {number}: {_reason(got[node_id])}",
                    stage=self.federation.stage,
                    party=party,
                    key=f"round {number}",
                )
        return [got[node_id] for node_id in expected]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        check_stop()
        messages = [
            m
            for m in super().configure_train(server_round, arrays, config, grid)
            if m.metadata.dst_node_id in self.train_nodes
        ]
        self._down[server_round] = _nbytes(arrays) * len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ordered = self._replies(server_round, replies, self.train_nodes)
        arrays, metrics = super().aggregate_train(server_round, ordered)
        if arrays is None:
            raise RunFailed(
                f"stage {self.federation.stage!r}: FedAvg round {server_round} aggregated nothing"
            )
        train = [(self.train_nodes[r.metadata.src_node_id], codec.decode(r.content)) for r in ordered]
        up = sum(nbytes(p.arrays[ARRAYS]) for _, p in train)
        self.rounds[server_round] = Round(server_round, train, Payload(), self._down[server_round], up)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = [
            m
            for m in super().configure_evaluate(server_round, arrays, config, grid)
            if m.metadata.dst_node_id == self.evaluator
        ]
        self.rounds[server_round].bytes_down += _nbytes(arrays) * len(messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        expected = {self.evaluator: self.federation.evaluator}
        (reply,) = self._replies(server_round, replies, expected)
        self.rounds[server_round].evaluate = codec.decode(reply.content)
        return super().aggregate_evaluate(server_round, [reply])


def federate(
    grid: Grid, nodes: dict[str, int], federation: Federation, run_dir: str, timeout: float
) -> FederationResult:
    """Run the federation with Flower's FedAvg on `grid` (the audited one)."""
    strategy = EntityFedAvg(federation, nodes)
    config = ConfigRecord({**federation.config, "run_dir": run_dir, "stage": federation.stage})  # type: ignore[dict-item]
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in federation.initial.items()}),
        num_rounds=federation.rounds,
        timeout=timeout,
        train_config=config,
        evaluate_config=ConfigRecord(dict(config)),  # type: ignore[arg-type]
    )
    missing = [r for r in range(1, federation.rounds + 1) if r not in strategy.rounds]
    if missing:
        raise RunFailed(f"stage {federation.stage!r}: FedAvg did not finish rounds {missing}")
    arrays = {k: a.numpy() for k, a in result.arrays.items()}
    return FederationResult(arrays, [strategy.rounds[r] for r in range(1, federation.rounds + 1)])


__all__ = ["EntityFedAvg", "federate", "ROUND"]
