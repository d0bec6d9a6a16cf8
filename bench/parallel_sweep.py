"""A sweep run N at a time (`veil run --parallel N`) against the same sweep one run at a time.

    python bench/parallel_sweep.py                       # 4 smoke seeds, --parallel 2, the flower engine
    python bench/parallel_sweep.py --seeds 0-7 --parallel 4 --engine inline

Both sweeps run in this invocation, one after the other (parallel first, so a machine that warms up or
fills its page cache favours the sequential one). Prints each wall time, their ratio, the machine's load
(1-minute average sampled during each sweep, and its CPUs), and whether the two sweeps' sweep.json and
result records are identical (timings excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def records(run_dir: Path) -> list[str]:
    lines = []
    for path in sorted((run_dir / "results").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip() and not json.loads(line)["metric"].endswith("_s"):
                lines.append(f"{path.name} {line}")
    return sorted(lines)


def sweep(args: argparse.Namespace, out: Path, parallel: list[str]) -> tuple[float, list[float], Path]:
    """One `veil run ... --seeds` to the end: its wall time, the load samples, its sweep directory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, "-m", "simulator.cli", "run", str(args.scenario), "--seeds", args.seeds]
    cmd += ["--engine", args.engine, "--out", str(out), *parallel]
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(10):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    done.set()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    (root,) = out.iterdir()
    return wall, loads or [os.getloadavg()[0]], root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "smoke.yaml")
    parser.add_argument("--seeds", default="0-3")
    parser.add_argument("--parallel", default="2")
    parser.add_argument("--engine", choices=("flower", "inline"), default="flower")
    parser.add_argument("--keep", type=Path, default=None, help="keep both sweeps here (default: removed)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="veil-parallel-sweep-"))
    try:
        print(
            f"{args.scenario.name}, seeds {args.seeds}, {args.engine} engine, {os.cpu_count()} CPUs",
            flush=True,
        )
        print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        par, par_load, par_root = sweep(args, tmp / "parallel", ["--parallel", args.parallel])
        print(f"--parallel {args.parallel}: {par:7.1f} s (load {statistics.mean(par_load):.2f})", flush=True)
        seq, seq_load, seq_root = sweep(args, tmp / "sequential", [])
        print(f"one at a time: {seq:7.1f} s (load {statistics.mean(seq_load):.2f})", flush=True)
        print(f"ratio (one at a time / parallel): {seq / par:.2f}")
        spec = [json.loads((r / "sweep.json").read_text()) for r in (seq_root, par_root)]
        same = spec[0] == spec[1] and all(
            records(seq_root / name) == records(par_root / name) for name in spec[0]["runs"]
        )
        print("sweep.json and result records (timings excluded):", "identical" if same else "DIFFERENT")
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
        return 0 if same else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
