"""Does a collab-10-1 run keep the shape of the Deep Poisoning paper? Prints the tables and checks.

    python bench/paper_shape.py --run runs/collab-10-1-<time>     # check a finished run
    python bench/paper_shape.py --run latest                       # the newest collab-10-1 run in runs/
    python bench/paper_shape.py --scenario scenarios/collab-10-1.yaml   # run it first, then check

Exit status 1 when any check fails. Table 5's checks use rows by position (1-12, as in the paper).
"""

from __future__ import annotations

import sys

import pandas as pd
import yaml
from runs import run_to_check  # bench/runs.py; it also puts the repo on sys.path

from reports.tables import records, render_report  # noqa: E402

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
            f"{orig:.1f} vs {pois:.1f}",
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


def main(argv: list[str] | None = None) -> int:
    run_dir = run_to_check(__doc__, "collab-10-1", argv)
    print(render_report(run_dir))
    print("\nChecks against the paper's shape:")
    scenario = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    small = {e["name"] for e in scenario["entities"] if e["fraction"] < SMALL_FRACTION}
    results = checks(records(run_dir), small)
    for what, ok, figures in results:
        mark = "info" if ok is None else "pass" if ok else "FAIL"
        print(f"  [{mark}] {what}: {figures}")
    failed = sum(p is False for _, p, _ in results)
    passed = sum(p is True for _, p, _ in results)
    print(f"\n{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
