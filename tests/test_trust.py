"""Issue 12: nothing lost on a crash, a clean stop, one writer per run, every file a resume reads verified.

Real runs of scenarios/smoke.yaml: one with the inline engine (the reference every copy here starts
from), and one through the Flower simulation, started under umask 000, stopped with SIGINT during
`refine` and resumed. The damaged copies are resumed in-process with the inline engine: their failures
come from the same node and stage code that Flower runs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    ROOT,
    RUN_TIMEOUT_S,
    SMOKE,
    Veil,
    _reset_refine,
    refine_rows_at_its_turn,
    session_members,
)

from entities import files
from simulator.cli import main
from simulator.engines import RunFailed, TaskFailed, check_shard, drive
from simulator.roles import parties
from simulator.rundir import RunDir, RunLock
from simulator.stages import RUN_ORDER, Server

STOP_WITHIN_S = 30.0  # SIGINT to exit, Ray's shutdown included


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scenarios/smoke.yaml without its adversaries: every stage this issue is about, and half the time
    (the attack stages have tests of their own)."""
    data = yaml.safe_load(SMOKE.read_text())
    data.pop("adversaries", None)
    path = tmp_path_factory.mktemp("scenario") / "smoke.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def result_files(run_dir: Path) -> dict[str, bytes]:
    """Every result file, without its timing records (metric *_s): what must be byte-identical."""
    out = {}
    for path in sorted((run_dir / "results").glob("*.jsonl")):
        lines = [x for x in path.read_text().splitlines() if x and not json.loads(x)["metric"].endswith("_s")]
        out[path.name] = "\n".join(lines).encode()
    return out


def private_modes(run_dir: Path) -> dict[str, int]:
    """Mode bits of every party's private and keys directory and of every file in them."""
    modes = {}
    for where in [*run_dir.glob("parties/*/private"), *run_dir.glob("parties/*/keys")]:
        modes[str(where.relative_to(run_dir))] = stat.S_IMODE(where.stat().st_mode)
        for path in where.iterdir():
            modes[str(path.relative_to(run_dir))] = stat.S_IMODE(path.stat().st_mode)
    return modes


class UmaskVeil(Veil):
    """`veil run ARGS` under `umask 000`, leader of its own session (see conftest.Veil)."""

    def __init__(self, args: list[str], log: Path):
        self.args = args
        self.log = log
        script = 'umask 000; exec "$0" -m simulator.cli run "$@"'
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                ["sh", "-c", script, sys.executable, *args],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
            )
        self.sid = self.proc.pid


def wait_for(what: str, veil: Veil, ready: Any) -> Any:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (found := ready()):
        if veil.proc.poll() is not None:
            raise AssertionError(
                f"veil run ended (exit {veil.proc.returncode}) before {what}:\n{veil.output}"
            )
        if time.monotonic() > deadline:
            veil.kill()
            raise AssertionError(f"no {what} within {RUN_TIMEOUT_S:g} s:\n{veil.output[-5000:]}")
        time.sleep(0.02)
    return found


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory: pytest.TempPathFactory, smoke: Path) -> Path:
    """One uninterrupted inline run of the smoke scenario."""
    out = tmp_path_factory.mktemp("inline")
    veil = Veil([str(smoke), "--engine", "inline", "--out", str(out / "runs")], out / "run.log")
    assert veil.wait() == 0, veil.output[-5000:]
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


@dataclass
class Interrupted:
    run_dir: Path
    rc: int
    output: str
    stop_s: float  # SIGINT to exit
    leftovers: list[int]  # processes of its session alive 10 s after it exited
    modes_at_stop: dict[str, int]
    manifest_at_stop: dict[str, Any]
    rows_at_stop: dict[str, bytes]
    resumed_rc: int
    resumed_output: str


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, smoke: Path) -> Interrupted:
    """The smoke scenario through Flower under umask 000: SIGINT (to its whole process group, as a
    terminal's Ctrl-C) once refine wrote a row, then `--resume` (inline, umask 000)."""
    out = tmp_path_factory.mktemp("interrupted")
    veil = UmaskVeil([str(smoke), "--out", str(out / "runs")], out / "run.log")
    try:
        rows = wait_for("a refine row at refine's turn", veil, lambda: refine_rows_at_its_turn(out / "runs"))
        os.killpg(veil.sid, signal.SIGINT)
        t0 = time.monotonic()
        rc = veil.proc.wait(STOP_WITHIN_S + 60)
        stop_s = time.monotonic() - t0
        deadline = time.monotonic() + 10
        while (leftovers := session_members(veil.sid)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        veil.kill()
    run_dir = rows[0].parents[1]
    at_stop = {p.name: p.read_bytes() for p in run_dir.glob("results/refine-row*.jsonl")}
    modes = private_modes(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # resumed with the inline engine (a Flower resume after a kill: test_run.py)
    resumed = UmaskVeil(["--resume", str(run_dir), "--engine", "inline"], out / "resume.log")
    resumed_rc = resumed.wait()
    return Interrupted(
        run_dir, rc, veil.output, stop_s, leftovers, modes, manifest, at_stop, resumed_rc, resumed.output
    )


def broken_copy(inline_run: Path, where: Path) -> Path:
    """A copy of the finished inline run with refine forgotten, as a crash during refine leaves it."""
    run_dir = where / "run"
    shutil.copytree(inline_run, run_dir)
    _reset_refine(run_dir)
    return run_dir


def resume_inline(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["run", "--resume", str(run_dir), "--engine", "inline"])
    return rc, capsys.readouterr().err


# --- stopping -------------------------------------------------------------------------------------


def test_sigint_stops_the_flower_run_within_seconds_and_resume_completes_it(
    interrupted: Interrupted, inline_run: Path
) -> None:
    assert interrupted.rc == 130, interrupted.output[-5000:]
    assert interrupted.stop_s < STOP_WITHIN_S, interrupted.stop_s
    assert "stopped by SIGINT" in interrupted.output and "Traceback" not in interrupted.output
    assert not interrupted.leftovers, f"Ray processes outlive the stopped run: {interrupted.leftovers}"
    stages = interrupted.manifest_at_stop["stages"]
    assert all(stages[s]["status"] == "done" for s in ("prepare", "pretrain", "poison"))
    assert stages.get("refine", {}).get("status") != "done"
    run = RunDir(interrupted.run_dir)
    stops = [e for e in run.audit_events() if e["type"] == "stop"]
    assert len(stops) == 1 and stops[0]["signal"] == "SIGINT", stops
    assert set(stops[0]["units_done"]) >= {p.removesuffix(".jsonl") for p in interrupted.rows_at_stop}

    assert interrupted.resumed_rc == 0, interrupted.resumed_output[-5000:]
    assert all(run.stage_done(s) for s in RUN_ORDER)
    assert [e["type"] for e in run.audit_events()].count("resume") == 1
    for name, data in interrupted.rows_at_stop.items():  # rows finished before the stop were kept
        assert (run.results_dir / name).read_bytes() == data, name
    # the same results, byte for byte but for timings, as one uninterrupted (inline) run
    assert result_files(interrupted.run_dir) == result_files(inline_run)


def test_private_directories_0700_files_0600_under_umask_000(interrupted: Interrupted) -> None:
    at_end = private_modes(interrupted.run_dir)
    for when, modes in (
        ("at the stop (prepare, pretrain, poison done)", interrupted.modes_at_stop),
        ("after every stage", at_end),
    ):
        assert modes, when
        wrong = {
            path: oct(mode)
            for path, mode in modes.items()
            if mode != (0o700 if (interrupted.run_dir / path).is_dir() else 0o600)
        }
        assert not wrong, (when, wrong)
    entities = {e.name for e in RunDir(interrupted.run_dir).scenario().entities}
    assert {f"parties/{e}/private/dpm.pt" for e in entities} <= set(interrupted.modes_at_stop)
    assert "parties/alice/keys/keys.vkey" in at_end


def test_sigterm_stops_the_inline_engine_between_tasks(
    inline_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = broken_copy(inline_run, tmp_path)

    def stop_after_first_row() -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not list(run_dir.glob("results/refine-row*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=stop_after_first_row)
    sender.start()
    rc, err = resume_inline(run_dir, capsys)
    sender.join()
    assert rc == 143, err
    assert "stopped by SIGTERM" in err
    rows = list(run_dir.glob("results/refine-row*.jsonl"))
    assert 1 <= len(rows) < len(RunDir(run_dir).scenario().collaboration)
    assert not RunDir(run_dir).stage_done("refine")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    rc, err = resume_inline(run_dir, capsys)
    assert rc == 0, err
    assert result_files(run_dir) == result_files(inline_run)
    types = [e["type"] for e in RunDir(run_dir).audit_events()]
    assert types.count("stop") == 1 and types.count("resume") == 2


# --- one writer -----------------------------------------------------------------------------------


def test_two_concurrent_resumes_one_refused_naming_the_holder(inline_run: Path, tmp_path: Path) -> None:
    run_dir = broken_copy(inline_run, tmp_path)
    first = Veil(["--resume", str(run_dir), "--engine", "inline"], tmp_path / "first.log")
    try:
        wait_for(
            "the lock taken",
            first,
            lambda: (
                (run_dir / ".lock").exists() and f'"pid": {first.proc.pid}' in (run_dir / ".lock").read_text()
            ),
        )
        second = subprocess.run(
            [sys.executable, "-m", "simulator.cli", "run", "--resume", str(run_dir), "--engine", "inline"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert f'"pid": {first.proc.pid}' in second.stderr and "in use" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert first.wait() == 0, first.output[-5000:]
    finally:
        first.kill()
    assert result_files(run_dir) == result_files(inline_run)
    assert [e["type"] for e in RunDir(run_dir).audit_events()].count(
        "resume"
    ) == 1  # the second wrote nothing


def test_the_lock_is_released_when_its_holder_ends(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(RuntimeError, match=f'"pid": {os.getpid()}'):
            RunLock(tmp_path)
    RunLock(tmp_path).close()


# --- every file a resume reads, verified ----------------------------------------------------------


def _relabel(run_dir: Path, *, reseal: bool) -> Path:
    """Change one label of E2's poisoned shard in the pool's manifest; reseal: its labels digest too."""
    path = run_dir / "pool" / "manifest.json"
    doc = json.loads(path.read_text())
    (entry,) = [e for e in doc["shards"] if (e["owner"], e["name"]) == ("E2", "poisoned")]
    entry["labels"][0] = (entry["labels"][0] + 1) % 6
    if reseal:
        entry["labels_sha256"] = hashlib.sha256(
            b"".join(int(x).to_bytes(8, "little", signed=True) for x in entry["labels"])
        ).hexdigest()
    path.write_text(json.dumps(doc))
    return run_dir / "pool" / "E2--poisoned.f16.npy"


def _tear(run_dir: Path) -> Path:
    path = run_dir / "pool" / "E2--poisoned.f16.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _alter_partition(run_dir: Path) -> Path:
    path = run_dir / "parties" / "E4" / "private" / "partition.npz"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _alter_nets(run_dir: Path) -> Path:
    path = run_dir / "shared" / "nets.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_tear, "is corrupt"),
        (lambda d: _relabel(d, reseal=False), "altered labels"),
        (lambda d: _relabel(d, reseal=True), "is not what E2 published"),
        (_alter_partition, "altered since the stage that wrote it finished"),
        (_alter_nets, "altered since stage 'pretrain' saved it"),
    ],
    ids=["torn-shard", "relabelled-shard", "relabelled-shard-resealed", "altered-partition", "altered-nets"],
)
def test_a_damaged_file_is_refused_on_resume_naming_it(
    inline_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Any, said: str
) -> None:
    run_dir = broken_copy(inline_run, tmp_path)
    before = result_files(run_dir)
    path = damage(run_dir)
    rc, err = resume_inline(run_dir, capsys)
    assert rc == 1, err
    assert str(path) in err and said in err, err
    assert "Traceback" not in err
    run = RunDir(run_dir)
    assert not run.stage_done("refine")
    assert result_files(run_dir).keys() >= before.keys()
    if "pool" in str(path) or "nets" in str(path):
        # refused before any stage, against the manifest's digests (issue 19): no row retrained, no task sent
        assert not list(run.results_dir.glob("refine-row*.jsonl"))
        assert not [e for e in run.audit_events() if e["type"] in {"error", "resume"}]
    else:  # a party's private file: its node refused it, and the audit log has the error reply
        (error,) = [e for e in run.audit_events() if e["type"] == "error"]
        assert error["stage"] == "refine" and error["party"] in {"E1", "E4"} and str(path) in error["reason"]


def test_a_scenario_edited_under_a_run_is_refused_on_resume(
    inline_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = broken_copy(inline_run, tmp_path)
    path = run_dir / "scenario.yaml"
    path.write_text(path.read_text().replace("seed: 0", "seed: 1", 1))
    before = {
        p: p.read_bytes() for p in (run_dir / "manifest.json", run_dir / "audit.jsonl", run_dir / ".lock")
    }
    rc, err = resume_inline(run_dir, capsys)
    assert rc == 2 and str(path) in err and "changed since the run started" in err, err
    assert {p: p.read_bytes() for p in before} == before  # refused before the lock: nothing written


def test_the_manifest_records_the_digest_of_every_file_a_resume_reads(inline_run: Path) -> None:
    run = RunDir(inline_run)
    digests = run.digests()
    scenario = run.scenario()
    expect = {"scenario.yaml", "shared/nets.pt"}
    for e in scenario.entities:
        expect |= {f"parties/{e.name}/private/partition.npz", f"parties/{e.name}/private/dpm.pt"}
        expect.add(f"pool/{e.name}/poisoned")
    assert expect <= set(digests)
    for where, sha in digests.items():
        if not where.startswith("pool/"):
            assert hashlib.sha256((inline_run / where).read_bytes()).hexdigest() == sha, where
    # parties report digests, never the files: the replies of the stages that write them carry no arrays
    replies = [e for e in run.audit_events() if e["type"] in {"train.prepare", "train.poison"}]
    replies = [e for e in replies if e["receiver"] == "server"]
    assert len(replies) == 2 * len(scenario.entities)
    for reply in replies:
        assert "config" in reply["records"] and all(r["kind"] != "arrays" for r in reply["records"].values())


# --- the server's checks, the writer, the pre-flight ----------------------------------------------


def test_a_shard_published_under_another_partys_name_is_refused(inline_run: Path) -> None:
    run = RunDir(inline_run)
    scenario = run.scenario()
    server = Server(run, scenario, parties(scenario), lambda _: None)
    from simulator.pool import Pool
    from simulator.protocol import Task

    e2 = next(s for s in Pool(run.pool_dir).shards("E2") if s.name == "poisoned")
    task = Task("poison", "E1")
    with pytest.raises(RunFailed, match="E1 published 'E2/poisoned' under another party's name"):
        check_shard(server, task, "E2/poisoned", e2.sha256)
    with pytest.raises(RunFailed, match="reported publishing 'E1/poisoned'"):
        check_shard(server, task, "E1/poisoned", e2.sha256)  # a digest the pool does not hold for it
    assert check_shard(server, Task("poison", "E2"), "E2/poisoned", e2.sha256) == e2.content_sha256


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "private" / "partition.npz"
    files.write_atomic(target, b"old", private=True)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        files.write_atomic(target, b"new" * 1000, private=True)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["partition.npz"]


def test_a_full_disk_or_unwritable_out_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "runs"
    monkeypatch.setenv("VEIL_MIN_FREE_MB", str(10**12))
    t0 = time.monotonic()
    assert main(["run", str(SMOKE), "--engine", "inline", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "MiB free" in err and str(out) in err, err
    assert not out.exists()  # a refused run leaves not even an empty --out behind
    monkeypatch.delenv("VEIL_MIN_FREE_MB")

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("simulator.preflight.tempfile.mkstemp", refused)
    assert main(["run", str(SMOKE), "--engine", "inline", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out: cannot write here: Permission denied" in err, err
    assert not out.exists()
    assert time.monotonic() - t0 < 10  # no torch, no training


def test_timeouts_and_error_replies_are_audited(inline_run: Path, tmp_path: Path) -> None:
    run_dir = broken_copy(inline_run, tmp_path)
    run = RunDir(run_dir)

    class TimesOut:
        def discover(self, parties: list[Any]) -> dict[str, bytes]:
            return {}

        def submit(self, tasks: list[Any], on_reply: Any, *, early: bool = False) -> None:
            task = tasks[0]
            raise TaskFailed("no reply", stage=task.stage, party=task.party, key=task.key, kind="timeout")

        def wait(self, stage: str | None = None) -> None:
            pass

    with pytest.raises(TaskFailed):
        drive(run, TimesOut(), lambda _: None)
    (event,) = [e for e in run.audit_events() if e["type"] == "timeout"]
    assert event["stage"] == "refine" and event["key"].startswith("row ") and event["reason"] == "no reply"
