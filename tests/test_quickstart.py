"""The quickstart shows the phenomena, not the plumbing (slow: about four minutes on 2 cores).

    python -m pytest -m slow tests/test_quickstart.py

Its report's first section (reports.findings) answers each question; this checks the answers of one run
against what the quickstart is for: R rebuilds recognisable images from original features, the DPMs stop
R, a retrained reconstructor gets through them, the keys decode far better than a guess, and the pool
lifts the entity with 1% of the data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, Veil

from reports.findings import findings, summary
from reports.runs import load_run

pytestmark = pytest.mark.slow


def test_the_quickstart_shows_what_veil_finds(tmp_path: Path) -> None:
    run = Veil([str(ROOT / "scenarios" / "quickstart.yaml"), "--out", str(tmp_path)], tmp_path / "log")
    assert run.wait(900) == 0, run.output[-3000:]
    (root,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    got = {f.what: summary(f) for f in findings([load_run(root)])}

    assert got["Does R rebuild images from their features?"]["ours"] >= 0.5
    for e in ("E1", "E2", "E3"):
        assert got[f"Does {e}'s DPM stop R?"]["ours"] < 0.15, e
    for victim in ("E1", "E2"):
        adaptive = got[f"Does an attacker that adapts get through {victim}'s DPM?"]
        assert adaptive["ours"] >= 0.3 and abs(float(adaptive["difference"])) < 0.1, adaptive
    assert got["Do the keys decode better than a guess?"]["difference"] > 0.15
    assert got["Does the pool lift E4?"]["difference"] > 5
