"""Issue 15: progress inside a stage (each party's unit, net, epoch and step, images per second, ETA) on the
driver's console and in progress.log; and a manifest that says what made the run (version, commit, dirty
tree, the torch threads each node really used).

The run-based tests read the session's Flower smoke run (tests/conftest.py; its output is not a terminal,
so it has the plain lines) and one small inline run in a pseudo-terminal (the live table).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import ROOT, RUN_TIMEOUT_S, SMOKE, Runs, session_members
from rich.console import Console

from entities import progress
from entities.recipes import Recipe
from entities.training import fit
from simulator import rundir
from simulator.progress import LOG_FILE, PROGRESS_DIR, PartyProgress, Watcher, party_task, watching
from simulator.roles import parties

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A line of a net under way: stage, party, [unit], net, epoch e/E, step s/S, a rate and an ETA.
RUNNING = (
    r"progress {stage} {party}(?: \[(?P<unit>[^\]]*)\])?: (?P<net>[\w ()=]+)"
    r" epoch \d+/\d+, step \d+/\d+, \d+ img/s, ETA \d"
)
# A line of a net's end: its steps, epochs, images, wall time and rate.
DONE = (
    r"progress {stage} {party}(?: \[[^\]]*\])?: {net} done,"
    r" \d+ steps \(\d+ epochs?\), \d+ images in [\d.:]+( s)?, \d+ img/s"
)


def recipe(epochs: int) -> Recipe:
    return SimpleNamespace(  # type: ignore[return-value]
        epochs=epochs, lr=0.01, batch_size=4, optimizer="sgd", weight_decay=0.0, min_steps=0
    )


def tiny_fit(net: str, steps_per_epoch: int = 5, epochs: int = 3) -> None:
    model = torch.nn.Linear(2, 1)
    x = torch.randn(4 * steps_per_epoch, 2)

    def loss(index: torch.Tensor) -> torch.Tensor:
        return model(x[index]).pow(2).mean()

    fit(model.parameters(), recipe=recipe(epochs), n=len(x), loss_fn=loss, seed=0, net=net)


# --- the hook in entities -----------------------------------------------------------------------


def test_fit_reports_unit_net_epoch_and_step_to_the_installed_sink() -> None:
    got: list[progress.Snapshot] = []
    tiny_fit("unseen")  # no sink installed: nothing to report, nothing fails
    with progress.reporting(got.append), progress.unit("row 7: E1 + E2 poisoned"):
        tiny_fit("decider", steps_per_epoch=5, epochs=3)
    assert got[0] == progress.Snapshot("row 7: E1 + E2 poisoned")  # the unit shows before its first net
    start, end = got[1], got[-1]
    assert (start.net, start.step, start.steps, start.epochs, start.done) == ("decider", 0, 15, 3, False)
    assert (end.unit, end.net, end.step, end.steps, end.epoch, end.images, end.done) == (
        "row 7: E1 + E2 poisoned",
        "decider",
        15,
        15,
        3,
        60,
        True,
    )
    assert end.eta_s == 0.0 and end.images_per_s and end.images_per_s > 0
    assert progress.Snapshot("u", "n", 1, 2, 5, 20, 50, 10.0).eta_s == pytest.approx(30.0)


def test_snapshots_are_rate_limited_whatever_the_step_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[progress.Snapshot] = []
    clock = iter(range(10**6))
    # a step every 10 ms
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: next(clock) * 0.01))
    with progress.reporting(got.append):
        tracker = progress.tracker("aligner", 1000)
        for _ in range(1000):
            tracker.step(32)
        tracker.finish()
    # 10 s of steps at one snapshot per INTERVAL_S, the first and the last
    assert len(got) <= 2 + 10 / progress.INTERVAL_S + 1, len(got)
    assert got[-1].done and got[-1].step == 1000 and got[-1].images == 32000


# --- the node's file and the driver's lines -------------------------------------------------------


def plain_watcher(root: Path) -> tuple[Watcher, io.StringIO]:
    out = io.StringIO()
    return Watcher(root, Console(file=out, width=200), mode="plain"), out


def test_each_net_is_said_once_its_rate_is_known_at_a_low_rate_after_and_at_its_end(tmp_path: Path) -> None:
    watcher, out = plain_watcher(tmp_path)
    watcher.start()
    with party_task(tmp_path, "E1", "refine", "row E1 own raw") as sink:
        sink(progress.Snapshot("row 1: E1 own raw", "classifier", 2, 20, 5, 60, 120, 2.0))
        watcher.poll()
        sink(progress.Snapshot("row 1: E1 own raw", "classifier", 3, 20, 9, 60, 216, 3.0))
        watcher.poll()  # the same net, within PLAIN_EVERY_S: nothing new to say
        sink(progress.Snapshot("row 1: E1 own raw", "classifier", 20, 20, 60, 60, 1440, 12.0, done=True))
    with party_task(tmp_path, "E1", "refine", "row E1 + E2") as sink:  # at once: no poll in between
        sink(progress.Snapshot("row 3: E1 + E2", "decider", 1, 1, 9, 9, 288, 1.0, done=True))
    state = json.loads((tmp_path / PROGRESS_DIR / "E1.json").read_text())
    assert state["state"] == "idle" and state["party"] == "E1" and state["stage"] == "refine"
    watcher.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith(
        "progress refine E1 [row 1: E1 own raw]: classifier epoch 2/20, step 5/60, 60 img/s, ETA 22 s"
    )
    assert lines[1].endswith(
        "progress refine E1 [row 1: E1 own raw]: classifier done, 60 steps (20 epochs), 1440 images in 12 s,"
        " 120 img/s"
    )
    assert "[row 3: E1 + E2]: decider done, 9 steps (1 epoch), 288 images in 1.0 s, 288 img/s" in lines[2]
    log = (tmp_path / LOG_FILE).read_text().splitlines()
    assert [x.split(" ", 2)[2] for x in log[1:]] == [x.split(" ", 1)[1] for x in lines]


def test_the_display_stops_on_failure_and_a_failed_task_says_so(tmp_path: Path) -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError, match="a node failed"), watching(tmp_path, Console(file=out)) as watcher:
        with party_task(tmp_path, "E2", "poison", "poison"):
            raise RuntimeError("a node failed")
    assert not watcher.thread.is_alive() and watcher.log is None
    assert json.loads((tmp_path / PROGRESS_DIR / "E2.json").read_text())["state"] == "failed"
    # the progress files carry names, counts and rates: nothing else
    sink = PartyProgress(tmp_path, "E3", "poison", "poison")
    sink(progress.Snapshot("", "dpm", 1, 1, 2, 3, 64, 0.5))
    state = json.loads((tmp_path / PROGRESS_DIR / "E3.json").read_text())
    values = [v for v in [*state.values(), *state["current"].values()] if not isinstance(v, dict | list)]
    assert all(isinstance(v, str | int | float) or v is None for v in values), state


# --- a real run through Flower: plain lines (its output is not a terminal) ---------------------------


def test_the_flower_smoke_run_shows_each_partys_progress_in_plain_lines_and_its_log(
    smoke_run: Path, veil_runs: Runs
) -> None:
    output = (veil_runs.root / "smoke_run.log").read_text()
    lines = [line for line in output.splitlines() if " progress " in line]
    assert lines and not [x for x in lines if ANSI.search(x)], lines[:5]
    scenario = rundir.RunDir(smoke_run).scenario()
    leader = scenario.leading_entity
    for text in (output, (smoke_run / LOG_FILE).read_text()):
        for net in ("classifier", "reconstructor"):
            assert re.search(DONE.format(stage="pretrain", party=leader, net=net), text), (net, text[-3000:])
        assert re.search(RUNNING.format(stage="pretrain", party=leader), text), text[-3000:]
        refine = [m for m in re.finditer(RUNNING.format(stage="refine", party=r"E\d"), text)]
        assert refine and all(m["unit"].startswith("row ") for m in refine), text[-3000:]
        for entity in scenario.entities:
            if entity.protection.uses_dpm():
                assert re.search(DONE.format(stage="poison", party=entity.name, net="dpm"), text), entity.name
        assert re.search(DONE.format(stage="codes", party=scenario.data_owner.name, net="autoencoder"), text)
    # every party's last state, and the manifest's facts of what made the run
    names = {p.name for p in parties(scenario)}
    assert {p.stem for p in (smoke_run / PROGRESS_DIR).glob("*.json")} == names
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert set(manifest["nodes"]) == names
    driver = json.loads((smoke_run / ".lock").read_text())["pid"]
    for party, node in manifest["nodes"].items():
        assert node["torch_threads"] == 1 and node["pid"] != driver, party  # a Ray actor's, not the driver's
    assert "driver_torch_threads" in manifest["hardware"] and "torch_threads" not in manifest["hardware"]
    assert_source(manifest["source"])


def assert_source(source: dict[str, object]) -> None:
    assert source["version"] == rundir.project_version() != "unknown"
    if (ROOT / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{40}", str(source["commit"])), source
        assert isinstance(source["dirty"], bool)


# --- what made a run -------------------------------------------------------------------------------


def test_source_tree_names_its_commit_and_changes_or_says_it_is_not_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_source(rundir.source_tree())
    copy = tmp_path / "copy"  # the source without .git
    (copy / "simulator").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", copy)
    (copy / "simulator" / "__init__.py").write_text("")
    tree = rundir.source_tree(copy)
    assert tree["commit"] == rundir.NOT_A_CHECKOUT and tree["dirty"] is None
    assert tree["version"] == rundir.project_version(ROOT)
    if shutil.which("git"):
        git = ["git", "-C", str(copy), "-c", "user.name=t", "-c", "user.email=t@t"]
        git += ["-c", "commit.gpgsign=false"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
        head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
        assert rundir.source_tree(copy) == {**tree, "commit": head.stdout.strip(), "dirty": False}
        (copy / "simulator" / "__init__.py").write_text("# changed\n")
        assert rundir.source_tree(copy)["dirty"] is True
        inner = copy / "elsewhere"  # a tree inside a checkout whose files that checkout does not track
        inner.mkdir()
        assert rundir.source_tree(inner)["commit"] == rundir.NOT_A_CHECKOUT
    monkeypatch.setattr(rundir.shutil, "which", lambda name: None)
    assert rundir.source_tree(copy)["commit"] == "unknown: git is not installed"


# --- a real inline run in a terminal: the live table ------------------------------------------------


def in_terminal(args: list[str], cwd: Path, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
    """`veil run ARGS` with a pseudo-terminal (160 columns) as its stdin, stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "VEIL_PROGRESS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "run", *args],
        cwd=cwd,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env={**env, "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"},
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        for pid in session_members(proc.pid):
            os.kill(pid, 9)
    return rc, out.decode(errors="replace")


def test_a_terminal_gets_a_live_table_of_the_parties_work(tmp_path: Path) -> None:
    data = yaml.safe_load(SMOKE.read_text())
    for section in ("data_owner", "adversaries", "fedavg"):  # the Deep Poisoning stages are enough here
        data.pop(section)
    rows = data["collaboration"]
    data["collaboration"] = [rows[1], rows[3]]  # a raw row (E4's: E1's is its pre-training) and a refined one
    data["name"] = "progress-tty"
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(data, sort_keys=False))
    rc, output = in_terminal([str(scenario), "--engine", "inline", "--out", str(tmp_path / "runs")], ROOT)
    assert rc == 0, output[-5000:]
    assert "\x1b[" in output  # drawn, not printed
    text = ANSI.sub("", output)
    header = re.search(r"party +stage +unit +net +epoch +step +img/s +ETA", text)
    assert header, text[-3000:]
    assert re.search(r"E1 +pretrain +classifier +\d+/\d+ .*\d+/60 +\d+ +[\d.]+ s", text), text[-3000:]
    assert re.search(r"E4 +refine +row 1: E4 own raw +classifier +\d+/\d+ ", text), text[-3000:]
    assert not re.search(r"^\S+ progress ", text, re.M)  # no plain lines on a terminal
    assert "all stages done" in text
    (run_dir,) = (tmp_path / "runs").iterdir()
    log = (run_dir / LOG_FILE).read_text()
    assert re.search(RUNNING.format(stage="pretrain", party="E1"), log), log
    assert re.search(DONE.format(stage="refine", party="E1", net="decider"), log), log
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {n["torch_threads"] for n in manifest["nodes"].values()} == {1}  # the inline engine's nodes too
