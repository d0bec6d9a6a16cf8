"""bench/paper_shape.py's checks: each claim passes and fails where the issue's thresholds say."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from paper_shape import checks  # noqa: E402

# Table 5 top-1 by row, shaped like the paper (rows 7/8 >= rows 1/2 + 5, row 5 the best, ...)
GOOD_ROWS = {1: 55, 2: 56, 3: 57, 4: 25, 5: 75, 6: 66, 7: 64, 8: 63, 9: 65, 10: 66, 11: 60, 12: 62}


def record(table: str, label: str, entity: str, metric: str, value: float, row: int | None = None) -> dict:
    return {"table": table, "row": row, "label": label, "entity": entity, "metric": metric, "value": value}


def frame(
    rows: dict[int, float], top1: dict[str, tuple[float, float]], ssim: tuple[float, float]
) -> pd.DataFrame:
    recs = [record("table5", f"row {r}", "E1", "top1", v, r) for r, v in rows.items()]
    for entity, pair in top1.items():
        for label, a, b in zip(("original", "poisoned"), pair, ssim, strict=True):
            recs += [record("table1", label, entity, "top1", a), record("table2", label, entity, "ssim", b)]
    return pd.DataFrame(recs)


def verdicts(df: pd.DataFrame, small: set[str] = frozenset()) -> dict[str, bool | None]:
    return {what: ok for what, ok, _ in checks(df, set(small))}


def test_a_run_with_the_papers_shape_passes_every_check() -> None:
    got = verdicts(frame(GOOD_ROWS, {"E1": (55, 54), "E2": (55, 57)}, (0.6, 0.02)))
    assert len(got) == 2 * 3 + 6 and all(got.values()), got


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({7: 60.9}, "row 7 at least 5 above rows 1 and 2"),  # 56 + 5 = 61
        ({8: 60.9}, "row 8 at least 5 above rows 1 and 2"),
        ({6: 62.9}, "row 6 at least row 7 minus 1"),
        ({5: 65.5}, "row 5 the best"),
        ({4: 47}, "row 4 at least 10 below the mean of rows 1-3"),
        ({12: 39.9}, "row 12 at least 15 above row 4"),
    ],
)
def test_each_table5_claim_fails_on_its_own(change: dict[int, float], failing: str) -> None:
    got = verdicts(frame(GOOD_ROWS | change, {"E1": (55, 54)}, (0.6, 0.02)))
    assert [what for what, ok in got.items() if not ok] == [f"Table 5: {failing}"]


def test_table1_is_within_3_points_both_ways_and_small_entities_are_only_reported() -> None:
    """A DPM that makes C better than on the original features is not 'functionally equivalent'."""
    top1 = {"E1": (55, 51.9), "E2": (55, 58.1), "E4": (55, 70)}
    got = verdicts(frame(GOOD_ROWS, top1, (0.6, 0.02)), {"E4"})
    assert got["Table 1 E1: top-1 poisoned within 3 points of original"] is False
    assert got["Table 1 E2: top-1 poisoned within 3 points of original"] is False
    assert got["Table 1 E4: top-1 poisoned within 3 points of original"] is None


def test_table2_needs_a_good_inverse_and_a_poisoned_one_that_fails() -> None:
    got = verdicts(frame(GOOD_ROWS, {"E1": (55, 55)}, (0.49, 0.11)))
    assert got["Table 2 E1: SSIM from original >= 0.5"] is False
    assert got["Table 2 E1: SSIM from poisoned <= 0.1"] is False


def test_every_bench_script_imports_against_the_current_code() -> None:
    """bench/ is not imported by the package, so a rename elsewhere leaves a script stale until run."""
    import subprocess

    bench = Path(__file__).resolve().parents[1] / "bench"
    names = sorted(p.stem for p in bench.glob("*.py"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run(
        [sys.executable, "-c", code, *names], cwd=bench, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
