"""The inline engine: every party in this process, one task after another; no Flower, no Ray.

The same stage code runs as under Flower, and every task and reply is audited the same way; only the
carrier differs. For debugging (a breakpoint in a party's work), profiling, and tests.
"""

from __future__ import annotations

import time
from typing import Any

from entities.federated import weighted_average
from simulator import node, roles
from simulator.engines import ENGINES, Log, OnReply, RunFailed, TaskFailed, check_stop, drive
from simulator.federation import ARRAYS, PHASE, ROUND, WEIGHT, Federation, FederationResult, Round, nbytes
from simulator.protocol import Payload, Task, describe
from simulator.rundir import RunDir

SERVER = "server"


class InlineSession:
    def __init__(self, run: RunDir, log: Log):
        self.run = run
        self.log = log

    def _audit(self, msg_type: str, sender: str, receiver: str, payload: Any, **extra: Any) -> None:
        parts, size = describe(payload)
        self.run.audit(
            {
                "t": round(time.time(), 3),
                "type": msg_type,
                "sender": sender,
                "receiver": receiver,
                "records": parts,
                "bytes": size,
                **extra,
            }
        )

    def discover(self, parties: list[roles.Party]) -> dict[str, bytes]:
        keys = {}
        for party in parties:
            reply = node.hello(self.run.root, party.name)
            self._audit("query.whoami", party.name, SERVER, reply)
            keys[party.name] = reply.config["public_key"]
        return keys  # type: ignore[return-value]

    def submit(self, tasks: list[Task], on_reply: OnReply, *, early: bool = False) -> None:
        """Runs the tasks at once, one after another, each on the party it names."""
        for task in tasks:
            check_stop()  # between tasks: the one under way finishes first
            stage = task.stage
            self._audit(f"train.{stage}", SERVER, task.party, task.payload, key=task.key)
            try:
                reply = node.handle(self.run.root, task.party, task)
            except Exception as err:
                raise TaskFailed(
                    f"stage {stage!r}: node of {task.party} failed on {task.key}:"
                    f" {type(err).__name__}: {err}",
                    stage=stage,
                    party=task.party,
                    key=task.key,
                ) from err
            self._audit(f"train.{stage}", task.party, SERVER, reply, key=task.key)
            on_reply(task, reply)

    def wait(self, stage: str | None = None) -> None:
        """Nothing to wait for: `submit` ran every task."""

    def _run(self, federation: Federation, party: str, phase: str, number: int, arrays: Any) -> Payload:
        """One federated task, audited under Flower's message types ("train", "evaluate")."""
        config = {**federation.config, ROUND: number, PHASE: phase}
        task = Task(
            federation.stage, party, Payload(config=config, arrays={ARRAYS: arrays}), f"round {number}"
        )
        self._audit(phase, SERVER, party, task.payload)
        try:
            reply = node.handle(self.run.root, party, task)
        except Exception as err:
            raise TaskFailed(
                f"stage {federation.stage!r}: node of {party} failed on {task.key}:"
                f" {type(err).__name__}: {err}",
                stage=federation.stage,
                party=party,
                key=task.key,
            ) from err
        self._audit(phase, party, SERVER, reply)
        if phase == "train" and (ARRAYS not in reply.arrays or WEIGHT not in reply.metrics):
            raise RunFailed(f"stage {federation.stage!r}: {party}'s reply lacks {ARRAYS!r} or {WEIGHT!r}")
        return reply

    def federate(self, federation: Federation) -> FederationResult:
        """FedAvg as Flower's strategy runs it: each round every party trains from the global arrays, the
        server averages the replies weighted by WEIGHT in party order, the evaluator evaluates."""
        arrays, result = federation.initial, FederationResult(federation.initial)
        for number in range(1, federation.rounds + 1):
            check_stop()
            train = [(p, self._run(federation, p, "train", number, arrays)) for p in federation.parties]
            down = nbytes(arrays) * len(train)
            arrays = weighted_average(
                [r.arrays[ARRAYS] for _, r in train], [r.metrics[WEIGHT] for _, r in train]
            )
            down += nbytes(arrays)
            evaluate = self._run(federation, federation.evaluator, "evaluate", number, arrays)
            up = sum(nbytes(r.arrays[ARRAYS]) for _, r in train)
            result.rounds.append(Round(number, train, evaluate, down, up))
        result.arrays = arrays
        return result


@ENGINES.register("inline")
def run_inline(run: RunDir, log: Log, ray_address: str | None = None) -> None:
    if ray_address:
        raise ValueError("--ray-address needs the flower engine; the inline engine runs in this process")
    drive(run, InlineSession(run, log), log)
