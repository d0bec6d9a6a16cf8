"""The one adapter over Flower's message API: records in and out, dispatch, timeouts, audit.

Everything the server sends or receives goes through `Courier`, so every message is
written to the run's audit log (type, sender, receiver, record names, array shapes, bytes).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from simulator.rundir import RunDir

SERVER = "server"
POLL_SECONDS = 0.05


class RunFailed(RuntimeError):
    """A stage could not finish: a node failed, timed out, or never registered."""


_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def _reason(reply: Message) -> str:
    """A failed node's error, as plain text (Ray's remote tracebacks come coloured)."""
    return _ANSI_COLOUR.sub("", reply.error.reason or "(no reason given)")


def pack(
    *,
    arrays: dict[str, dict[str, torch.Tensor]] | None = None,
    config: dict[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> RecordDict:
    """A RecordDict from state dicts, a config mapping and metrics."""
    records: dict[str, Any] = {}
    for name, state in (arrays or {}).items():
        records[name] = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in state.items()})
    if config:
        records["config"] = ConfigRecord(config)
    if metrics:
        records["metrics"] = MetricRecord(dict(metrics))  # type: ignore[arg-type]  # float is a MetricRecord value
    return RecordDict(records)


def number(record: ConfigRecord | MetricRecord, key: str) -> float:
    """A scalar from a Flower record, which may also hold lists, strings and bytes."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"record field {key!r}: expected a number, got {type(value).__name__}")
    return float(value)


def state_dict(content: RecordDict, name: str) -> dict[str, torch.Tensor]:
    record = content.array_records[name]
    return dict(record.to_torch_state_dict())


def describe(content: RecordDict) -> tuple[dict[str, Any], int]:
    """What a message holds, for the audit log: record names, array names and shapes, and bytes."""
    records: dict[str, Any] = {}
    total = 0
    for name, rec in content.array_records.items():
        arrays = {}
        for key, arr in rec.items():
            arrays[key] = {"shape": list(arr.shape), "dtype": arr.dtype}
            total += len(arr.data)
        records[name] = {"kind": "arrays", "arrays": arrays}
    for name, cfg in content.config_records.items():
        records[name] = {"kind": "config", "keys": sorted(cfg.keys())}
        total += len(json.dumps({k: (v if not isinstance(v, bytes) else len(v)) for k, v in cfg.items()}))
        total += sum(len(v) for v in cfg.values() if isinstance(v, bytes))
    for name, met in content.metric_records.items():
        records[name] = {"kind": "metrics", "keys": sorted(met.keys())}
        total += 8 * len(met)
    return records, total


@dataclass
class Task:
    """One message to one party; `key` names the unit of work (a stage or a table row)."""

    party: str
    message_type: str
    content: RecordDict
    key: str = ""
    sent_at: float = field(default=0.0, init=False)


class Courier:
    def __init__(self, grid: Grid, run: RunDir, *, timeout: float, log: Callable[[str], None] = print):
        self.grid = grid
        self.run = run
        self.timeout = timeout
        self.log = log
        self.nodes: dict[str, int] = {}  # party name -> node id

    def _audit(
        self, msg_type: str, sender: str, receiver: str, content: RecordDict | None, **extra: Any
    ) -> None:
        records, size = describe(content) if content is not None else ({}, 0)
        self.run.audit(
            {
                "t": round(time.time(), 3),
                "type": msg_type,
                "sender": sender,
                "receiver": receiver,
                "records": records,
                "bytes": size,
                **extra,
            }
        )

    def discover(self, parties: list[str], partition_of: Callable[[str], int], wait: float = 120.0) -> None:
        """Wait for every node, then learn which node holds which partition (a `query.whoami` round)."""
        deadline = time.monotonic() + wait
        while len(list(self.grid.get_node_ids())) < len(parties):
            if time.monotonic() > deadline:
                raise RunFailed(
                    f"only {len(list(self.grid.get_node_ids()))} of {len(parties)} nodes registered"
                )
            time.sleep(0.2)
        by_partition: dict[int, int] = {}
        node_ids = list(self.grid.get_node_ids())
        msgs = [
            Message(content=RecordDict(), dst_node_id=nid, message_type="query.whoami") for nid in node_ids
        ]
        for m in msgs:
            self._audit("query.whoami", SERVER, f"node:{m.metadata.dst_node_id}", m.content)
        replies = list(self.grid.send_and_receive(msgs, timeout=wait))
        for reply in replies:
            src = reply.metadata.src_node_id
            if reply.has_error():
                raise RunFailed(f"node {src} failed to say who it is: {_reason(reply)}")
            pid = int(number(reply.content.config_records["config"], "partition-id"))
            self._audit("query.whoami", f"node:{src}", SERVER, reply.content)
            by_partition[pid] = src
        for party in parties:
            pid = partition_of(party)
            if pid not in by_partition:
                raise RunFailed(f"no node answered for partition {pid} ({party})")
            self.nodes[party] = by_partition[pid]

    def dispatch(
        self, stage: str, tasks: Iterable[Task], on_reply: Callable[[Task, RecordDict], None]
    ) -> None:
        """Run tasks with at most one in flight per party; call on_reply as each reply arrives.

        A party's tasks run in the given order. Any error reply or timeout fails the run,
        naming the party, its node and the stage.
        """
        queues: dict[str, list[Task]] = {}
        for task in tasks:
            queues.setdefault(task.party, []).append(task)
        in_flight: dict[str, Task] = {}  # message id -> task

        def send_next(party: str) -> None:
            if not queues.get(party):
                return
            task = queues[party].pop(0)
            msg = Message(
                content=task.content,
                dst_node_id=self.nodes[task.party],
                message_type=task.message_type,
                ttl=self.timeout + 60,
            )
            (msg_id,) = list(self.grid.push_messages([msg]))
            task.sent_at = time.monotonic()
            in_flight[msg_id] = task
            self._audit(task.message_type, SERVER, task.party, task.content, key=task.key)

        for party in list(queues):
            send_next(party)
        while in_flight:
            replies = list(self.grid.pull_messages(list(in_flight)))
            for reply in replies:
                task = in_flight.pop(reply.metadata.reply_to_message_id)
                if reply.has_error():
                    raise RunFailed(
                        f"stage {stage!r}: node of {task.party} (id {self.nodes[task.party]}) failed"
                        f"{' on ' + task.key if task.key else ''}: {_reason(reply)}"
                    )
                self._audit(task.message_type, task.party, SERVER, reply.content, key=task.key)
                on_reply(task, reply.content)
                send_next(task.party)
            now = time.monotonic()
            for task in in_flight.values():
                if now - task.sent_at > self.timeout:
                    raise RunFailed(
                        f"stage {stage!r}: node of {task.party} (id {self.nodes[task.party]}) gave no reply"
                        f"{' on ' + task.key if task.key else ''} within {self.timeout:g} s"
                    )
            if not replies:
                time.sleep(POLL_SECONDS)
