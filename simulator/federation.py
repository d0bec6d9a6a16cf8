"""What a federated stage asks of an engine, and what it gets back: rounds of FedAvg over some parties.

A stage that federates (simulator.stages.fedavg) describes the job as a `Federation`; the engine runs it
(the Flower engine with Flower's own `FedAvg` strategy through the audited grid, restricted to the
federation's parties; the inline engine with the same rounds in this process, averaging with
entities.federated.weighted_average, which is Flower's aggregation) and returns every reply, so the
records do not depend on the engine.

Each round: every party in `parties` gets a task (config `phase` "train", `server-round`, the global
arrays under ARRAYS) and replies with its new arrays and metrics holding WEIGHT; the server averages
them, weighted, in party order; then `evaluator` gets the averaged arrays (`phase` "evaluate").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.protocol import ConfigValue, Payload, StateDict

ARRAYS = "arrays"  # the ArrayRecord / payload part that holds the model (Flower FedAvg's default key)
WEIGHT = "num-examples"  # the metric FedAvg weights each party's arrays by (Flower's default key)
ROUND = "server-round"  # the config key FedAvg puts the round in
PHASE = "phase"  # "train" or "evaluate": Flower's message type, as the task's config says it


@dataclass
class Federation:
    stage: str
    parties: list[str]  # who trains, in the order their arrays are summed
    evaluator: str  # who evaluates the averaged model after each round (one of `parties`)
    rounds: int
    initial: StateDict
    config: dict[str, ConfigValue] = field(default_factory=dict)  # sent with every task


@dataclass
class Round:
    number: int
    train: list[tuple[str, Payload]]  # (party, reply), in party order
    evaluate: Payload
    bytes_down: int  # arrays sent to parties this round (the global model, to each trainer and the evaluator)
    bytes_up: int  # arrays the parties sent back


@dataclass
class FederationResult:
    arrays: StateDict  # the last round's average
    rounds: list[Round] = field(default_factory=list)


def nbytes(state: StateDict) -> int:
    return sum(int(v.nbytes) for v in state.values())
