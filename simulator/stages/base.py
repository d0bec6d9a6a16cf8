"""What a stage is: its server-side plan, a party's work for one task, and what replies become.

    @register
    class Poison(Stage):
        name = "poison"
        roles = frozenset({Role.ENTITY})
        def plan(self, server): ...          # the tasks, in order (at most one in flight per party)
        def work(self, view, task): ...      # on the party's node, with only the party's view
        def collect(self, server, task, reply): ...   # on the server, as each reply arrives

Stages run in the order they register (simulator/stages/__init__.py imports them in run order); a test
or a plugin registering one more appends it. Nothing outside a stage's module names it.

A stage may hand out part of its work before its turn: the tasks of `early` need only what the stage
named in `early_after` made ("": only the parties' keys), so they go out once that stage is done and run
beside the stages in between, where a node is free. The stage's turn waits for them before `finish`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from entities.registry import Registry
from simulator.federation import Federation, FederationResult
from simulator.protocol import Payload, Record, Task
from simulator.roles import PLURAL, Party, Role, parties
from simulator.rundir import RunDir
from simulator.schema import Scenario
from simulator.views import PartyView

Log = Callable[[str], None]


@dataclass
class Server:
    """The server's side of one run, as stages see it: the scenario, the run directory, what it learnt."""

    run: RunDir
    scenario: Scenario
    parties: list[Party]
    log: Log
    public_keys: dict[str, bytes] = field(default_factory=dict)  # party -> its X25519 public key
    records: list[Record] = field(default_factory=list)  # the current stage's, written when it ends

    def of_role(self, role: Role) -> list[str]:
        return [p.name for p in self.parties if p.role is role]

    def audit(self, event_type: str, **fields: Any) -> None:
        self.run.audit({"t": round(time.time(), 3), "type": event_type, **fields})


class Stage(ABC):
    """One step of a run. Subclasses set `name` and `roles` and implement `plan` and `work`."""

    name: ClassVar[str] = ""
    roles: ClassVar[frozenset[Role]] = frozenset()  # who may be sent this stage's tasks
    early_after: ClassVar[str | None] = None  # the stage after which `early`'s tasks may go out

    def absent(self, scenario: Scenario) -> str:
        """Why this stage has no work in `scenario` ("" when it has): by default, no party of its roles."""
        if any(p.role in self.roles for p in parties(scenario)):
            return ""
        return f"the scenario has no {' or '.join(sorted(PLURAL[r] for r in self.roles))}"

    @abstractmethod
    def plan(self, server: Server) -> list[Task]:
        """The server's side: this stage's tasks, in order (at most one in flight per party)."""

    def early(self, server: Server) -> list[Task]:
        """The server's side, once stage `early_after` is done: tasks that may run before this stage's
        turn (default: none). `plan` then gives the rest."""
        return []

    @abstractmethod
    def work(self, view: PartyView, task: Task) -> Payload:
        """A party's side: one task, with only the party's view of the run."""

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        """Turn a reply into records (default: keep the reply's records)."""
        server.records += reply.records

    def federation(self, server: Server) -> Federation | None:
        """Rounds of federated averaging to run after this stage's tasks (default: none). The engine runs
        them (simulator.federation) and hands every reply to `federated`."""
        return None

    def federated(self, server: Server, result: FederationResult) -> None:
        """Turn a federation's replies into records (called only when `federation` returned one)."""
        server.records += [r for done in result.rounds for _, reply in done.train for r in reply.records]

    def finish(self, server: Server) -> None:
        """After the last reply (default: write the stage's records as one unit named after it)."""
        server.run.write_results(self.name, server.records)


TRAINING = "training"  # the table of training curves: one record per net, party and epoch


def curve_records(label: str, party: str, curves: list[list[float]]) -> list[Record]:
    """Loss histories (entities.training.recording) as records: table "training", row = epoch (1-based),
    metric "loss". A second curve under the same label (a net trained twice) is labelled "LABEL (2)"."""
    out = []
    for i, history in enumerate(curves):
        name = label if i == 0 else f"{label} ({i + 1})"
        out += [Record(TRAINING, epoch, name, party, "loss", float(v)) for epoch, v in enumerate(history, 1)]
    return out


def write_curves(server: Server, unit: str, records: list[Record]) -> list[Record]:
    """Write a reply's training records as their own unit (`training-UNIT`, so that the stage's own result
    files are unchanged); return the other records."""
    curves = [r for r in records if r.table == TRAINING]
    if curves:
        server.run.write_results(f"{TRAINING}-{unit}", curves)
    return [r for r in records if r.table != TRAINING]


STAGES: Registry[Stage] = Registry("stage")
S = TypeVar("S", bound=type[Stage])


def register(cls: S) -> S:
    """Class decorator: add a stage (one instance) to the run order."""
    STAGES.register(cls.name)(cls())
    return cls


def stage_order() -> list[Stage]:
    return [stage for _, stage in STAGES.items()]
