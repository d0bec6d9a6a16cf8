"""Start-up: the seconds from launching `veil run` to its first task, and what they are spent on.

    python bench/startup.py                                    # scenarios/smoke.yaml, both engines, 3 runs
    python bench/startup.py scenarios/collab-10-1.yaml --engines flower --repeat 5

Each run is `python bench/startup.py --child run FILE ...`, in a session of its own: this script again,
which times the functions a start-up goes through (wrapped as their modules load, so every import
happens where `veil run` does it) and then runs the CLI as `veil run` would. Once the first stage is
done its session is killed: only the start-up is timed. The engines alternate so that load hits both
alike.

Prints, per engine, the timeline (the median over runs of each event's seconds since the launch, and
the fastest and slowest run's), each row with the seconds since the row before and what ran in them:
the interpreter's start; importing the CLI; validation (simulator.preflight.check_new_run); importing
the launcher (torch, the stages); the run directory (RunDir.create, with the manifest's versions and
hardware); importing flwr and Ray; Ray's start (ray.init); Flower's actor pool; the ServerApp's wait for
the nodes to register; the `query.whoami` round, answered once Ray's actors are up (each imports torch
and the simulator, loads the scenario and its party's key); the first task's dispatch and start on its
node (the manifest's `tasks`). Events of two threads (the ServerApp's, Flower's runtime) interleave.
Then the machine's load.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVENTS = "VEIL_STARTUP_EVENTS"

# --- the child: `veil run` with its start-up timed ------------------------------------------------


def _event(name: str) -> None:
    with open(os.environ[EVENTS], "a") as fh:  # flushed at once: the run is killed after its first stage
        fh.write(json.dumps({"event": name, "t": time.time()}) + "\n")


def _timed(owner: Any, attr: str, label: str) -> None:
    """Record the first call of owner.attr: when it began ("label") and returned ("label done")."""
    raw = owner.__dict__.get(attr) if isinstance(owner, type) else None
    func = raw.__func__ if isinstance(raw, classmethod) else getattr(owner, attr)
    seen: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if seen:
            return func(*args, **kwargs)
        seen.append(True)
        _event(label)
        try:
            return func(*args, **kwargs)
        finally:
            _event(f"{label} done")

    setattr(owner, attr, classmethod(wrapper) if isinstance(raw, classmethod) else wrapper)


class _OnImport(importlib.abc.MetaPathFinder):
    """Time each named module's import and patch it as soon as it has run, before anyone uses it."""

    def __init__(self, hooks: dict[str, Callable[[ModuleType], None]], timed: set[str]):
        self.hooks = hooks
        self.timed = timed  # the modules whose import is an event

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.hooks:
            return None
        hook = self.hooks.pop(name)
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        exec_module = loader.exec_module
        timed = name in self.timed
        if timed:
            _event(f"import {name}")

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            if timed:
                _event(f"import {name} done")
            hook(module)

        loader.exec_module = exec_and_patch
        return spec


def child(argv: list[str]) -> int:
    _event("python up")
    here = Path(__file__).resolve().parent  # bench/ is not a package: its names must not shadow any
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]

    def patch(*pairs: tuple[str, str]) -> Callable[[ModuleType], None]:
        def hook(module: ModuleType) -> None:
            for attr, label in pairs:
                owner: Any = module
                *path, last = attr.split(".")
                for part in path:
                    owner = getattr(owner, part)
                _timed(owner, last, label)

        return hook

    sys.meta_path.insert(
        0,
        _OnImport(
            {
                "simulator.cli": patch(("check_new_run", "validation")),
                "simulator.launcher": patch(("start_run", "start_run")),
                "simulator.rundir": patch(("RunDir.create", "run directory")),
                "simulator.engines.flower.launch": lambda m: None,
                "flwr.server.superlink.fleet.vce.backend.raybackend": patch(
                    ("RayBackend.init_ray", "Ray start (ray.init)"),
                    ("RayBackend.build", "Flower's actor pool"),
                ),
                "flwr.simulation.run_simulation": patch(("run_serverapp_th", "ServerApp thread")),
                "simulator.engines.flower.session": patch(("FlowerSession.discover", "discover nodes")),
                "simulator.engines.inline": patch(("InlineSession.discover", "discover nodes")),
            },
            {"simulator.cli", "simulator.launcher", "simulator.engines.flower.launch"},
        ),
    )
    from simulator.cli import main

    return main(argv)


# --- the bench ------------------------------------------------------------------------------------

# What ran between the previous event and this one, by this one's name.
SPENT = {
    "python up": "interpreter start-up (site, the venv's paths)",
    "import simulator.cli done": "import the CLI (no torch)",
    "validation done": "validate the scenario (check_new_run)",
    "import simulator.launcher done": "import the launcher: torch, the stages, the engines",
    "run directory done": "make the run directory (manifest: versions, hardware)",
    "import simulator.engines.flower.launch done": "import flwr and Ray",
    "Ray start (ray.init) done": "start Ray (ray.init)",
    "Flower's actor pool done": "Flower's Ray actor pool (the actors start in the background)",
    "ServerApp thread done": "start the ServerApp's thread",
    "first whoami sent": "the nodes register (the ServerApp waits for all)",
    "last whoami reply": "query.whoami answered: the nodes' processes start, load the scenario, a key",
    "first task sent": "the server plans the first stage",
    "first task started": "the task reaches its node",
    "discover nodes": "the server's loop starts",
}


def audit_marks(run_dir: Path) -> dict[str, float]:
    marks: dict[str, float] = {}
    for line in (run_dir / "audit.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["type"] == "query.whoami":
            if e["sender"] == "server":
                marks.setdefault("first whoami sent", e["t"])
            else:
                marks["last whoami reply"] = e["t"]
        elif e["type"].startswith("train.") and e.get("sender") == "server":
            marks.setdefault("first task sent", e["t"])
    if "first whoami sent" not in marks and "last whoami reply" in marks:  # inline: no request line
        marks["first whoami sent"] = min(
            json.loads(line)["t"]
            for line in (run_dir / "audit.jsonl").read_text().splitlines()
            if json.loads(line)["type"] == "query.whoami"
        )
    return marks


def run_once(scenario: Path, engine: str, out: Path) -> dict[str, float]:
    events = out / "events.jsonl"
    out.mkdir(parents=True)
    env = {
        **os.environ,
        EVENTS: str(events),
        "FLWR_TELEMETRY_ENABLED": "0",
        "VEIL_PROGRESS": "off",
        "PYTHONPATH": str(ROOT),
    }
    runs = out / "runs"
    cmd = [sys.executable, __file__, "--child", "run", str(scenario), "--engine", engine, "--out", str(runs)]
    launched = time.time()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    try:
        while True:  # until the first stage is done (its tasks are in the manifest)
            manifests = list(runs.glob("*/manifest.json")) if runs.exists() else []
            if manifests:
                try:
                    stages = json.loads(manifests[0].read_text())["stages"]
                except (OSError, ValueError):
                    stages = {}
                tasks = [t for s in stages.values() for t in s.get("tasks", [])]
                if tasks:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"veil run --engine {engine} ended or hung before its first stage: {out}")
            time.sleep(0.1)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    marks = {"launched": launched}
    for line in events.read_text().splitlines():
        e = json.loads(line)
        marks.setdefault(e["event"], e["t"])
    marks |= audit_marks(manifests[0].parent)
    marks["first task started"] = min(t["started"] for t in tasks)
    return {k: v - launched for k, v in marks.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", nargs="?", type=Path, default=ROOT / "scenarios" / "smoke.yaml")
    parser.add_argument("--engines", nargs="+", default=["flower", "inline"], choices=("flower", "inline"))
    parser.add_argument("--repeat", type=int, default=3, help="runs of each engine, alternating")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="veil-startup-"))
    seen: dict[str, list[dict[str, float]]] = {e: [] for e in args.engines}
    print(f"load before: {os.getloadavg()}", flush=True)
    for i in range(args.repeat):
        for engine in args.engines if i % 2 == 0 else args.engines[::-1]:
            marks = run_once(args.scenario.resolve(), engine, out / f"{engine}-{i + 1}")
            seen[engine].append(marks)
            print(f"{engine:6s} run {i + 1}: first task at {marks['first task started']:.2f} s", flush=True)
    for engine, runs in seen.items():
        names = [n for n in runs[0] if all(n in r for r in runs)]
        times = {n: statistics.median(r[n] for r in runs) for n in names}
        print(
            f"\n{engine}: {args.scenario.name}, median of {len(runs)} runs; seconds since `veil run` launched"
        )
        print(f"{'at s':>7} {'+ s':>6} {'runs s':>13}  {'event':<46} what ran since the row before")
        before = 0.0
        for name in sorted(times, key=lambda n: times[n]):
            if name == "launched":
                continue
            at = times[name]
            spent = SPENT.get(name, "(between)" if not name.endswith(" done") else name.removesuffix(" done"))
            low, high = min(r[name] for r in runs), max(r[name] for r in runs)
            print(f"{at:7.2f} {at - before:6.2f} {low:6.2f}-{high:<6.2f}  {name:<46} {spent}")
            before = at
        print(f"first task at {times['first task started']:.2f} s")
    print(f"\nload: {os.getloadavg()}")
    print(f"runs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
