"""Each task's start and end on its node, in the manifest (`stages.<name>.tasks`), under both engines.

The Flower engine's record is read from conftest's smoke run; the inline engine's from a `prepare`
stage run in this process. bench/overhead.py pairs the two by (stage, party, key).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import SMOKE

from simulator.engines.inline import run_inline
from simulator.rundir import RunDir
from simulator.schema import load_scenario
from simulator.stages import RUN_ORDER


def tasks_sent(events: list[dict[str, Any]], stage: str) -> Counter[str]:
    """The tasks the server sent in a stage, by receiving party (its audit lines)."""
    types = {f"train.{stage}"} | ({"train", "evaluate"} if stage == "fedavg" else set())
    return Counter(e["receiver"] for e in events if e["type"] in types and e.get("sender") == "server")


def check_tasks(entry: dict[str, Any], sent: Counter[str], window: tuple[float, float]) -> None:
    tasks = entry["tasks"]
    assert Counter(t["party"] for t in tasks) == sent, (tasks, sent)
    assert len({(t["party"], t["key"]) for t in tasks}) == len(tasks), tasks  # pairs name one task
    for t in tasks:
        assert window[0] <= t["started"] <= t["finished"] <= window[1], (t, window)
        assert isinstance(t["pid"], int), t
    for party in sent:  # a node runs one task at a time
        spans = sorted((t["started"], t["finished"]) for t in tasks if t["party"] == party)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), (party, spans)


def test_the_flower_run_times_each_task_on_its_node(smoke_run: Path) -> None:
    run = RunDir(smoke_run)
    events = run.audit_events()
    window = (events[0]["t"] - 1, events[-1]["t"] + 1)  # audit times are rounded to ms
    driver = json.loads((smoke_run / ".lock").read_text())["pid"]
    stages = run.manifest()["stages"]
    timed = [name for name in RUN_ORDER if tasks_sent(events, name)]
    assert {"prepare", "pretrain", "poison", "refine", "fedavg"} <= set(timed), timed
    for name in timed:
        check_tasks(stages[name], tasks_sent(events, name), window)
        assert all(t["pid"] != driver for t in stages[name]["tasks"]), name  # Ray actors ran them
    fedavg = {t["key"] for t in stages["fedavg"]["tasks"]}
    assert {"round 1", "round 2", "round 1 evaluate", "round 2 evaluate"} == fedavg


def test_the_inline_engine_times_each_task_in_this_process(tmp_path: Path) -> None:
    run = RunDir.create(load_scenario(SMOKE), tmp_path / "runs")
    for stage in RUN_ORDER:
        if stage != "prepare":
            run.mark_stage(stage, status="done", wall_s=0.0)
    t0 = time.time()
    run_inline(run, lambda _: None)
    entry = run.manifest()["stages"]["prepare"]
    check_tasks(entry, tasks_sent(run.audit_events(), "prepare"), (t0, time.time()))
    assert {t["pid"] for t in entry["tasks"]} == {os.getpid()}
    assert sum(t["finished"] - t["started"] for t in entry["tasks"]) <= entry["wall_s"] + 0.01


def test_the_flower_engine_keeps_at_most_its_window_of_tasks_out(smoke_run: Path) -> None:
    """Tasks go out a window at a time (two per node Ray runs at once), not one per party at once: in
    the audit log, the stage tasks sent and not yet answered never exceed it, and more than one is out."""
    from simulator.engines.flower.launch import task_window

    window = task_window(load_scenario(smoke_run / "scenario.yaml"), None)
    out = most = 0
    for event in RunDir(smoke_run).audit_events():
        if not event["type"].startswith("train."):  # the stages' tasks (FedAvg's go through its strategy)
            continue
        out += 1 if event["sender"] == "server" else -1
        most = max(most, out)
    assert out == 0  # every task answered
    assert 1 < most <= window, (most, window)  # on 2 CPUs, 4 of poison's 7 tasks


def test_early_tasks_run_beside_the_stages_before_their_own(smoke_run: Path) -> None:
    """The data owner's codes need nothing from the entities, and refine's rows trained from raw images
    need only the partitions: they go out early and run beside pretrain and poison. Across all stages a
    party still runs one task at a time."""
    stages = RunDir(smoke_run).manifest()["stages"]
    (pretrain,) = stages["pretrain"]["tasks"]
    (codes,) = stages["codes"]["tasks"]
    assert codes["started"] < pretrain["finished"], (codes, pretrain)
    raw_rows = [t for t in stages["refine"]["tasks"] if t["key"] == "row E4 own raw"]
    assert len(raw_rows) == 1 and raw_rows[0]["started"] < max(
        t["finished"] for t in stages["poison"]["tasks"]
    )
    every = [t for entry in stages.values() for t in entry.get("tasks", [])]
    for party in {t["party"] for t in every}:
        spans = sorted((t["started"], t["finished"]) for t in every if t["party"] == party)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), (party, spans)
    # the leader's own-raw row is its pre-training, not trained again
    assert "row E1 own raw" not in {t["key"] for t in stages["refine"]["tasks"]}


class _Grid:
    """Records what the session sends; replies are simulated by taking tasks out of its window."""

    def __init__(self, nodes: dict[str, int]):
        self.names = {v: k for k, v in nodes.items()}
        self.sent: list[tuple[str, str]] = []

    def push_messages(self, messages: Any, key: str = "") -> list[str]:
        ids = []
        for msg in messages:
            self.sent.append((self.names[msg.metadata.dst_node_id], key))
            ids.append(str(len(self.sent)))
        return ids


def test_the_window_sends_the_current_stage_first_the_costliest_first_and_movable_work_to_a_free_node(
    monkeypatch: Any,
) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from simulator.engines.flower.session import FlowerSession
    from simulator.protocol import Task

    for field in ("_run_id", "_node_id", "_task_id"):  # Flower's messages need a run to belong to
        monkeypatch.setattr(TaskIdentity, field, 1)
    nodes = {"E1": 11, "E2": 12, "E3": 13, "E4": 14}
    grid = _Grid(nodes)
    session = FlowerSession(grid, "run", timeout=60, window=4)  # type: ignore[arg-type]
    session.nodes = nodes

    def reply(key: str) -> None:  # the task `key` answered
        (msg_id,) = [m for m, item in session._in_flight.items() if item.task.key == key]
        session._in_flight.pop(msg_id)
        session._send_more()

    ignore = lambda task, reply: None  # noqa: E731
    session.submit([Task("pretrain", "E1")], ignore)
    every = ("E1", "E2", "E3", "E4")
    rows = [
        Task("refine", "E2", key="row 2", cost=400),
        Task("refine", "E3", key="row 3", cost=400),
        Task("refine", "E1", key="row 5", cost=1140, runs_on=every),  # the centralised row
        Task("refine", "E3", key="row 9", cost=300),
    ]
    session.submit(rows, ignore, early=True)
    # early tasks only while fewer than half the window is out; the costliest, on a free node
    assert grid.sent == [("E1", "pretrain"), ("E4", "row 5")]
    reply("pretrain")
    assert grid.sent[-1] == ("E3", "row 3")  # E3 has the most work left, its costliest first
    session.submit([Task("poison", p, key=f"poison {p}") for p in every], ignore)
    # the current stage fills the window where the parties are free; early tasks wait
    assert grid.sent[3:] == [("E1", "poison E1"), ("E2", "poison E2")]
    reply("poison E1")
    reply("poison E2")
    assert grid.sent[5:] == []  # E3 and E4 are still busy with early rows; no early task jumps in
    reply("row 5")
    assert grid.sent[5:] == [("E4", "poison E4")]
    assert [t.party for t in rows] == ["E2", "E3", "E4", "E3"]  # the movable row ran on E4's node
