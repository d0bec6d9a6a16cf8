"""Veil's tasks and replies as Flower records, and back: the only place the two meet.

A task or reply is a RecordDict: one ArrayRecord per state dict, "config" (ConfigRecord), "metrics"
(MetricRecord), and one ConfigRecord per list of typed items (records, publications, sealed, reads),
each item a JSON object (bytes as base64), so the typed lists cross the wire field by field.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, fields
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from simulator.protocol import Payload, Publication, Read, Record, Sealed

TYPED = {"records": Record, "publications": Publication, "sealed": Sealed, "reads": Read}
TASK = "task"  # the ConfigRecord that says which stage, party and unit a task is


def _item_json(item: Any) -> str:
    data = asdict(item)
    for key, value in data.items():
        if isinstance(value, bytes):
            data[key] = {"b64": base64.b64encode(value).decode()}
        elif isinstance(value, tuple):
            data[key] = list(value)
    return json.dumps(data)


def _item(cls: type, text: str) -> Any:
    data = json.loads(text)
    for f in fields(cls):
        value = data[f.name]
        if isinstance(value, dict) and "b64" in value:
            data[f.name] = base64.b64decode(value["b64"])
        elif isinstance(value, list):
            data[f.name] = tuple(value)
    return cls(**data)


def encode(payload: Payload, header: dict[str, Any] | None = None) -> RecordDict:
    records: dict[str, Any] = {}
    for name, state in payload.arrays.items():
        records[name] = ArrayRecord({k: Array(v) for k, v in state.items()})
    if payload.config:
        records["config"] = ConfigRecord(dict(payload.config))  # type: ignore[arg-type]
    if payload.metrics:
        records["metrics"] = MetricRecord(dict(payload.metrics))  # type: ignore[arg-type]
    for name in TYPED:
        items = getattr(payload, name)
        if items:
            records[name] = ConfigRecord({"items": [_item_json(x) for x in items]})
    if header:
        records[TASK] = ConfigRecord(header)
    return RecordDict(records)


def decode(content: RecordDict) -> Payload:
    payload = Payload()
    for name, record in content.array_records.items():
        payload.arrays[name] = {k: arr.numpy() for k, arr in record.items()}
    if "config" in content.config_records:
        payload.config = dict(content.config_records["config"])  # type: ignore[arg-type]
    if "metrics" in content.metric_records:
        payload.metrics = {k: float(v) for k, v in content.metric_records["metrics"].items()}  # type: ignore[arg-type]
    for name, cls in TYPED.items():
        if name in content.config_records:
            items = content.config_records[name]["items"]
            setattr(payload, name, [_item(cls, str(text)) for text in items])  # type: ignore[union-attr]
    return payload


def header(content: RecordDict) -> dict[str, Any]:
    return dict(content.config_records[TASK])


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
        if name in TYPED:
            records[name] = {"kind": name, "count": len(cfg["items"])}  # type: ignore[arg-type]
        else:
            records[name] = {"kind": "config", "keys": sorted(cfg.keys())}
        for value in cfg.values():
            for item in value if isinstance(value, list) else [value]:
                total += len(item) if isinstance(item, bytes | str) else 8
    for name, met in content.metric_records.items():
        records[name] = {"kind": "metrics", "keys": sorted(met.keys())}
        total += 8 * len(met)
    return records, total
