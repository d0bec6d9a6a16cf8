"""Wall time and peak memory of a whole `veil run`, Ray start-up included, and each stage's share.

    python bench/run_timing.py scenarios/smoke.yaml [--out /tmp/veil-bench]

Runs the CLI in a subprocess (its own session, so Ray's processes are counted and cleaned up),
samples the resident memory of every process in that session, and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def session_rss_mib(sid: int) -> float:
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) != sid:
                continue
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario")
    parser.add_argument("--out", default=None, help="where the run directory goes (default: a temp dir)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="veil-bench-"))

    cmd = [
        sys.executable,
        "-m",
        "simulator.cli",
        "run",
        str(Path(args.scenario).resolve()),
        "--out",
        str(out),
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, session_rss_mib(proc.pid))
        time.sleep(0.5)
    wall = time.monotonic() - t0
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's leftovers in this session, if any
    except ProcessLookupError:
        pass
    output = proc.stdout.read().decode() if proc.stdout else ""
    if proc.returncode != 0:
        print(output)
        print(f"veil run failed with exit status {proc.returncode}")
        return 1
    run_dir = sorted(out.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)[-1].parent
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    print(f"scenario:                 {args.scenario}")
    print(f"wall time (incl. Ray):    {wall:.1f} s")
    print(f"peak memory (all procs):  {peak:.0f} MiB")
    staged = sum(s["wall_s"] for s in stages.values())
    for name, s in stages.items():
        print(f"  {name:<10} {s['wall_s']:8.1f} s")
    print(f"  {'overhead':<10} {wall - staged:8.1f} s  (Ray and Flower start-up, shutdown)")
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
