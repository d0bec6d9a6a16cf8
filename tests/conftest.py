"""Real `veil run`s of scenarios/smoke.yaml for tests/test_run.py, started once per session.

Every run is a `veil run` subprocess in a session of its own (start_new_session), so that it
and all the Ray processes it starts share one session id: killing a run, or sweeping up what
outlives it (Ray's actors linger a few seconds after the driver), touches that session's
processes only, never another cluster on the machine.

A Ray start-up costs ~15 s of mostly waiting, so the runs that the selected tests need go
in background threads as soon as the first of them is requested, a few at a time
(VEIL_TEST_JOBS, default 3); each fixture waits for its own. Runs that no selected test
needs are never started, so the other test files pay nothing for this.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from reports.runs import read_records
from simulator.schema import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.yaml"
RUN_TIMEOUT_S = 900.0  # a smoke run takes 2-4 min on 2 idle cores; a loaded machine, far more
EARLIER_STAGES = ("prepare", "pretrain", "poison")
# The shard test_corrupted_shard_refused spoils, and the party test_node_failure_is_loud breaks.
CORRUPT_SHARD = "E2--poisoned.f16.npy"
BROKEN_PARTY = "E4"


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        state, _ppid, _pgrp, session = text[text.rindex(")") + 2 :].split()[:4]
        if int(session) == sid and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def kill_session(pid: int) -> None:
    """SIGKILL every process of the session `pid` leads (a SuperLink, a SuperNode) and their children."""
    with suppress(ProcessLookupError):
        sid = os.getsid(pid)
        deadline = time.monotonic() + 30
        while members := session_members(sid):
            for member in members:
                with suppress(ProcessLookupError):
                    os.kill(member, signal.SIGKILL)
            assert time.monotonic() < deadline, f"{members} survive SIGKILL"
            time.sleep(0.1)


def result_records(run_dir: Path) -> list[dict[str, Any]]:
    """A run's result records as plain dicts, through the one reader of run results (reports.runs)."""
    return [
        {**r, "row": None if r["row"] is None or r["row"] != r["row"] else int(r["row"])}
        for r in read_records(run_dir)
        .astype(object)
        .where(read_records(run_dir).notna(), None)
        .to_dict("records")
    ]


class Veil:
    """One `veil run ARGS` subprocess, leader of its own session; output goes to `log`."""

    def __init__(self, args: list[str], log: Path):
        self.args = args
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "simulator.cli", "run", *args],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
            )
        self.sid = self.proc.pid

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"veil run {' '.join(self.args)} ran over {timeout:g} s:\n{self.output[-5000:]}"
            ) from None
        self.reap()
        return rc

    def kill(self) -> None:
        """SIGKILL the whole session: the driver and every Ray process it started."""
        with suppress(ProcessLookupError):
            os.killpg(self.sid, signal.SIGKILL)
        self.proc.wait()
        self.reap()

    def reap(self, grace: float = 30.0) -> None:
        """SIGKILL what is left of the session and wait until nothing is."""
        deadline = time.monotonic() + grace
        while members := session_members(self.sid):
            for pid in members:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise AssertionError(f"processes {members} of session {self.sid} survive SIGKILL")
            time.sleep(0.1)


@dataclass
class Outcome:
    """A finished `veil run`: its run directory, exit status and output."""

    run_dir: Path
    rc: int
    output: str


@dataclass
class KilledRun:
    """A run SIGKILLed during refine, then resumed."""

    run_dir: Path
    rows_total: int
    rows_at_kill: dict[str, tuple[bytes, int]]  # file name -> (content, mtime_ns) right after the kill
    manifest_at_kill: dict[str, Any]
    audit_lines_at_kill: int
    resumed: Outcome


@dataclass
class BrokenResume:
    """A copy of the finished smoke run, broken on purpose, refine reset, then resumed."""

    run_dir: Path
    before: dict[str, bytes]  # results/<earlier stage>.jsonl before the resume
    resumed: Outcome


class Runs:
    """The session's background runs, by name; `result(name)` waits for one."""

    def __init__(self, root: Path, wanted: set[str]):
        self.root = root
        self.slots = threading.BoundedSemaphore(int(os.environ.get("VEIL_TEST_JOBS", "3")))
        self.lock = threading.Lock()
        self.closing = False
        self.procs: list[Veil] = []
        self.jobs: dict[str, Future[Any]] = {}
        self.executor = ThreadPoolExecutor(max_workers=len(JOBS), thread_name_prefix="veil-run")
        for name in JOBS:  # dependencies first: JOBS is in dependency order
            if name in wanted:
                wanted |= set(NEEDS.get(name, ()))
        for name, job in JOBS.items():
            if name in wanted:
                self.jobs[name] = self.executor.submit(job, self)

    def result(self, name: str) -> Any:
        return self.jobs[name].result()

    def launch(self, name: str, args: list[str]) -> Veil:
        with self.lock:
            if self.closing:
                raise RuntimeError("test session is ending")
            veil = Veil(args, self.root / f"{name}.log")
            self.procs.append(veil)
        return veil

    def run(self, name: str, args: list[str], run_dir: Path | None = None) -> Outcome:
        """`veil run ARGS` to the end, holding one of the concurrency slots."""
        with self.slots:
            veil = self.launch(name, args)
            rc = veil.wait()
        if run_dir is None:
            (run_dir,) = (self.root / name).iterdir()
        return Outcome(run_dir, rc, veil.output)

    def close(self) -> None:
        with self.lock:
            self.closing = True
        for veil in self.procs:
            veil.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)


def _finished(outcome: Outcome) -> Path:
    if outcome.rc != 0:
        raise AssertionError(f"veil run exited with {outcome.rc}:\n{outcome.output[-5000:]}")
    return outcome.run_dir


# --- the jobs --------------------------------------------------------------------------


def _smoke_run(runs: Runs) -> Path:
    return _finished(runs.run("smoke_run", [str(SMOKE), "--out", str(runs.root / "smoke_run")]))


def _inline_smoke_run(runs: Runs) -> Path:
    out = runs.root / "inline_smoke_run"
    return _finished(runs.run("inline_smoke_run", [str(SMOKE), "--engine", "inline", "--out", str(out)]))


def _repeat_run(runs: Runs) -> Path:
    return _finished(runs.run("repeat_run", [str(SMOKE), "--out", str(runs.root / "repeat_run")]))


def refine_rows_at_its_turn(out: Path) -> list[Path]:
    """The refine rows written so far under `out`'s one run, once refine's turn has come (every earlier
    stage done: rows trained from raw images may be written earlier, beside pretrain and poison)."""
    rows = list(out.glob("*/results/refine-row*.jsonl"))
    if not rows:
        return []
    with suppress(OSError, ValueError):  # the manifest is replaced atomically; read it once more later
        stages = json.loads((rows[0].parents[1] / "manifest.json").read_text())["stages"]
        if all(stages.get(s, {}).get("status") == "done" for s in EARLIER_STAGES):
            return rows
    return []


def _killed_run(runs: Runs) -> KilledRun:
    out = runs.root / "killed_run"
    rows_total = len(load_scenario(SMOKE).collaboration)
    with runs.slots:
        veil = runs.launch("killed_run", [str(SMOKE), "--out", str(out)])
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (rows := refine_rows_at_its_turn(out)):
            if veil.proc.poll() is not None:
                raise AssertionError(
                    f"veil run ended (exit {veil.proc.returncode}) before refine wrote a row:\n{veil.output}"
                )
            if time.monotonic() > deadline:
                veil.kill()
                raise AssertionError(f"no refine row within {RUN_TIMEOUT_S:g} s:\n{veil.output[-5000:]}")
            time.sleep(0.01)
        veil.kill()
    run_dir = rows[0].parents[1]
    at_kill = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.glob("results/refine-row*")}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    audit_lines = len((run_dir / "audit.jsonl").read_text().splitlines())
    resumed = runs.run("killed_resume", ["--resume", str(run_dir)], run_dir=run_dir)
    return KilledRun(run_dir, rows_total, at_kill, manifest, audit_lines, resumed)


def _reset_refine(run_dir: Path) -> None:
    """Forget refine: its row results and its status in the manifest."""
    for path in run_dir.glob("results/refine-row*.jsonl"):
        path.unlink()
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["stages"]["refine"]["status"] = "pending"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def _broken_resume(runs: Runs, name: str, breaks: Callable[[Path], None]) -> BrokenResume:
    run_dir = runs.root / name
    shutil.copytree(runs.result("smoke_run"), run_dir)
    _reset_refine(run_dir)
    breaks(run_dir)
    before = {s: (run_dir / "results" / f"{s}.jsonl").read_bytes() for s in EARLIER_STAGES}
    resumed = runs.run(name, ["--resume", str(run_dir)], run_dir=run_dir)
    return BrokenResume(run_dir, before, resumed)


def _flip_shard_bytes(run_dir: Path) -> None:
    """Flip the last 16 bytes of a shard: its feature data, not the .npy header."""
    path = run_dir / "pool" / CORRUPT_SHARD
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 16, len(data)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_resume(runs: Runs) -> BrokenResume:
    return _broken_resume(runs, "corrupt_resume", _flip_shard_bytes)


def _node_failure_resume(runs: Runs) -> BrokenResume:
    def lose_partition(run_dir: Path) -> None:
        (run_dir / "parties" / BROKEN_PARTY / "private" / "partition.npz").unlink()

    return _broken_resume(runs, "node_failure_resume", lose_partition)


def _owner_only_run(runs: Runs) -> Path:
    """The smoke scenario's data owner and users alone: no entities, so the DPM stages are skipped."""
    data = yaml.safe_load(SMOKE.read_text())
    for section in (
        "pretrain",
        "reconstructor",
        "entities",
        "dpm",
        "refine",
        "collaboration",
        "backbone",
        "adversaries",
        "fedavg",
        "partition",
    ):
        data.pop(section, None)
    data["name"] = "owner-only"
    path = runs.root / "owner-only.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return _finished(runs.run("owner_only_run", [str(path), "--out", str(runs.root / "owner_only_run")]))


# Every registered attack at smoke size, by three adversaries: an outsider, an insider who also knows pairs,
# and a curious user. Options keep each attack's training to a few steps: this proves the plumbing and
# that every attack yields finite scores, not how strong it is (scenarios/attacks.yaml does that).
EVERY_ATTACK = [
    {
        "name": "eve",
        "knowledge": "outsider",
        "attacks": [
            "shared-reconstructor",
            {"name": "reconstructor-family", "options": {"epochs": 1}},
            {"name": "surrogate-dpm", "options": {"epochs": 1}},
            {"name": "feature-alignment", "options": {"steps": 10, "decoder_epochs": 1}},
            "decode-as-published",
            "random-guess",
            "magnitude",
            "usage-prior",
            {"name": "support-detector", "options": {"steps": 20, "repeats": 1}},
        ],
    },
    {
        "name": "mallory",
        "knowledge": "insider",
        "of": "E3",
        "known_pairs": 10,
        "victims": ["E1"],
        "attacks": [
            {"name": "known-pairs", "options": {"ns": [5, 10], "epochs": 2}},
            {"name": "surrogate-dpm-insider", "options": {"epochs": 1}},
        ],
    },
    {
        "name": "carol",
        "knowledge": "curious-user",
        "of": "alice",
        "attacks": [{"name": "support-detector-curious", "options": {"steps": 20, "repeats": 1}}],
    },
]


def _attacks_run(runs: Runs) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["name"] = "smoke-every-attack"
    data["adversaries"] = EVERY_ATTACK
    data.pop("fedavg")  # the attack stages are what this run is for
    data["collaboration"] = [row for row in data["collaboration"] if row["label"] == "E1 + E2 poisoned"]
    path = runs.root / "every-attack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return _finished(runs.run("attacks_run", [str(path), "--out", str(runs.root / "attacks_run")]))


JOBS: dict[str, Callable[[Runs], Any]] = {
    "smoke_run": _smoke_run,
    "inline_smoke_run": _inline_smoke_run,
    "attacks_run": _attacks_run,
    "owner_only_run": _owner_only_run,
    "repeat_run": _repeat_run,
    "killed_run": _killed_run,
    "corrupt_resume": _corrupt_resume,
    "node_failure_resume": _node_failure_resume,
}
NEEDS = {"corrupt_resume": ("smoke_run",), "node_failure_resume": ("smoke_run",)}


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def veil_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    runs = Runs(tmp_path_factory.mktemp("veil-runs"), wanted & set(JOBS))
    yield runs
    runs.close()


@pytest.fixture(scope="session")
def smoke_run(veil_runs: Runs) -> Path:
    """The run directory of one uninterrupted `veil run scenarios/smoke.yaml`. Read it, never change it."""
    return veil_runs.result("smoke_run")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def inline_smoke_run(veil_runs: Runs) -> Path:
    """The same scenario with `--engine inline`. Read it, never change it."""
    return veil_runs.result("inline_smoke_run")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def attacks_run(veil_runs: Runs) -> Path:
    """A run of the smoke scenario with every attack (EVERY_ATTACK), Flower engine."""
    return veil_runs.result("attacks_run")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def owner_only_run(veil_runs: Runs) -> Path:
    """A run of the smoke scenario's data owner and users only (no entities)."""
    return veil_runs.result("owner_only_run")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def repeat_run(veil_runs: Runs) -> Path:
    """A second, independent run of the same scenario."""
    return veil_runs.result("repeat_run")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def killed_run(veil_runs: Runs) -> KilledRun:
    return veil_runs.result("killed_run")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def corrupt_resume(veil_runs: Runs) -> BrokenResume:
    return veil_runs.result("corrupt_resume")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def node_failure_resume(veil_runs: Runs) -> BrokenResume:
    return veil_runs.result("node_failure_resume")  # type: ignore[no-any-return]
