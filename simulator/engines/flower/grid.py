"""A Flower Grid that writes every message it carries to the run's audit log.

Veil's courier and Flower's own strategies (FedAvg) both send through it, so nothing reaches or leaves a
node unaudited: type, sender, receiver, record names, array shapes, bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from simulator.engines.flower.codec import describe
from simulator.rundir import RunDir

SERVER = "server"


class AuditedGrid(Grid):
    def __init__(self, grid: Grid, run: RunDir):
        self.inner = grid
        self.run_dir = run
        self.names: dict[int, str] = {}  # node id -> party, once known
        self.keys: dict[str, str] = {}  # message id -> what it was sent for (a unit of work)

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node:{node_id}")

    def audit(self, msg_type: str, sender: str, receiver: str, content: RecordDict, **extra: Any) -> None:
        records, size = describe(content)
        event = {"t": round(time.time(), 3), "type": msg_type, "sender": sender, "receiver": receiver}
        self.run_dir.audit({**event, "records": records, "bytes": size, **extra})

    def _sent(self, msg: Message, msg_id: str, key: str = "") -> None:
        extra = {"key": key} if key else {}
        self.audit(
            msg.metadata.message_type, SERVER, self.name(msg.metadata.dst_node_id), msg.content, **extra
        )

    def _received(self, reply: Message) -> None:
        extra = (
            {"key": self.keys[reply.metadata.reply_to_message_id]}
            if reply.metadata.reply_to_message_id in self.keys
            else {}
        )
        if reply.has_error():
            extra["error"] = reply.error.reason or "(no reason given)"
            content = RecordDict()
        else:
            content = reply.content
        self.audit(
            reply.metadata.message_type, self.name(reply.metadata.src_node_id), SERVER, content, **extra
        )

    # --- the Grid interface ---
    @property
    def run(self) -> Any:  # type: ignore[override]
        return self.inner.run

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Any:
        return self.inner.get_nodes()  # type: ignore[attr-defined]

    def push_messages(self, messages: Iterable[Message], key: str = "") -> Iterable[str]:
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        for msg, msg_id in zip(messages, ids, strict=True):
            if key:
                self.keys[msg_id] = key
            self._sent(msg, msg_id, key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        for reply in replies:
            self._received(reply)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        if timeout is None:
            raise ValueError(
                "send_and_receive needs a timeout: a node that never answers would block the run"
            )
        messages = list(messages)
        for msg in messages:
            self._sent(msg, "")
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            self._received(reply)
        return replies
