"""Veil's own task and reply types: what an engine carries between the server and a party.

Plain data only (numbers, strings, bytes, numpy arrays), so that any engine can carry them: the Flower
engine encodes them as Flower records (simulator.engines.flower.codec), the inline engine hands them
over as they are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Scalar = int | float | str | bool | bytes
ConfigValue = Scalar | list[int] | list[float] | list[str] | list[bool] | list[bytes]
StateDict = dict[str, np.ndarray]


@dataclass(frozen=True)
class Record:
    """One result: a cell of a table (the unit reports and `compare` read)."""

    table: str
    row: int | None
    label: str
    entity: str
    metric: str
    value: float


RESULT_FIELDS = ("table", "row", "label", "entity", "metric", "value")


@dataclass(frozen=True)
class Publication:
    """A file a party published where every party can read it (the pool, the public directory)."""

    place: str  # "pool" or "public"
    name: str  # the shard ("E1/poisoned") or the file ("codes.npy")
    shape: tuple[int, ...]
    dtype: str
    sha256: str


@dataclass(frozen=True)
class Sealed:
    """Bytes encrypted to one party (simulator.sealing): the server relays them and cannot read them."""

    recipient: str
    what: str  # e.g. "keys"
    ciphertext: bytes
    plaintext_sha256: str  # for the audit log: which plaintext, never its content


@dataclass(frozen=True)
class Read:
    """A party read shared or issued material (the pool, the public codes, a key): audited."""

    what: str
    sha256: str


@dataclass
class Payload:
    """The body of a task or a reply."""

    config: dict[str, ConfigValue] = field(default_factory=dict)
    arrays: dict[str, StateDict] = field(default_factory=dict)  # named state dicts (F, C, R)
    metrics: dict[str, float] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)
    sealed: list[Sealed] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)

    def number(self, key: str) -> float:
        value = self.config[key] if key in self.config else self.metrics[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"payload field {key!r}: expected a number, got {type(value).__name__}")
        return float(value)


@dataclass
class Task:
    """One unit of work for one party; `key` names it (a stage, or a table row) in logs and the audit.

    `cost` (optimiser steps, or any measure shared by a stage's tasks) and `runs_on` only order the work:
    an engine that runs tasks side by side sends the costliest first, and a task that uses no party's own
    data (the centralised reference row) may go to any party in `runs_on` whose node is free instead.
    """

    stage: str
    party: str
    payload: Payload = field(default_factory=Payload)
    key: str = ""
    cost: float = 0.0
    runs_on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.key = self.key or self.stage


def describe(payload: Payload) -> tuple[dict[str, Any], int]:
    """What a payload holds, for the audit log: part names, array names and shapes, and bytes."""
    parts: dict[str, Any] = {}
    total = 0
    for name, state in payload.arrays.items():
        parts[name] = {
            "kind": "arrays",
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()},
        }
        total += sum(v.nbytes for v in state.values())
    if payload.config:
        parts["config"] = {"kind": "config", "keys": sorted(payload.config)}
        for value in payload.config.values():
            for item in value if isinstance(value, list) else [value]:
                total += len(item) if isinstance(item, bytes | str) else 8
    if payload.metrics:
        parts["metrics"] = {"kind": "metrics", "keys": sorted(payload.metrics)}
        total += 8 * len(payload.metrics)
    for name in ("records", "publications", "sealed", "reads"):
        items = getattr(payload, name)
        if items:
            parts[name] = {"kind": name, "count": len(items)}
    total += sum(len(s.ciphertext) for s in payload.sealed)
    return parts, total


def state_sha256(state: StateDict) -> str:
    """A digest of a state dict's names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = np.ascontiguousarray(state[key])
        h.update(f"{key}:{value.shape}:{value.dtype}".encode())
        h.update(value.tobytes())
    return h.hexdigest()
