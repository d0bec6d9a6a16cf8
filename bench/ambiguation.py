"""Does a run's data owner keep the shape of the sparse-codes paper? Prints the tables and checks.

    python bench/ambiguation.py --run runs/ambiguation-<time>        # check a finished run
    python bench/ambiguation.py --run latest                         # the newest ambiguation run in runs/
    python bench/ambiguation.py --scenario scenarios/ambiguation.yaml   # run it first, then check

Checks: the authorised reconstruction is at least 10 dB (PSNR) above both the ambiguated codes decoded
as they are and a random guess of k of the k' values; with the empirical sampler, a KS test does not
tell the fakes from the true magnitudes at 1%. Exit status 1 when any check fails. The report (with the
rate-distortion plot, written to <run>/plots/rd_curve.png) is printed first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reports.tables import records, render_report  # noqa: E402

GAP_DB = 10.0


def checks(df: pd.DataFrame) -> list[tuple[str, bool, str]]:
    """(what, passed, figures) for each claim the run is held to."""
    amb = df[df.table == "ambiguation"]
    psnr = {r.label: r.value for r in amb[amb.metric == "psnr_mean"].itertuples()}
    authorised = [label for label in psnr if label.startswith("authorised k=") and "bit values" not in label]
    if not authorised:
        return [("the run has ambiguation results", False, "no 'authorised k=' record")]
    ours = psnr[authorised[0]]
    out = []
    for other in ("ambiguated as is", "random guess"):
        out.append(
            (
                f"{authorised[0]} at least {GAP_DB:g} dB above {other}",
                ours >= psnr[other] + GAP_DB,
                f"{ours:.2f} vs {psnr[other]:.2f} dB (gap {ours - psnr[other]:.2f})",
            )
        )
    ks = df[(df.table == "ambiguation_test") & (df.label == "empirical")]
    pvalue = ks[ks.metric == "ks_pvalue"].value
    if len(pvalue):
        p = float(pvalue.iloc[0])
        out.append(("empirical sampler: KS does not reject at 1%", p > 0.01, f"p = {p:.3g}"))
    return out


def latest(runs: Path, name: str) -> Path:
    found = sorted(runs.glob(f"{name}-*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no {name} run under {runs}")
    return found[-1].parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--run", help="a run directory, or 'latest' for the newest ambiguation run in runs/")
    group.add_argument("--scenario", help="run this scenario first, then check it")
    parser.add_argument("--out", default=str(ROOT / "runs"), help="where runs go (default: runs/)")
    args = parser.parse_args(argv)

    if args.scenario:
        from simulator.launcher import start_run
        from simulator.schema import load_scenario

        t0 = time.monotonic()
        run_dir = start_run(load_scenario(args.scenario), out=Path(args.out))
        print(f"ran {args.scenario} in {time.monotonic() - t0:.0f} s: {run_dir}")
    elif args.run == "latest":
        run_dir = latest(Path(args.out), "ambiguation")
    else:
        run_dir = Path(args.run)

    print(render_report(run_dir))
    print()
    failed = 0
    for what, passed, figures in checks(records(run_dir)):
        failed += not passed
        print(f"{'PASS' if passed else 'FAIL'}  {what}: {figures}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
