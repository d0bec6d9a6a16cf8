"""Scaling with the number of entities: wall time and peak memory of `veil run` for N = 2, 4, 8, 16, 32.

    python bench/scaling.py                                  # the Flower engine, N = 2 4 8 16 32
    python bench/scaling.py --sizes 2 4 8 --engine inline --keep-owner --pretrain-steps 60

Each scenario is cut from scenarios/smoke.yaml: N entities E1..EN with equal shares of its training
images (so each holds fewer as N grows; --train-per-class grows the dataset), each with the paper's
DPM; one refine row per entity (its own features and the next entity's poisoned ones); FedAvg over all
of them (--rounds). Left out, as they do not grow with the entities: the data owner and its users
(--keep-owner keeps them), the adversaries, the raw-image rows (each trains F + C from scratch, a
constant per row), and most of pretraining (--pretrain-steps, default 20 instead of smoke's 60).

Each run is a subprocess in its own session; the resident memory of every process in that session
(the driver, Ray's processes, the actors) is sampled every --every seconds, as RSS (shared pages counted
in each process) and PSS (shared pages split between them; /proc/PID/smaps_rollup). Prints, per N:
wall time, seconds to the first task (manifest `tasks`), task-seconds, peak RSS and PSS of the tree (and
the largest processes at the PSS peak, by the kernel's name for them); then least-squares fits of
log(wall) and log(peak PSS) on log(N) (the exponent: 1 is linear growth), and of wall on N (seconds per
entity); the machine's load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.yaml"
PAGE = os.sysconf("SC_PAGE_SIZE")


def scenario_for(n: int, args: argparse.Namespace) -> dict[str, Any]:
    data = yaml.safe_load(SMOKE.read_text())
    data["name"] = f"scaling-{n}"
    data["description"] = f"smoke cut to {n} DPM entities, for bench/scaling.py"
    data["dataset"]["train_per_class"] = args.train_per_class
    data["pretrain"]["min_steps"] = args.pretrain_steps
    share = math.floor(1000 / n) / 1000  # equal shares that add up to at most 1
    data["entities"] = [{"name": f"E{i + 1}", "fraction": share} for i in range(n)]
    data["collaboration"] = [
        {
            "label": f"E{i + 1} + E{(i + 1) % n + 1} poisoned",
            "entity": f"E{i + 1}",
            "data": ["own:features", f"poisoned:E{(i + 1) % n + 1}"],
        }
        for i in range(n)
    ]
    data["fedavg"]["rounds"] = args.rounds
    data.pop("adversaries", None)
    if not args.keep_owner:
        data.pop("data_owner", None)
    return data


def session_memory(sid: int) -> tuple[int, int, list[tuple[int, str]]]:
    """(RSS, PSS) in bytes, summed over the live processes of session `sid`, and each one's (PSS, name)."""
    rss = pss = 0
    each = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            if int(text[text.rindex(")") + 2 :].split()[3]) != sid:
                continue
            rss += int((stat.parent / "statm").read_text().split()[1]) * PAGE
            for line in (stat.parent / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    mine = int(line.split()[1]) * 1024
                    pss += mine
                    name = text[text.index("(") + 1 : text.rindex(")")]
                    each.append((mine, f"{name} (the driver)" if int(stat.parent.name) == sid else name))
                    break
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return rss, pss, each


def run_once(path: Path, engine: str, out: Path, every: float) -> dict[str, Any]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "VEIL_PROGRESS": "off", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "simulator.cli", "run", str(path), "--engine", engine, "--out", str(out)]
    launched = time.time()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    peak_rss = peak_pss = 0
    at_peak: list[tuple[int, str]] = []
    while proc.poll() is None:
        rss, pss, each = session_memory(proc.pid)
        if pss > peak_pss:
            at_peak = each
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(every)
    wall = time.time() - launched
    output = proc.stdout.read().decode() if proc.stdout else ""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's leftovers in this session, if any
    except ProcessLookupError:
        pass
    if proc.returncode != 0:
        raise SystemExit(f"veil run {path.name} failed ({proc.returncode}):\n{output[-3000:]}")
    (run_dir,) = out.iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    tasks = [t for entry in manifest["stages"].values() for t in entry.get("tasks", [])]
    return {
        "wall": wall,
        "to_first": min(t["started"] for t in tasks) - launched,
        "task_s": sum(t["finished"] - t["started"] for t in tasks),
        "tasks": len(tasks),
        "rss": peak_rss / 2**20,
        "pss": peak_pss / 2**20,
        "at_peak": sorted(at_peak, reverse=True),
    }


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x: (a, b)."""
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if n > 1 and sxx else 0.0
    return my - b * mx, b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--engine", default="flower", choices=("flower", "inline"))
    parser.add_argument("--train-per-class", type=int, default=40, help="smoke's dataset size (40)")
    parser.add_argument("--pretrain-steps", type=int, default=20, help="pretrain.min_steps (smoke: 60)")
    parser.add_argument("--rounds", type=int, default=1, help="FedAvg rounds (smoke: 2)")
    parser.add_argument("--keep-owner", action="store_true", help="keep the data owner and its users")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--out", type=Path, default=None, help="keep scenarios and run directories here")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="veil-scaling-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"engine {args.engine}; load before: {os.getloadavg()}", flush=True)
    print(
        f"{'N':>3} {'tasks':>5} {'wall s':>7} {'to 1st task':>11} {'task-s':>7} {'RSS MiB':>8} "
        f"{'PSS MiB':>8}  load"
    )
    rows: list[tuple[int, dict[str, Any]]] = []
    for n in args.sizes:
        path = out / f"scaling-{n}.yaml"
        path.write_text(yaml.safe_dump(scenario_for(n, args), sort_keys=False))
        r = run_once(path, args.engine, out / f"runs-{n}", args.every)
        rows.append((n, r))
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"{n:3d} {r['tasks']:5d} {r['wall']:7.1f} {r['to_first']:11.1f} {r['task_s']:7.1f} "
            f"{r['rss']:8.0f} {r['pss']:8.0f}  {load}",
            flush=True,
        )
        top = ", ".join(f"{name} {b / 2**20:.0f}" for b, name in r["at_peak"][:4])
        print(f"      at the peak: {len(r['at_peak'])} processes; the largest (PSS MiB): {top}", flush=True)
    if len(rows) > 1:
        logn = [math.log(n) for n, _ in rows]
        for what, unit in (("wall", "s"), ("task_s", "s"), ("pss", "MiB"), ("rss", "MiB")):
            values = [r[what] for _, r in rows]
            _, exponent = fit(logn, [math.log(v) for v in values])
            a, b = fit([float(n) for n, _ in rows], values)
            print(
                f"{what:<7} ~ N^{exponent:.2f} (log-log fit);  linear fit {a:.1f} + {b:.2f} {unit} per entity"
            )
    print(f"load: {os.getloadavg()}")
    print(f"scenarios and run directories: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
