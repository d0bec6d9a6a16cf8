"""The run directory on its own: what a killed run leaves behind must not spoil the resumed one."""

from __future__ import annotations

import os
from pathlib import Path

from simulator.rundir import RunDir
from simulator.schema import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_torn_audit_line_is_dropped_on_resume(tmp_path: Path) -> None:
    run = RunDir.create(load_scenario(ROOT / "scenarios" / "smoke.yaml"), tmp_path)
    events = [{"type": "train.prepare", "sender": "server", "receiver": f"E{i}", "bytes": i} for i in (1, 2)]
    for event in events:
        run.audit(event)
    whole = run.audit_path.read_bytes()
    with open(run.audit_path, "ab") as fh:  # a SIGKILL in the middle of a write
        fh.write(b'{"type": "train.pretr')

    reopened = RunDir.open(run.root)
    assert reopened.audit_path.read_bytes().endswith(b"pretr")  # opening (as every node does) changes nothing
    reopened.drop_torn_audit_line()  # what `veil run --resume` does first
    assert run.audit_path.read_bytes() == whole  # the finished lines are kept byte for byte
    reopened.audit({"type": "train.pretrain", "sender": "server", "receiver": "E1", "bytes": 3})
    assert [e["bytes"] for e in reopened.audit_events()] == [1, 2, 3]


def test_progress_falls_silent_when_its_reader_goes_away() -> None:
    """`veil run ... 2>&1 | head`: rich's console would exit the process, killing the run mid-stage."""
    from simulator.launcher import ProgressConsole

    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stream:
        console = ProgressConsole(file=stream)
        console.print("refine row 7: E1 done")  # the pipe is broken: this must not raise SystemExit
        assert console.quiet
        console.print("the run goes on")
