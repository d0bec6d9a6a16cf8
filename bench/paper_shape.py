"""Does a collab-10-1 run, or a sweep of them, keep the shape of the Deep Poisoning paper? Prints the
tables and checks.

    python bench/paper_shape.py --run runs/collab-10-1-<time>     # check a finished run
    python bench/paper_shape.py --run runs/<sweep>                 # check a sweep (one run per seed)
    python bench/paper_shape.py --run latest                       # the newest collab-10-1 run or sweep
    python bench/paper_shape.py --scenario scenarios/collab-10-1.yaml   # run it first, then check

One run: exit status 1 when any check fails; Table 5's checks use rows by position (1-12, as in the paper).
A sweep: each Table 5 claim is judged on the paired difference between its rows over the seeds: it holds
when the 95% t-interval lies above the claim's threshold, does not hold when it lies below, and is
undecided otherwise (beside the paper's difference); Tables 1-2 are checked on the means over seeds. Exit
status 1 when a claim does not hold or a Table 1-2 check fails.
"""

from __future__ import annotations

import sys

import pandas as pd
from pick_run import run_to_check  # bench/pick_run.py; it also puts the repo on sys.path

from reports.compare import cells, paired_differences  # noqa: E402
from reports.runs import CELL, Sweep, load_sweep  # noqa: E402
from reports.tables import render_report  # noqa: E402

SMALL_FRACTION = 0.05  # entities below this share (E4's 1%) are reported, not checked, in Tables 1-2


def checks(df: pd.DataFrame, small: set[str]) -> list[tuple[str, bool | None, str]]:
    """(what, passed, figures) for each of the paper's claims we hold the run to.

    Tables 1 and 2 concern an entity with a real share of the data (the paper's have 64k images); for
    the entities in `small` (1% here: about a dozen images) the figures are printed, not checked.
    """
    out: list[tuple[str, bool | None, str]] = []

    def check(what: str, entity: str, ok: bool, figures: str) -> None:
        out.append(
            (
                f"{what.split(':')[0]} {entity}:{what.split(':')[1]}",
                None if entity in small else bool(ok),
                figures,
            )
        )

    t1 = df[df.table == "table1"].pivot_table(index="entity", columns=["label", "metric"], values="value")
    for entity, row in t1.iterrows():
        # "functionally equivalent" (the paper): neither worse nor better; a DPM whose CE term teaches C
        # the owner's images scores above the original features, and the pool then has less to teach
        orig, pois = row[("original", "top1")], row[("poisoned", "top1")]
        check(
            "Table 1: top-1 poisoned within 3 points of original",
            entity,
            abs(orig - pois) <= 3,
            f"poisoned {pois:.1f}, original {orig:.1f}",
        )
    t2 = df[df.table == "table2"].pivot_table(index="entity", columns=["label", "metric"], values="value")
    for entity, row in t2.iterrows():
        orig, pois = row[("original", "ssim")], row[("poisoned", "ssim")]
        check("Table 2: SSIM from original >= 0.5", entity, orig >= 0.5, f"{orig:.3f}")
        check("Table 2: SSIM from poisoned <= 0.1", entity, pois <= 0.1, f"{pois:.3f}")
    t5 = df[(df.table == "table5") & (df.metric == "top1")].set_index("row")["value"]
    if len(t5) >= 12:
        r = {int(k): float(v) for k, v in t5.items()}
        mean13 = (r[1] + r[2] + r[3]) / 3
        out += [
            (
                "Table 5: row 4 at least 10 below the mean of rows 1-3",
                r[4] <= mean13 - 10,
                f"{r[4]:.1f} vs {mean13:.1f}",
            ),
            (
                "Table 5: row 5 the best",
                r[5] >= max(v for k, v in r.items() if k != 5),
                f"{r[5]:.1f} vs {max(v for k, v in r.items() if k != 5):.1f}",
            ),
            (
                "Table 5: row 7 at least 5 above rows 1 and 2",
                r[7] >= max(r[1], r[2]) + 5,
                f"{r[7]:.1f} vs {max(r[1], r[2]):.1f}",
            ),
            (
                "Table 5: row 8 at least 5 above rows 1 and 2",
                r[8] >= max(r[1], r[2]) + 5,
                f"{r[8]:.1f} vs {max(r[1], r[2]):.1f}",
            ),
            ("Table 5: row 6 at least row 7 minus 1", r[6] >= r[7] - 1, f"{r[6]:.1f} vs {r[7]:.1f}"),
            ("Table 5: row 12 at least 15 above row 4", r[12] >= r[4] + 15, f"{r[12]:.1f} vs {r[4]:.1f}"),
        ]
    else:
        out.append(("Table 5: all 12 rows present", False, f"{len(t5)} rows"))
    return out


def small_entities(scenario: dict) -> set[str]:
    return {e["name"] for e in scenario.get("entities") or [] if e["fraction"] < SMALL_FRACTION}


def sweep_checks(sweep: Sweep) -> tuple[list[tuple[str, bool | None, str]], list[tuple[str, str, str]]]:
    """Tables 1-2 checked on the means over the runs; each Table 5 claim judged on its paired difference.

    Returns (Table 1-2 checks as checks() gives them, [(claim, verdict, figures)]).
    """
    means = cells(sweep.runs)[[*CELL, "mean"]].rename(columns={"mean": "value"})
    means = means[means.table.isin(["table1", "table2"])]
    table12 = checks(means, small_entities(sweep.runs[0].scenario))
    table12 = [c for c in table12 if not c[0].startswith("Table 5")]
    claims = []
    for d in paired_differences(sweep.runs, "top1"):
        figures = (
            f"{d.mean:.1f} (95% interval {d.ci_low:.1f} to {d.ci_high:.1f}, n={d.n}) vs threshold "
            f"{d.claim.threshold:g}; paper {d.paper:.1f}"
        )
        what = f"Table 5: {d.claim.name} > {d.claim.threshold:g} ({d.claim.text})"
        claims.append((what, d.verdict, figures))
    return table12, claims


def main(argv: list[str] | None = None) -> int:
    path = run_to_check(__doc__, "collab-10-1", argv)
    try:
        sweep = load_sweep(path)
    except (FileNotFoundError, ValueError) as err:
        print(err, file=sys.stderr)
        return 2
    if len(sweep.runs) > 1:
        return judge_sweep(sweep)
    run = sweep.runs[0]
    print(render_report(run.path))
    print("\nChecks against the paper's shape:")
    results = checks(run.records, small_entities(run.scenario))
    for what, ok, figures in results:
        mark = "info" if ok is None else "pass" if ok else "FAIL"
        print(f"  [{mark}] {what}: {figures}")
    failed = sum(p is False for _, p, _ in results)
    passed = sum(p is True for _, p, _ in results)
    print(f"\n{passed} passed, {failed} failed")
    return 1 if failed else 0


def judge_sweep(sweep: Sweep) -> int:
    seeds = ", ".join(str(r.seed) for r in sweep.runs)
    print(f"# {sweep.runs[0].name}: {len(sweep.runs)} runs (seeds {seeds})  {sweep.path}")
    table12, claims = sweep_checks(sweep)
    print("\nTables 1-2, on the means over the runs:")
    for what, ok, figures in table12:
        mark = "info" if ok is None else "pass" if ok else "FAIL"
        print(f"  [{mark}] {what}: {figures}")
    print("\nTable 5 claims, on the paired differences between rows (top-1, points):")
    for what, verdict, figures in claims:
        print(f"  [{verdict}] {what}: {figures}")
    if not claims:
        print("  (no claim's rows are in these runs)")
    failed = sum(ok is False for _, ok, _ in table12) + sum(v == "does not hold" for _, v, _ in claims)
    counts = {v: sum(c[1] == v for c in claims) for v in ("holds", "does not hold", "undecided")}
    print(
        f"\nTables 1-2: {sum(ok is True for _, ok, _ in table12)} passed, "
        f"{sum(ok is False for _, ok, _ in table12)} failed; Table 5 claims: "
        + ", ".join(f"{n} {v}" for v, n in counts.items())
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
