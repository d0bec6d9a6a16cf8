"""Progress inside a stage: where each party's work is, on the driver's terminal and in `progress.log`.

A party's training loops report through `entities.progress`; its node (simulator.node) installs a
`PartyProgress` sink for each task, which replaces `progress/<party>.json` in the run directory with the
party's current state (stage, unit, net, epoch and step of how many, images per second, ETA: names,
counts and rates, never data). The nodes run in Ray actors on this machine or in this process, so one
file per party works for both engines. On the driver, a `Watcher` thread polls those files and shows them:

- a live table (rich) when the console is a terminal;
- plain lines, without ANSI codes, when it is not (CI, a pipe): one per net as its first rate is known,
  one every PLAIN_EVERY_S per party while it trains, and one as each net ends;
- the same lines in `progress.log`, every LOG_EVERY_S, whatever the console.

VEIL_PROGRESS=live|plain|off chooses the console's display (default: live on a terminal, else plain);
`progress.log` is written in every case.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from entities.progress import Snapshot

PROGRESS_DIR = "progress"
LOG_FILE = "progress.log"
LOG_EVERY_S = 10.0
PLAIN_EVERY_S = 30.0
KEEP_FINISHED = 50  # the last finished nets a party's file lists, so that a poll that comes late misses none


def duration(seconds: float) -> str:
    """'4.2 s' under ten seconds, '42 s' under a minute, else h:mm:ss."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _replace(path: Path, text: str) -> None:
    """Replace a file whole (readers see the old content or the new), without fsync: the file is for
    watching and is rewritten within a second; entities.files.write_atomic would fsync twice a write."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- a party's node ---------------------------------------------------------------------------


# The nets each party finished in this process, numbered, over its tasks of one run (the file's path): a
# task that follows another at once (the inline engine) must not hide the nets the previous one finished
# since the driver's last poll.
_FINISHED: dict[Path, list[dict[str, Any]]] = {}
_DONE: dict[Path, int] = {}
_PROCESS = f"{os.getpid()}:{time.time():.6f}"  # which node process wrote a file (a resume starts new ones)


class PartyProgress:
    """The sink a node installs for one task: the party's state in `progress/<party>.json`, replaced
    at each snapshot (entities.progress rate-limits them to a few a second)."""

    def __init__(self, root: Path, party: str, stage: str, key: str):
        self.path = Path(root) / PROGRESS_DIR / f"{party}.json"
        if not self.path.exists():  # a new attempt (the driver removes the files as it starts)
            _FINISHED.pop(self.path, None)
        self.head: dict[str, Any] = {
            "party": party,
            "stage": stage,
            "key": key,
            "pid": os.getpid(),
            "process": _PROCESS,
            "task_started": time.time(),
        }
        self.current: dict[str, Any] = {}
        self.seq = 0

    def __call__(self, snap: Snapshot) -> None:
        self.current = {
            "unit": snap.unit,
            "net": snap.net,
            "epoch": snap.epoch,
            "epochs": snap.epochs,
            "step": snap.step,
            "steps": snap.steps,
            "images": snap.images,
            "elapsed_s": round(snap.elapsed_s, 3),
            "images_per_s": snap.images_per_s,
            "eta_s": snap.eta_s,
        }
        if snap.done and snap.net:
            n = _DONE[self.path] = _DONE.get(self.path, 0) + 1
            entry = {**self.current, "stage": self.head["stage"], "n": n}
            _FINISHED[self.path] = [*_FINISHED.get(self.path, []), entry][-KEEP_FINISHED:]
            self.current = {"unit": snap.unit, "net": ""}
        self.write("training" if snap.net and not snap.done else "working")

    def write(self, state: str) -> None:
        self.seq += 1
        data = {
            **self.head,
            "state": state,
            "t": time.time(),
            "seq": self.seq,
            "current": self.current,
            "finished": _FINISHED.get(self.path, []),
        }
        try:
            self.path.parent.mkdir(exist_ok=True)
            _replace(self.path, json.dumps(data))
        except OSError:  # progress is for watching: a full disk must not fail the party's task
            pass


@contextmanager
def party_task(root: Path, party: str, stage: str, key: str) -> Iterator[PartyProgress]:
    """A node's progress for one task: "working" at the start, "idle" (or "failed") at the end."""
    sink = PartyProgress(root, party, stage, key)
    sink.write("working")
    try:
        yield sink
    except BaseException:
        sink.write("failed")
        raise
    sink.write("idle")


# --- the driver -------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _where(state: dict[str, Any]) -> str:
    unit = str(state.get("current", {}).get("unit") or "")
    return f"{state.get('stage', '?')} {state.get('party', '?')}" + (f" [{unit}]" if unit else "")


def running_line(state: dict[str, Any]) -> str:
    c = state["current"]
    rate, eta = c.get("images_per_s") or 0, c.get("eta_s")
    return (
        f"progress {_where(state)}: {c['net']} epoch {c['epoch']}/{c['epochs']},"
        f" step {c['step']}/{c['steps']}, {rate:.0f} img/s, ETA {duration(eta) if eta is not None else '?'}"
    )


def done_line(state: dict[str, Any], entry: dict[str, Any]) -> str:
    where = f"{entry.get('stage', '?')} {state.get('party', '?')}" + (
        f" [{entry['unit']}]" if entry.get("unit") else ""
    )
    rate = entry.get("images_per_s") or 0
    return (
        f"progress {where}: {entry['net']} done, {entry['steps']} steps ({_count(entry['epochs'], 'epoch')}),"
        f" {entry['images']} images in {duration(entry['elapsed_s'])}, {rate:.0f} img/s"
    )


def working_line(state: dict[str, Any], now: float) -> str:
    return f"progress {_where(state)}: working, {duration(now - float(state['task_started']))} into the task"


@dataclass
class _Seen:
    """What one output has said of one party."""

    task_started: float = 0.0
    # the `n` of the last finished net said, per node process: under Flower a party's tasks may run in
    # any of Ray's actors, each numbering the nets it finished for that party
    finished: dict[str, int] = field(default_factory=dict)
    net: tuple[str, str] = ("", "")  # (unit, net) of the last running line
    said_at: float = 0.0


@dataclass
class Lines:
    """The rate-limited plain lines of one output (the log file, or a console that is not a terminal)."""

    every_s: float
    seen: dict[str, _Seen] = field(default_factory=dict)

    def lines(self, states: dict[str, dict[str, Any]], now: float) -> list[str]:
        out = []
        for party, state in sorted(states.items()):
            seen = self.seen.setdefault(party, _Seen())
            process = str(state.get("process"))
            if seen.task_started != state.get("task_started"):
                seen.task_started, seen.said_at = float(state.get("task_started", now)), now
                seen.net = ("", "")
            for entry in state.get("finished", []):
                if int(entry.get("n", 0)) > seen.finished.get(process, 0):
                    out.append(done_line(state, entry))
                    seen.finished[process] = int(entry["n"])
                    seen.said_at = now
            current = state.get("current") or {}
            net = (str(current.get("unit") or ""), str(current.get("net") or ""))
            if state.get("state") == "training" and current.get("step"):
                if net != seen.net or now - seen.said_at >= self.every_s:
                    out.append(running_line(state))
                    seen.net, seen.said_at = net, now
            elif state.get("state") == "working" and now - seen.said_at >= self.every_s:
                out.append(working_line(state, now))
                seen.said_at = now
        return out


def render(states: dict[str, dict[str, Any]], now: float) -> RenderableType:
    """The live table: one row per party with work under way."""
    active = {p: s for p, s in sorted(states.items()) if s.get("state") in ("training", "working")}
    if not active:
        return Text("")
    table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
    for column in ("party", "stage", "unit", "net", "epoch", "", "step", "img/s", "ETA"):
        table.add_column(column, no_wrap=True, justify="right" if column in ("img/s", "ETA") else "left")
    for party, state in active.items():
        c = state.get("current") or {}
        # names come from the scenario: Text, so that a "[" in them is not read as markup
        names = [Text(party), Text(str(state.get("stage", ""))), Text(str(c.get("unit") or ""))]
        if state["state"] == "training" and c.get("steps"):
            eta = c.get("eta_s")
            table.add_row(
                *names,
                Text(str(c.get("net", ""))),
                f"{c.get('epoch', 0)}/{c.get('epochs', 0)}",
                ProgressBar(total=float(c["steps"]), completed=float(c.get("step", 0)), width=24),
                f"{c.get('step', 0)}/{c['steps']}",
                f"{c.get('images_per_s') or 0:.0f}",
                duration(eta) if eta is not None else "?",
            )
        else:
            elapsed = duration(now - float(state.get("task_started", now)))
            table.add_row(*names, Text("working", style="dim"), "", "", elapsed, "", "")
    return table


def console_mode(console: Console) -> str:
    """live, plain or off: VEIL_PROGRESS, else live on a terminal and plain otherwise."""
    mode = os.environ.get("VEIL_PROGRESS", "").strip().lower()
    if mode in ("live", "plain", "off"):
        return mode
    isatty = getattr(console.file, "isatty", None)
    return "live" if console.is_terminal and callable(isatty) and isatty() else "plain"


class Watcher:
    """The driver's thread that polls the parties' progress files and shows them (see the module)."""

    def __init__(self, root: Path, console: Console, *, mode: str | None = None, poll_s: float = 0.5):
        self.dir = Path(root) / PROGRESS_DIR
        self.log_path = Path(root) / LOG_FILE
        self.console = console
        self.mode = mode or console_mode(console)
        self.poll_s = poll_s
        self.log_lines = Lines(LOG_EVERY_S)
        self.plain_lines = Lines(PLAIN_EVERY_S)
        self.states: dict[str, dict[str, Any]] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="veil-progress", daemon=True)
        self.live: Live | None = None
        self.log: IO[str] | None = None

    def read(self) -> dict[str, dict[str, Any]]:
        """Each party's latest state (a file being replaced reads whole, old or new)."""
        if not self.dir.is_dir():
            return self.states
        for path in self.dir.glob("*.json"):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(state, dict) and "party" in state:
                self.states[path.stem] = state
        return self.states

    def poll(self) -> None:
        now = time.time()
        states = self.read()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if self.log is not None:
            for line in self.log_lines.lines(states, now):
                self.log.write(f"{stamp} {line}\n")
            self.log.flush()
        if self.mode == "plain":
            for line in self.plain_lines.lines(states, now):
                self.console.print(
                    f"{time.strftime('%H:%M:%S')} {line}", markup=False, highlight=False, soft_wrap=True
                )
        if self.live is not None:
            self.live.update(render(states, now), refresh=True)

    def _loop(self) -> None:
        while not self.stop_event.wait(self.poll_s):
            try:
                self.poll()
            except Exception as err:  # noqa: BLE001 - progress must never end the run; say so once
                self.console.print(f"progress display stopped: {type(err).__name__}: {err}", markup=False)
                return

    def start(self) -> None:
        try:
            if self.dir.is_dir():  # an earlier attempt's files (a resumed run): not this attempt's state
                for path in self.dir.glob("*.json"):
                    path.unlink(missing_ok=True)
            self.dir.mkdir(parents=True, exist_ok=True)
            self.log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
            self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} progress of pid {os.getpid()} starts\n")
            self.log.flush()
        except OSError as err:  # progress is for watching: the run goes on without its log
            self.console.print(f"progress.log not written: {err}", markup=False)
        if self.mode == "live":
            self.live = Live(Text(""), console=self.console, auto_refresh=False, transient=True)
            self.live.start()
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join()
        try:
            self.poll()  # the nets that ended since the last poll
        except Exception:  # noqa: BLE001, S110 - never mask how the run ended
            pass
        finally:
            if self.live is not None:
                self.live.stop()
                self.live = None
            if self.log is not None:
                self.log.close()
                self.log = None


@contextmanager
def watching(root: Path, console: Console) -> Iterator[Watcher]:
    """Show the parties' progress while the block runs (the engine); stop on any exit."""
    watcher = Watcher(root, console)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()
