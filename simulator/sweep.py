"""Sweeps: one `veil run` command, several runs under one sweep directory.

    veil run FILE --seeds 0-4                 one run per training seed, on one task (see below)
    veil run FILE --set dpm.lambda=0.5,1,2    one run per value of one field
    veil run FILE --seeds 0-2 --set dpm.lambda=0.5,1   every seed at every value (6 runs)

A sweep directory (read by reports/runs.py) holds sweep.json
    {"scenario": NAME, "runs": ["seed-0", ...], "varied": {"seed": [0, ...]}}
(each list in "varied" has one value per run, in the order of "runs") and one run directory per run.

**Seeds sweep training, not the task.** `--seeds` sets `seed` (initialisations, data order, DPMs) and
pins `dataset.seed` (which photos are task classes, which patches each entity holds) to the scenario's task
seed, unless the file or a --set gives `dataset.seed` itself; so the runs differ in training only, and a
paired difference between rows is measured on one task. To sweep tasks too, sweep `dataset.seed` itself
(`--set dataset.seed=0,1,2`) or give `--set dataset.seed=...` with `--seeds`.

Every run's scenario is validated before anything is written; the run directories are all created up
front (so `veil run --resume SWEEP_DIR` can complete a sweep that was stopped), then run one after another.
Nothing here loads torch: the runs are started through simulator.launcher by the caller.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entities.files import read_regular, write_atomic
from reports.formats import sweep_problems
from simulator.schema import Problem, Scenario, ScenarioError, load_scenario
from simulator.yamlio import YamlRefused, loads

SWEEP_FILE = "sweep.json"
MAX_RUNS = 1000
MAX_SWEEP_BYTES = 1 << 24
_OPENERS = ("[", "{", "'", '"')


@dataclass
class PlannedRun:
    name: str  # the run directory's name inside the sweep directory
    scenario: Scenario
    varied: dict[str, Any]  # field -> this run's value


@dataclass
class SweepPlan:
    scenario: str  # the scenario's name
    runs: list[PlannedRun] = field(default_factory=list)

    @property
    def varied(self) -> dict[str, list[Any]]:
        keys = list(self.runs[0].varied) if self.runs else []
        return {k: [r.varied[k] for r in self.runs] for k in keys}


def parse_seeds(text: str) -> list[int]:
    """`0-4` (inclusive), `0,2,5`, or both mixed (`0-2,7`); each seed once, in the order given."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise ScenarioError(
                "--seeds",
                [Problem("--seeds", f"{part!r}: expected a seed, a range A-B or a list (0-4, 0,2,5)")],
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ScenarioError("--seeds", [Problem("--seeds", f"{part!r}: the range ends before it starts")])
        if hi - lo >= MAX_RUNS:
            raise ScenarioError("--seeds", [Problem("--seeds", f"{part!r}: more than {MAX_RUNS} seeds")])
        seeds += [s for s in range(lo, hi + 1) if s not in seeds]
    return seeds


def is_list_value(text: str) -> bool:
    """Whether a --set value lists several values (`0.5,1,2`), not one YAML value (`[1, 2]`, `"a,b"`)."""
    return "," in text and not text.lstrip().startswith(_OPENERS)


def split_overrides(overrides: list[str]) -> tuple[list[str], tuple[str, list[str]] | None]:
    """The single-valued --set items, and the one list-valued item as (key, [value texts]).

    Raises ScenarioError for two list-valued items (a grid over two fields is not a sweep Veil reads)
    and for a list-valued `seed` (that is --seeds)."""
    fixed: list[str] = []
    listed: list[tuple[str, list[str]]] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if sep and key and is_list_value(text):
            listed.append((key.strip(), [t.strip() for t in text.split(",")]))
        else:
            fixed.append(item)
    problems = []
    if len(listed) > 1:
        keys = ", ".join(k for k, _ in listed)
        problems.append(
            Problem(
                "--set",
                f"list values for {len(listed)} fields ({keys}); a sweep varies one field "
                "(with --seeds besides); run one sweep per field",
            )
        )
    for key, values in listed:
        if key == "seed":
            problems.append(Problem("--set seed", "a list of seeds is --seeds (e.g. --seeds 0-4)"))
        if any(not v for v in values):
            problems.append(Problem(f"--set {key}", "an empty item in the list of values"))
        if len(values) > MAX_RUNS:
            problems.append(Problem(f"--set {key}", f"more than {MAX_RUNS} values"))
    if problems:
        raise ScenarioError("--set", problems)
    return fixed, (listed[0] if listed else None)


def _slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[:40] or "value"


def _run_name(key: str | None, value: Any, seed: int | None) -> str:
    parts = []
    if key is not None:
        parts.append(f"{_slug(key.replace('[', '.').replace(']', ''))}-{_slug(value)}")
    if seed is not None:
        parts.append(f"seed-{seed}")
    return "-".join(parts)


def plan_sweep(path: str | Path, overrides: list[str], seeds: list[int] | None) -> SweepPlan:
    """Every run of the sweep, validated; a ScenarioError lists every problem of every run at once."""
    fixed, listed = split_overrides(overrides)
    if seeds is not None and any(item.partition("=")[0].strip() == "seed" for item in fixed):
        raise ScenarioError("--set", [Problem("--set seed", "--seeds sets the seed of each run; drop one")])
    values: list[tuple[str | None, str | None, Any]] = [(None, None, None)]
    if listed is not None:
        key, texts = listed
        values = []
        for text in texts:
            try:
                values.append((key, f"{key}={text}", loads(text)))
            except YamlRefused as err:
                raise ScenarioError(
                    "--set", [Problem(f"--set {key}", f"{text!r} is not valid YAML ({err.message})")]
                ) from None
    plan: SweepPlan | None = None
    problems: list[str] = []
    for field_key, item, value in values:
        extra = [item] if item else []
        try:
            base = load_scenario(path, fixed + extra)
        except ScenarioError as err:
            problems.append(f"{'with ' + item if item else 'the scenario'}:\n{err}")
            continue
        if plan is None:
            plan = SweepPlan(base.name)
        pin = [] if base.dataset.seed is not None or seeds is None else [f"dataset.seed={base.task_seed}"]
        for seed in seeds if seeds is not None else [None]:
            more = [f"seed={seed}"] if seed is not None else []
            try:
                scenario = load_scenario(path, fixed + extra + pin + more)
            except ScenarioError as err:
                problems.append(f"with {' '.join(extra + more)}:\n{err}")
                continue
            varied: dict[str, Any] = {}
            if field_key is not None:
                varied[field_key] = value
            if seed is not None:
                varied["seed"] = seed
            plan.runs.append(PlannedRun(_run_name(field_key, value, seed), scenario, varied))
    if problems:
        raise SweepInvalid("\n".join(problems))
    assert plan is not None
    names = [r.name for r in plan.runs]
    if len(set(names)) != len(names):
        raise SweepInvalid("two runs of the sweep would share a directory name: " + ", ".join(names))
    return plan


class SweepInvalid(ValueError):
    """Some run of a sweep has an invalid scenario (the message lists every problem)."""


def create_sweep(plan: SweepPlan, out: Path) -> Path:
    """The sweep directory with every run directory created (not run yet) and sweep.json."""
    from simulator.rundir import RunDir  # numpy and the manifest's library versions, not torch

    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(out) / f"{plan.scenario}-sweep-{stamp}"
    n = 1
    while root.exists():
        n += 1
        root = Path(out) / f"{plan.scenario}-sweep-{stamp}-{n}"
    root.mkdir(parents=True)
    for run in plan.runs:
        created = RunDir.create(run.scenario, root)
        created.root.rename(root / run.name)
    spec = {"scenario": plan.scenario, "runs": [r.name for r in plan.runs], "varied": plan.varied}
    write_atomic(root / SWEEP_FILE, json.dumps(spec, indent=1) + "\n")
    return root


def is_sweep(path: Path) -> bool:
    """Whether `path` holds a sweep.json (whatever it holds: check_sweep reads it)."""
    return (path / SWEEP_FILE).exists()


def check_sweep(root: Path) -> list[Path]:
    """The run directories sweep.json lists, in its order; ScenarioError naming sweep.json when it is not
    the file `veil run` writes (garbage, not a list of runs, a run that is not there). Reads only."""
    path = root / SWEEP_FILE
    try:
        spec = json.loads(read_regular(path, MAX_SWEEP_BYTES))
    except (OSError, ValueError, RecursionError) as err:
        why = err.strerror if isinstance(err, OSError) else f"not valid JSON ({err})"
        raise ScenarioError(
            str(path), [Problem("(file)", f"{why}; expected the sweep.json `veil run` writes")]
        ) from None
    problems = [Problem(line.partition(": ")[0], line.partition(": ")[2]) for line in sweep_problems(spec)]
    if problems:
        raise ScenarioError(str(path), problems)
    runs = [root / name for name in spec["runs"]]
    for i, run in enumerate(runs):
        if not run.is_dir():
            what = "is not a directory" if run.exists() else "does not exist"
            problems.append(Problem(f"runs[{i}]", f"{run} {what}; expected the run directory it names"))
    if problems:
        raise ScenarioError(str(path), problems)
    return runs


def sweep_runs(root: Path) -> list[Path]:
    """The run directories of a sweep, in sweep.json's order (check_sweep)."""
    return check_sweep(root)


def finished(run_dir: Path) -> bool:
    """Whether every stage of a run is done (its manifest says so)."""
    from simulator.cli import stage_names  # torch only where plugins or this process registered stages

    try:
        stages = json.loads((run_dir / "manifest.json").read_text()).get("stages", {})
    except (OSError, ValueError):
        return False
    return all(stages.get(name, {}).get("status") == "done" for name in stage_names())


_RAY_HEAD = """
import sys
import ray
context = ray.init(include_dashboard=False, log_to_driver=False)
print(context.address_info["address"], flush=True)
sys.stdin.read()  # until the sweep closes our stdin (or exits)
ray.shutdown()
"""


class SharedRay:
    """A local Ray instance in a helper process that outlives each run's Flower simulation.

    Flower calls `ray.shutdown()` when a simulation ends; in a process that started Ray that stops Ray,
    but a run that joined an address only disconnects. So the helper starts Ray once, the runs join its
    address, and closing the helper's stdin stops it (its own `ray.shutdown()`): no `ray stop`, which
    would stop every Ray on the machine.
    """

    def __init__(self, timeout_s: float = 120.0):
        import subprocess
        import sys

        self.process = subprocess.Popen(
            [sys.executable, "-c", _RAY_HEAD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()  # blocks until Ray is up (or the helper died)
        if not line:
            self.close()
            raise RuntimeError("the shared Ray instance did not start")
        self.address = line

    def close(self) -> None:
        import subprocess

        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(timeout=30)


def run_sweep(
    root: Path, *, engine: str = "flower", ray_address: str | None = None, share_ray: bool = True
) -> list[str]:
    """Run (or complete) every run of a sweep, one after another; returns the failures (run: reason).

    With the flower engine and no --ray-address, the runs share one Ray instance (SharedRay)."""
    from simulator.launcher import RunFailed, Stopped, _log, resume_run  # torch and flwr load here

    runs = sweep_runs(root)
    todo = [p for p in runs if not finished(p)]
    shared: SharedRay | None = None
    if engine == "flower" and ray_address is None and share_ray and len(todo) > 1:
        t0 = time.monotonic()
        shared = SharedRay()
        ray_address = shared.address
        took = time.monotonic() - t0
        _log(f"one Ray instance for the {len(todo)} runs at {ray_address} (started in {took:.1f} s)")
    failures: list[str] = []
    t_sweep = time.monotonic()
    try:
        for i, path in enumerate(runs, 1):
            if path not in todo:
                _log(f"[bold]run {i} of {len(runs)}[/]: {path.name} finished earlier, skipped")
                continue
            _log(f"[bold]run {i} of {len(runs)}[/]: {path.name}")
            t0 = time.monotonic()
            try:
                resume_run(path, engine=engine, ray_address=ray_address)
            except Stopped:  # a RunFailed too, but it stops the sweep, not just this run
                _log(
                    f"[yellow]sweep stopped in run {i} of {len(runs)}[/]: `veil run --resume {root}` goes on"
                )
                raise
            except RunFailed as err:
                failures.append(f"{path.name}: {err}")
                _log(f"[red]run {i} of {len(runs)} failed[/]: {path.name}: {err}")
                continue
            except BaseException:  # stopped (a signal, Ctrl-C): what finished is kept
                again = f"veil run --resume {root}"
                _log(f"[yellow]sweep stopped in run {i} of {len(runs)}[/]: `{again}` completes it")
                raise
            _log(f"[bold]run {i} of {len(runs)}[/]: {path.name} done in {time.monotonic() - t0:.1f} s")
    finally:
        if shared is not None:
            shared.close()
    (root / SWEEP_FILE).touch()  # the newest sweep is the one that finished last (bench --run latest)
    _log(f"sweep: {len(runs) - len(failures)} of {len(runs)} runs done in {time.monotonic() - t_sweep:.1f} s")
    return failures


# --- parallel sweeps: each run a child `veil run --resume RUN` --------------------------------------------

LOGS = "logs"
STOP_GRACE_S = 120.0  # after a forwarded signal, how long a child may take to stop before it is killed


class SweepStopped(RuntimeError):
    """A parallel sweep was stopped by a signal; finished runs are kept, stopped ones resume."""

    def __init__(self, signum: int, stopped: list[str]):
        import signal

        self.signum = signum
        super().__init__(
            f"sweep stopped by {signal.Signals(signum).name}"
            + (f" (runs {', '.join(stopped)} stopped, resumable)" if stopped else "")
        )


def run_cpus(scenario: Scenario, engine: str) -> float:
    """The CPUs one run asks for: every party's node share (flower), or one process's share (inline)."""
    from simulator import roles

    share = max(scenario.resources.num_cpus, 1)
    return share if engine == "inline" else share * len(roles.parties(scenario))


def default_parallel(runs: list[Path], engine: str) -> int:
    """--parallel without N: this machine's CPUs // the CPUs the hungriest run asks for, at least 1."""
    from simulator.preflight import machine_cpus

    need = max((run_cpus(load_scenario(r / "scenario.yaml"), engine) for r in runs), default=1.0)
    return max(1, int(machine_cpus() // need))


def _say(text: str) -> None:
    import sys

    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def run_parallel(
    root: Path, parallel: int, *, engine: str = "flower", ray_address: str | None = None
) -> list[str]:
    """Run (or complete) a sweep's unfinished runs `parallel` at a time (0: default_parallel), each as a
    child `veil run --resume RUN` in a session of its own, its output in SWEEP/logs/<run>.log. SIGINT
    and SIGTERM go to every child (a child stops as a run does, resumable) and then raise SweepStopped.
    Returns the failures (run: reason), as run_sweep does."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    from simulator.rundir import SOURCE_ROOT

    runs = sweep_runs(root)
    todo = [p for p in runs if not finished(p)]
    for path in runs:
        if path not in todo:
            _say(f"{path.name}: finished earlier, skipped")
    n = parallel or default_parallel(todo, engine)
    logs = root / LOGS
    logs.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONUNBUFFERED": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    extra = ["--engine", engine] + (["--ray-address", ray_address] if ray_address else [])
    _say(f"sweep: {len(todo)} of {len(runs)} runs to do, {n} at a time; logs in {logs}")
    live: dict[Path, tuple[subprocess.Popen[bytes], float]] = {}
    failures: list[str] = []
    stops: list[int] = []
    stopped: list[str] = []
    t_sweep = time.monotonic()

    def forward(signum: int) -> None:
        for proc, _ in list(live.values()):
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

    def on_signal(signum: int, frame: object) -> None:
        first = not stops
        stops.append(signum)
        if first:
            _say(f"{signal.Signals(signum).name}: stopping the sweep's runs; finished runs are kept")
        forward(signum)  # a second one too: a child's second SIGINT stops it at once

    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    pending = list(todo)
    stop_at: float | None = None
    try:
        while (pending and not stops) or live:  # after a stop: no new runs, wait for the live ones
            while pending and len(live) < n and not stops:
                path = pending.pop(0)
                log = logs / f"{path.name}.log"
                with open(log, "ab") as fh:  # appended: a resumed run's log keeps the earlier attempt's
                    fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} veil run --resume {path}\n".encode())
                    fh.flush()
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "simulator.cli", "run", "--resume", str(path), *extra],
                        stdin=subprocess.DEVNULL,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own session: a terminal's Ctrl-C comes through us
                        env=env,
                    )
                live[path] = (proc, time.monotonic())
                _say(f"{path.name}: started (pid {proc.pid}, log {log})")
            for path, (proc, t0) in list(live.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del live[path]
                took = time.monotonic() - t0
                if rc == 0:
                    _say(f"{path.name}: done in {took:.1f} s")
                elif stops and rc in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGKILL):
                    stopped.append(path.name)
                    _say(f"{path.name}: stopped after {took:.1f} s")
                else:
                    log = logs / f"{path.name}.log"
                    failures.append(f"{path.name}: exit {rc} after {took:.1f} s; see {log}: {_tail(log)}")
                    _say(f"{path.name}: failed (exit {rc}); see {log}")
            if stops and stop_at is None:
                stop_at = time.monotonic() + STOP_GRACE_S
            if stop_at is not None and time.monotonic() > stop_at:
                forward(signal.SIGKILL)  # a child that ignores the stop: its finished stages stay on disk
                stop_at = float("inf")
            time.sleep(0.2)
    finally:
        for proc, _ in live.values():  # only on an error of our own: no child outlives the sweep
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
        for s, handler in old.items():
            signal.signal(s, handler)
    if stops:
        raise SweepStopped(stops[0], stopped)
    (root / SWEEP_FILE).touch()  # the newest sweep is the one that finished last, as run_sweep does
    _say(f"sweep: {len(runs) - len(failures)} of {len(runs)} runs done in {time.monotonic() - t_sweep:.1f} s")
    return failures
