"""The server's side of the Flower engine: find the parties' nodes, then dispatch tasks to them."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.typing import ConfigRecordValues

from simulator import roles
from simulator.engines import OnReply, RunFailed, TaskFailed, check_stop
from simulator.engines.flower import codec
from simulator.engines.flower.courier import OUTBOX, POOL_ENTRIES, Courier
from simulator.engines.flower.grid import AuditedGrid
from simulator.federation import Federation, FederationResult
from simulator.protocol import Payload, Task
from simulator.schema import Scenario

POLL_SECONDS = 0.05
WHOAMI = "query.whoami"
SCENARIO = "scenario_yaml"  # whoami's header: the resolved scenario, for a deployed node to take in
DEPLOYED = "deployed"  # whoami's reply: the node keeps its own directory (simulator.deploy)
_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def reason(reply: Message) -> str:
    """A failed node's error, as plain text (Ray's remote tracebacks come coloured)."""
    return _ANSI_COLOUR.sub("", reply.error.reason or "(no reason given)")


# Threat models whose adversary reads another party's directory (simulator.views.PartyView._read_as):
# in the simulation the adversary's view reaches it; parties on separate machines share no directory.
READS_ANOTHER_PARTY = ("insider", "curious-user")


def check_apart(scenario: Scenario) -> None:
    """RunFailed, before any stage, when the parties are apart (deployed) and an adversary's knowledge
    needs another party's directory."""
    knowing = [
        f"{a.name} ({a.knowledge} of {a.of})"
        for a in scenario.adversaries
        if a.knowledge in READS_ANOTHER_PARTY
    ]
    if knowing:
        raise RunFailed(
            f"adversaries {', '.join(knowing)} read another party's directory, which parties on separate"
            " machines do not share; run them in the simulation (`veil run`), or as outsiders here"
        )


class FlowerSession:
    def __init__(self, grid: AuditedGrid, run_dir: str, *, timeout: float, window: int | None = None):
        self.grid = grid
        self.run_dir = run_dir
        self.timeout = timeout
        # At most this many tasks out at once (None: one per party): a task waits here, not in Flower's
        # queue behind the others, so its timeout counts from when a node can take it, and each task's
        # payload (F, C, R: 43 MB at smoke's size) is encoded only when it is sent.
        self.window = window
        self.nodes: dict[str, int] = {}  # party -> node id
        self._queues: dict[str, list[_Queued]] = {}  # party -> its tasks not sent yet
        self._anywhere: list[_Queued] = []  # tasks any of several parties may run (Task.runs_on)
        self._in_flight: dict[str, _Queued] = {}  # message id -> the task it carries
        self.courier: Courier | None = None  # deployed nodes: the shared files travel as messages

    def discover(self, parties: list[roles.Party], wait: float = 120.0) -> dict[str, bytes]:
        """Wait for every node, then ask each which party it is (its partition id is the party's index)."""
        deadline = time.monotonic() + wait
        while len(list(self.grid.get_node_ids())) < len(parties):
            if time.monotonic() > deadline:
                raise RunFailed(
                    f"only {len(list(self.grid.get_node_ids()))} of {len(parties)} nodes registered"
                )
            check_stop()
            time.sleep(0.2)
        header: dict[str, ConfigRecordValues] = {
            "run_dir": self.run_dir,
            SCENARIO: self.grid.run_dir.scenario_path.read_text(),
        }
        msgs = [
            Message(
                content=RecordDict({codec.TASK: ConfigRecord(header)}),
                dst_node_id=nid,
                message_type=WHOAMI,
            )
            for nid in self.grid.get_node_ids()
        ]
        keys: dict[str, bytes] = {}
        deployed: dict[str, bool] = {}
        for reply in self.grid.send_and_receive(msgs, timeout=wait):
            src = reply.metadata.src_node_id
            if reply.has_error():
                raise RunFailed(f"node {src} failed to say who it is: {reason(reply)}")
            config = codec.decode(reply.content).config
            name = str(config["party"])
            if name in self.nodes:  # two organisations started `veil supernode --party` with one name
                raise RunFailed(f"nodes {self.nodes[name]} and {src} both say they are {name}")
            self.nodes[name] = src
            self.grid.names[src] = name
            keys[name] = config["public_key"]  # type: ignore[assignment]
            deployed[name] = bool(config.get(DEPLOYED, False))
        missing = [p.name for p in parties if p.name not in self.nodes]
        if missing:
            raise RunFailed(f"no node answered for {', '.join(missing)}")
        if any(deployed.values()):
            if not all(deployed.values()):
                shared = sorted(name for name, yes in deployed.items() if not yes)
                raise RunFailed(
                    f"the nodes of {', '.join(shared)} share the server's disk and the others keep their own"
                    " (veil supernode): a run takes one kind"
                )
            check_apart(self.grid.run_dir.scenario())
            self.courier = Courier(self.grid, self.grid.run_dir, self.nodes, self.timeout)
        return keys

    def federate(self, federation: Federation) -> FederationResult:
        """Flower's FedAvg over the federation's nodes, through the audited grid (engines.flower.fedavg)."""
        from simulator.engines.flower.fedavg import federate

        return federate(self.grid, self.nodes, federation, self.run_dir, self.timeout)

    def _fetching(self, on_reply: OnReply) -> OnReply:
        """on_reply, after fetching what the task left for the server (its reply's outbox: courier)."""
        assert self.courier is not None
        courier = self.courier

        def fetch_then(task: Task, reply: Payload) -> None:
            files, entries = reply.config.pop(OUTBOX, []), reply.config.pop(POOL_ENTRIES, [])
            courier.fetch(
                task.party,
                [str(x) for x in (files if isinstance(files, list) else [files])],
                [str(x) for x in (entries if isinstance(entries, list) else [entries])],
            )
            on_reply(task, reply)

        return fetch_then

    def submit(self, tasks: list[Task], on_reply: OnReply, *, early: bool = False) -> None:
        if self.courier is not None:  # deployed: the parties get the shared files they lack first
            self.courier.send_shared(sorted({p for task in tasks for p in task.runs_on or (task.party,)}))
            on_reply = self._fetching(on_reply)
        for task in tasks:
            item = _Queued(task, on_reply, early)
            if task.runs_on:
                self._anywhere.append(item)
            else:
                self._queues.setdefault(task.party, []).append(item)
        self._send_more()

    def wait(self, stage: str | None = None) -> None:
        def pending() -> bool:
            queued = [q for qs in self._queues.values() for q in qs] + self._anywhere
            return any(
                stage is None or q.task.stage == stage for q in queued + list(self._in_flight.values())
            )

        while pending():
            check_stop()  # a stop request ends the loop here; the replies collected so far are kept
            replies = list(self.grid.pull_messages(list(self._in_flight)))
            for reply in replies:
                item = self._in_flight.pop(reply.metadata.reply_to_message_id)
                task = item.task
                if reply.has_error():
                    raise TaskFailed(
                        f"stage {task.stage!r}: node of {task.party} (id {self.nodes[task.party]}) failed"
                        f" on {task.key}: {reason(reply)}",
                        stage=task.stage,
                        party=task.party,
                        key=task.key,
                    )
                item.on_reply(task, codec.decode(reply.content))
            self._send_more()
            now = time.monotonic()
            for item in self._in_flight.values():
                task = item.task
                if now - item.sent_at > self.timeout:
                    raise TaskFailed(
                        f"stage {task.stage!r}: node of {task.party} (id {self.nodes[task.party]}) gave no"
                        f" reply on {task.key} within {self.timeout:g} s",
                        stage=task.stage,
                        party=task.party,
                        key=task.key,
                        kind="timeout",
                    )
            if not replies:
                time.sleep(POLL_SECONDS)

    def _send_more(self) -> None:
        """Fill the window: a party's tasks one at a time; the current stage's before early ones, which go
        out only while fewer tasks are out than Ray runs at once (half the window), so that none queues
        in Ray ahead of the current stage's; among them the party with the most work left first (it is
        the one that finishes last), its costliest task first. A task that may run anywhere goes to the
        free party with the least work left when it costs more than any party's work left."""
        window = self.window or len(self.nodes)
        early_out = max(1, window // 2) if self.window else window
        while len(self._in_flight) < window:
            busy = {item.task.party for item in self._in_flight.values()}
            for early in (False, True):
                if early and len(self._in_flight) >= early_out:
                    return
                if self._send_one(busy, early):
                    break
            else:
                return

    def _send_one(self, busy: set[str], early: bool) -> bool:
        def left(party: str) -> float:
            return sum(q.task.cost or 1.0 for q in self._queues.get(party, []) if q.early == early)

        ready = [p for p, qs in self._queues.items() if p not in busy and any(q.early == early for q in qs)]
        party = max(ready, key=left, default=None)
        anywhere = [q for q in self._anywhere if q.early == early and set(q.task.runs_on) - busy]
        if anywhere:
            item = max(anywhere, key=lambda q: q.task.cost)
            if party is None or item.task.cost >= left(party):
                free = [p for p in item.task.runs_on if p not in busy]
                chosen = min(free, key=lambda p: sum(q.task.cost or 1.0 for q in self._queues.get(p, [])))
                self._anywhere.remove(item)
                item.task.party = chosen  # the task object stays the one its stage handed over
                self._send(item)
                return True
        if party is None:
            return False
        queue = self._queues[party]
        item = max((q for q in queue if q.early == early), key=lambda q: q.task.cost)
        queue.remove(item)
        self._send(item)
        return True

    def _send(self, item: _Queued) -> None:
        task = item.task
        header = {"run_dir": self.run_dir, "stage": task.stage, "party": task.party, "key": task.key}
        msg = Message(
            content=codec.encode(task.payload, header),
            dst_node_id=self.nodes[task.party],
            message_type=f"train.{task.stage}",
            ttl=self.timeout + 60,
        )
        (msg_id,) = list(self.grid.push_messages([msg], key=task.key))
        item.sent_at = time.monotonic()
        self._in_flight[msg_id] = item


@dataclass
class _Queued:
    """A task handed to the session, with where its reply goes."""

    task: Task
    on_reply: OnReply
    early: bool
    sent_at: float = 0.0
