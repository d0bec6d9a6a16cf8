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

import sys

import pandas as pd
from pick_run import run_to_check  # bench/pick_run.py; it also puts the repo on sys.path

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


def main(argv: list[str] | None = None) -> int:
    run_dir = run_to_check(__doc__, "ambiguation", argv)
    print(render_report(run_dir))
    print()
    failed = 0
    for what, passed, figures in checks(records(run_dir)):
        failed += not passed
        print(f"{'PASS' if passed else 'FAIL'}  {what}: {figures}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
