"""The simulator's overhead: the same tasks of a scenario timed under Flower/Ray and under the inline engine.

    python bench/overhead.py                                   # scenarios/smoke.yaml, one run of each
    python bench/overhead.py scenarios/collab-10-1.yaml --repeat 3 --tasks

Each `veil run` is a subprocess in a session of its own, the engines alternating (flower, inline, then
inline, flower...) so that background load hits both alike. Each task's start and end on its node come
from the manifest (`stages.<name>.tasks`, simulator.engines.drive); tasks are paired by (stage, party,
key), or (stage, key) where that names one task. The inline engine runs one task after another, so its
wall time is no reference for a parallel run: only the tasks are compared. Prints:

- per stage: task-seconds under each engine (the median over runs of each task's time, summed) and their
  ratio (flower / inline; target at most 1.10), and the median of the per-task ratios; --tasks lists
  every task;
- start-up apart: seconds from launching `veil run` to its first task's start, and from the last task's
  end to the process's exit;
- how busy the nodes are under Flower: the worker processes (Ray actors, by pid) and the share of their
  seconds, from the first task's start to the last's end, spent in tasks (target at least 85%); beside
  it the most the tasks allow (a party runs one task at a time; no more tasks at once than workers), so
  that what the plan leaves idle is not blamed on the carrier;
  the same per party (one SuperNode each);
- Flower's task runs split by whether another task ran beside them: on a machine with few cores the
  tasks that share it run slower than the inline engine's, which had it to itself;
- the machine's load.

--again DIR reads the runs an earlier --out DIR kept, and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("flower", "inline")
TIMES = "times.json"  # beside each kept run: when this script launched it and saw it exit
ALONE = 0.1  # a task that shared at most this share of its time with another task "ran alone"
Key = tuple[str, str, str]  # (stage, party, key)


def run_once(scenario: Path, engine: str, out: Path, overrides: list[str]) -> dict[str, Any]:
    """One `veil run` to its end: when it was launched and exited (this machine's clock), its manifest."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    cmd = [sys.executable, "-m", "simulator.cli", "run", str(scenario), "--engine", engine, "--out", str(out)]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "VEIL_PROGRESS": "off", "PYTHONPATH": str(ROOT)}
    launched = time.time()
    proc = subprocess.Popen(
        [*cmd, *sets],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = proc.communicate()
    exited = time.time()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's leftovers in this session, if any
    except ProcessLookupError:
        pass
    if proc.returncode != 0:
        raise SystemExit(f"veil run --engine {engine} failed ({proc.returncode}):\n{output.decode()[-3000:]}")
    (out / TIMES).write_text(json.dumps({"launched": launched, "exited": exited}))
    return read_run(out)


def read_run(out: Path) -> dict[str, Any]:
    """A run kept under `out` (run_once's): its manifest, and when it was launched and exited if known."""
    (run_dir,) = (p for p in out.iterdir() if p.is_dir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    times = json.loads((out / TIMES).read_text()) if (out / TIMES).exists() else {}
    return {**times, "manifest": manifest, "dir": run_dir}


def shared_share(task: dict[str, Any], tasks: list[dict[str, Any]]) -> float:
    """The share of a task's time during which another task of the same run ran too."""
    own = task["finished"] - task["started"]
    together = sum(
        max(0.0, min(task["finished"], t["finished"]) - max(task["started"], t["started"]))
        for t in tasks
        if t is not task
    )
    return min(1.0, together / own) if own > 0 else 0.0


def tasks_of(manifest: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    """Each task by (stage, party, key); party "" where the key alone names it in its stage, since a task
    that may run anywhere (the centralised row) need not run on the same party's node in both engines."""
    out = {}
    for stage, entry in manifest["stages"].items():
        keys = [t["key"] for t in entry.get("tasks", [])]
        for t in entry.get("tasks", []):
            out[(stage, t["party"] if keys.count(t["key"]) > 1 else "", t["key"])] = t
    return out


def plan_bound(tasks: list[dict[str, Any]], workers: int) -> float:
    """The shortest the tasks could take: the longer of the busiest party's tasks in a row and the
    task-seconds spread over the workers. Stage barriers only lengthen it; early tasks cross them."""
    per_party: dict[str, float] = defaultdict(float)
    for t in tasks:
        per_party[t["party"]] += t["finished"] - t["started"]
    return max(max(per_party.values()), sum(per_party.values()) / workers)


def busy(run: dict[str, Any]) -> dict[str, Any]:
    """How busy the workers (pids) and the parties were, from the first task's start to the last's end."""
    tasks = [{**t, "stage": k[0]} for k, t in tasks_of(run["manifest"]).items()]
    first, last = min(t["started"] for t in tasks), max(t["finished"] for t in tasks)
    span = last - first
    task_s = sum(t["finished"] - t["started"] for t in tasks)
    workers = len({t["pid"] for t in tasks})
    parties = len({t["party"] for t in tasks})
    bound = task_s / (workers * plan_bound(tasks, workers))
    return {
        "span": span,
        "task_s": task_s,
        "workers": workers,
        "parties": parties,
        "worker_share": task_s / (workers * span),
        "party_share": task_s / (parties * span),
        "bound": bound,
        "first": first,
        "last": last,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", nargs="?", type=Path, default=ROOT / "scenarios" / "smoke.yaml")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each engine, alternating")
    parser.add_argument("--set", action="append", default=[], help="as veil run --set, for both engines")
    parser.add_argument("--tasks", action="store_true", help="list every task, not only each stage")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--again", type=Path, default=None, help="run nothing: read an earlier --out")
    args = parser.parse_args(argv)
    scenario = args.scenario.resolve()
    out = args.again or args.out or Path(tempfile.mkdtemp(prefix="veil-overhead-"))
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
    print(f"load before: {os.getloadavg()}", flush=True)
    if args.again:
        for engine in ENGINES:
            runs[engine] = [read_run(d) for d in sorted(args.again.glob(f"{engine}-*"))]
    for i in range(0 if args.again else args.repeat):
        for engine in ENGINES if i % 2 == 0 else ENGINES[::-1]:
            run = run_once(scenario, engine, out / f"{engine}-{i + 1}", args.set)
            runs[engine].append(run)
            print(
                f"{engine:6s} run {i + 1}: {run['exited'] - run['launched']:6.1f} s wall, {os.getloadavg()}"
            )

    # per task: the median over runs of its time on its node, under each engine
    seconds: dict[str, dict[Key, float]] = {}
    for engine, done in runs.items():
        per: dict[Key, list[float]] = defaultdict(list)
        for run in done:
            for key, t in tasks_of(run["manifest"]).items():
                per[key].append(t["finished"] - t["started"])
        seconds[engine] = {k: statistics.median(v) for k, v in per.items()}
    paired = sorted(set(seconds["flower"]) & set(seconds["inline"]), key=lambda k: k)
    unpaired = set(seconds["flower"]) ^ set(seconds["inline"])
    order = list(runs["flower"][0]["manifest"]["stages"])
    print(f"\n{scenario.name}: {len(paired)} tasks paired by (stage, party, key); {len(unpaired)} unpaired")
    print(f"{'stage':<10} {'tasks':>5} {'inline s':>9} {'flower s':>9} {'ratio':>6} {'median ratio':>12}")
    for stage in [*order, "all"]:
        keys = [k for k in paired if stage in (k[0], "all")]
        if not keys:
            continue
        inl, flo = (sum(seconds[e][k] for k in keys) for e in ("inline", "flower"))
        med = statistics.median(seconds["flower"][k] / max(seconds["inline"][k], 1e-6) for k in keys)
        print(f"{stage:<10} {len(keys):5d} {inl:9.2f} {flo:9.2f} {flo / inl:6.3f} {med:12.3f}")
        if args.tasks and stage != "all":
            for k in keys:
                a, b = seconds["inline"][k], seconds["flower"][k]
                print(f"    {k[1]:<8} {k[2][:28]:<28} {a:8.3f} {b:8.3f} {b / max(a, 1e-6):6.3f}")
    print("ratio: flower / inline task-seconds (target at most 1.10)")
    # Flower's workers run tasks at once, on cores the inline engine had to itself: split its tasks by
    # whether another task ran beside them
    split: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for run in runs["flower"]:
        tasks = list(tasks_of(run["manifest"]).items())
        for key, t in tasks:
            if key in seconds["inline"]:
                alone = shared_share(t, [u for _, u in tasks]) <= ALONE
                split[alone].append((seconds["inline"][key], t["finished"] - t["started"]))
    for alone, pairs in split.items():
        if pairs:
            inl, flo = sum(a for a, _ in pairs), sum(b for _, b in pairs)
            what = (
                f"alone (another task beside it at most {ALONE:.0%} of its time)"
                if alone
                else "beside another"
            )
            print(
                f"  flower tasks that ran {what}: {len(pairs)} task runs, {flo:.2f} s against inline "
                f"{inl:.2f} s, ratio {flo / inl:.3f}"
            )

    print("\nstart-up and shutdown (s; median over runs)")
    print(f"{'engine':<7} {'to first task':>13} {'after last task':>15} {'wall':>7}")
    for engine, done in runs.items():
        figures = [busy(r) | r for r in done if "launched" in r]
        if not figures:
            print(f"{engine:<7} (its launch and exit times were not kept)")
            continue
        start = statistics.median(f["first"] - f["launched"] for f in figures)
        stop = statistics.median(f["exited"] - f["last"] for f in figures)
        wall = statistics.median(f["exited"] - f["launched"] for f in figures)
        print(f"{engine:<7} {start:13.2f} {stop:15.2f} {wall:7.1f}")

    print("\nhow busy the nodes are: task-seconds / (nodes x seconds from first task start to last task end)")
    print(
        f"{'engine':<7} {'run':>3} {'workers':>7} {'share':>6} {'plan allows':>11} {'parties':>7} "
        f"{'share':>6}"
    )
    for engine, done in runs.items():
        for i, run in enumerate(done, 1):
            b = busy(run)
            print(
                f"{engine:<7} {i:3d} {b['workers']:7d} {b['worker_share']:6.1%} {b['bound']:11.1%} "
                f"{b['parties']:7d} {b['party_share']:6.1%}"
            )
    print(
        "workers: the processes that ran tasks (Ray actors; the inline engine's one process);"
        " target at least 85%"
    )
    print(f"load: {os.getloadavg()}")
    print(f"run directories: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
