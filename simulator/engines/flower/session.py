"""The server's side of the Flower engine: find the parties' nodes, then dispatch tasks to them."""

from __future__ import annotations

import re
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.typing import ConfigRecordValues

from simulator import roles
from simulator.engines import OnReply, RunFailed, TaskFailed, check_stop
from simulator.engines.flower import codec
from simulator.engines.flower.grid import AuditedGrid
from simulator.federation import Federation, FederationResult
from simulator.protocol import Task

POLL_SECONDS = 0.05
WHOAMI = "query.whoami"
_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def reason(reply: Message) -> str:
    """A failed node's error, as plain text (Ray's remote tracebacks come coloured)."""
    return _ANSI_COLOUR.sub("", reply.error.reason or "(no reason given)")


class FlowerSession:
    def __init__(self, grid: AuditedGrid, run_dir: str, *, timeout: float, window: int | None = None):
        self.grid = grid
        self.run_dir = run_dir
        self.timeout = timeout
        # At most this many tasks out at once (None: one per party). Each task carries its payload (F, C, R:
        # 43 MB at smoke's size); sent all at once, the tasks waiting for a free worker piled up in the
        # driver's memory (3.5 GB at 32 entities on 2 workers, bench/scaling.py).
        self.window = window
        self.nodes: dict[str, int] = {}  # party -> node id

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
        header: dict[str, ConfigRecordValues] = {"run_dir": self.run_dir}
        msgs = [
            Message(
                content=RecordDict({codec.TASK: ConfigRecord(header)}),
                dst_node_id=nid,
                message_type=WHOAMI,
            )
            for nid in self.grid.get_node_ids()
        ]
        keys: dict[str, bytes] = {}
        for reply in self.grid.send_and_receive(msgs, timeout=wait):
            src = reply.metadata.src_node_id
            if reply.has_error():
                raise RunFailed(f"node {src} failed to say who it is: {reason(reply)}")
            config = codec.decode(reply.content).config
            name = str(config["party"])
            self.nodes[name] = src
            self.grid.names[src] = name
            keys[name] = config["public_key"]  # type: ignore[assignment]
        missing = [p.name for p in parties if p.name not in self.nodes]
        if missing:
            raise RunFailed(f"no node answered for {', '.join(missing)}")
        return keys

    def federate(self, federation: Federation) -> FederationResult:
        """Flower's FedAvg over the federation's nodes, through the audited grid (engines.flower.fedavg)."""
        from simulator.engines.flower.fedavg import federate

        return federate(self.grid, self.nodes, federation, self.run_dir, self.timeout)

    def dispatch(self, stage: str, tasks: list[Task], on_reply: OnReply) -> None:
        queues: dict[str, list[Task]] = {}
        for task in tasks:
            queues.setdefault(task.party, []).append(task)
        in_flight: dict[str, tuple[Task, float]] = {}  # message id -> (task, sent at)
        window = self.window or len(queues)

        def send_more() -> None:
            """Fill the window, a party's tasks one at a time, the party with the most left first (it is
            the one that finishes last)."""
            while len(in_flight) < window:
                busy = {task.party for task, _ in in_flight.values()}
                ready = [p for p, left in queues.items() if left and p not in busy]
                if not ready:
                    return
                send(max(ready, key=lambda p: len(queues[p])))

        def send(party: str) -> None:
            task = queues[party].pop(0)
            header = {"run_dir": self.run_dir, "stage": task.stage, "party": task.party, "key": task.key}
            msg = Message(
                content=codec.encode(task.payload, header),
                dst_node_id=self.nodes[task.party],
                message_type=f"train.{stage}",
                ttl=self.timeout + 60,
            )
            (msg_id,) = list(self.grid.push_messages([msg], key=task.key))
            in_flight[msg_id] = (task, time.monotonic())

        send_more()
        while in_flight:
            check_stop()  # a stop request ends the loop here; the replies collected so far are kept
            replies = list(self.grid.pull_messages(list(in_flight)))
            for reply in replies:
                task, _ = in_flight.pop(reply.metadata.reply_to_message_id)
                if reply.has_error():
                    raise TaskFailed(
                        f"stage {stage!r}: node of {task.party} (id {self.nodes[task.party]}) failed"
                        f" on {task.key}: {reason(reply)}",
                        stage=stage,
                        party=task.party,
                        key=task.key,
                    )
                on_reply(task, codec.decode(reply.content))
            send_more()
            now = time.monotonic()
            for task, sent_at in in_flight.values():
                if now - sent_at > self.timeout:
                    raise TaskFailed(
                        f"stage {stage!r}: node of {task.party} (id {self.nodes[task.party]}) gave no reply"
                        f" on {task.key} within {self.timeout:g} s",
                        stage=stage,
                        party=task.party,
                        key=task.key,
                        kind="timeout",
                    )
            if not replies:
                time.sleep(POLL_SECONDS)
