"""Wall time of one scenario under two revisions of Veil, run alternately on this machine.

    python bench/compare_revisions.py scenarios/smoke.yaml --ref 8956c76 --repeat 3

Each revision is checked out into a temporary worktree (the reference) or used as it is (this checkout),
and `veil run` runs in a subprocess with that tree first on PYTHONPATH, so both use this venv. Runs
alternate (ref, this, ref, this...) so that background load hits both alike. Prints each wall time,
the medians and their ratio, and checks that the two give the same result records (timings excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(tree: Path, scenario: Path, out: Path, extra: list[str]) -> tuple[float, Path]:
    env = {**os.environ, "PYTHONPATH": str(tree), "FLWR_TELEMETRY_ENABLED": "0"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", str(scenario), "--out", str(out), *extra],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"veil run under {tree} failed:\n{proc.stderr[-3000:]}")
    (run_dir,) = out.iterdir()
    return wall, run_dir


def records(run_dir: Path) -> list[str]:
    lines = []
    for path in sorted((run_dir / "results").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip() and not json.loads(line)["metric"].endswith("_s"):
                lines.append(f"{path.name} {line}")
    return sorted(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--ref", required=True, help="the reference revision (a commit)")
    parser.add_argument("--this", default=None, help="a revision to measure instead of this checkout")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engine", default=None, help="--engine for this checkout (the reference has none)")
    args = parser.parse_args(argv)
    scenario = args.scenario.resolve()
    with tempfile.TemporaryDirectory(prefix="veil-revisions-") as tmp:
        ref_tree = Path(tmp) / "ref"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(ref_tree), args.ref], cwd=ROOT, check=True
        )
        this_tree = ROOT
        if args.this:
            this_tree = Path(tmp) / "this"
            subprocess.run(
                ["git", "worktree", "add", "-q", "--detach", str(this_tree), args.this], cwd=ROOT, check=True
            )
        try:
            walls: dict[str, list[float]] = {"ref": [], "this": []}
            outs: dict[str, Path] = {}
            for i in range(args.repeat):
                for name, tree, extra in (
                    ("ref", ref_tree, []),
                    ("this", this_tree, ["--engine", args.engine] if args.engine else []),
                ):
                    out = Path(tmp) / f"{name}-{i}"
                    wall, run_dir = run_once(tree, scenario, out, extra)
                    walls[name].append(wall)
                    outs[name] = run_dir
                    print(f"{name:4s} run {i + 1}: {wall:6.1f} s", flush=True)
            ref, this = statistics.median(walls["ref"]), statistics.median(walls["this"])
            print(
                f"median wall: ref {args.ref} {ref:.1f} s, this checkout {this:.1f} s, ratio {this / ref:.2f}"
            )
            old, new = records(outs["ref"]), records(outs["this"])
            same = old == new
            print("result records (timings excluded):", "identical" if same else "DIFFERENT")
            if not same:  # what differs, a few lines of each side
                gone, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
                print(f"  {len(gone)} only under the reference, {len(added)} only in this checkout")
                for sign, lines in (("-", gone), ("+", added)):
                    for line in lines[:5]:
                        print(f"  {sign} {line[:200]}")
            print(f"load: {os.getloadavg()}")
            return 0 if same else 1
        finally:
            for tree in {ref_tree, this_tree} - {ROOT}:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


if __name__ == "__main__":
    sys.exit(main())
