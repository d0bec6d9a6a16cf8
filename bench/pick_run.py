"""What the bench scripts share: pick the run to check (a directory, the latest, or a fresh run)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def latest(runs: Path, name: str) -> Path:
    """The newest run directory, or sweep directory (sweep.json), of scenario `name` under `runs`."""
    found = [*runs.glob(f"{name}-*/manifest.json"), *runs.glob(f"{name}*/sweep.json")]
    found.sort(key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no {name} run or sweep under {runs}/")
    return found[-1].parent


def run_to_check(doc: str | None, name: str, argv: list[str] | None) -> Path:
    """Parse --run DIR|latest or --scenario FILE (run it first, printing its wall time) and --out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--run", help=f"a run or sweep directory, or 'latest' for the newest {name} run or sweep"
    )
    group.add_argument("--scenario", help="run this scenario first, then check it")
    parser.add_argument("--out", default=str(ROOT / "runs"), help="where runs go (default: runs/)")
    args = parser.parse_args(argv)
    if args.scenario:
        from simulator.launcher import start_run
        from simulator.schema import load_scenario

        t0 = time.monotonic()
        run_dir = start_run(load_scenario(args.scenario), out=Path(args.out))
        print(f"wall time including Ray start-up: {time.monotonic() - t0:.1f} s")
        return run_dir
    if args.run == "latest":
        return latest(Path(args.out), name)
    return Path(args.run)
