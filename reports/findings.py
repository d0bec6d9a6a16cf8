"""What a run shows, in a few questions, each answered by a measure beside the one it is set against.

- Does R rebuild the test images from their original features (Table 2)?
- Does each entity's DPM stop R (R from poisoned features against R from original ones)?
- Does an attacker that adapts get through (the best attack other than the paper's own shared R, on the
  victim's poisoned pool against its original features)?
- Do the keys decode the ambiguated codes better than a random guess of the supports?
- Does the pool lift an entity (a Table 5 row with pooled poisoned features against the entity's own
  images), and what does poisoning cost (the same row with original features instead)?

Per run, then over runs: the mean and 95% t-interval of each measure and of the paired difference. One run
has no interval, and the answers are measurements, not verdicts. Reads records only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from reports.attacks import SHARDS, parse_label
from reports.compare import t_interval
from reports.runs import Run

PAPER_ATTACK = "shared-reconstructor"  # the paper's own test: the R every DPM was trained against
Value = Callable[[Run], float | None]


@dataclass(frozen=True)
class Finding:
    what: str  # the question it answers, in a few words
    measure: str  # what was measured
    against: str  # what it is set against ("" for a measure alone)
    ours: list[float]  # per run
    reference: list[float]  # per run, paired with ours ([] for a measure alone)

    @property
    def differences(self) -> list[float]:
        return [a - b for a, b in zip(self.ours, self.reference, strict=True)] if self.reference else []


def _value(
    run: Run, table: str, label: str, metric: str, entity: str | None = None, row: int | None = None
) -> float | None:
    rec = run.records
    sub = rec[(rec.table == table) & (rec.label == label) & (rec.metric == metric)]
    if entity is not None:
        sub = sub[sub.entity == entity]
    if row is not None:
        sub = sub[sub.row == row]
    values = [float(v) for v in sub.value if not math.isnan(float(v))]
    return values[0] if values else None


def _cell(table: str, label: str, metric: str, entity: str | None = None, row: int | None = None) -> Value:
    """A run's value of one record (None where the run has none)."""
    return lambda run: _value(run, table, label, metric, entity, row)


def _paired(runs: list[Run], ours: Value, reference: Value | None) -> tuple[list[float], list[float]]:
    """Per run, the two values; a run missing either is left out of both."""
    a, b = [], []
    for run in runs:
        x = ours(run)
        y = reference(run) if reference is not None else 0.0
        if x is not None and y is not None:
            a.append(x)
            b.append(y)
    return a, (b if reference is not None else [])


def _entities(runs: list[Run]) -> list[str]:
    return [str(e["name"]) for e in runs[0].scenario.get("entities") or []]


def _deep_poisoning(runs: list[Run]) -> list[Finding]:
    out: list[Finding] = []
    entities = _entities(runs)
    if not entities:
        return out
    first = entities[0]  # R, F and the test images are shared: the original features' SSIM is one number
    ours, _ = _paired(runs, _cell("table2", "original", "ssim", first), None)
    if ours:
        out.append(
            Finding(
                "Does R rebuild images from their features?", "SSIM of R(F(x)), test images", "", ours, []
            )
        )
    for e in entities:
        a, b = _paired(
            runs,
            _cell("table2", "poisoned", "ssim", e),
            _cell("table2", "original", "ssim", e),
        )
        if a:
            out.append(Finding(f"Does {e}'s DPM stop R?", f"SSIM of R(P(F(x))), {e}'s DPM", "R(F(x))", a, b))
    return out


def _adaptive_attacks(runs: list[Run]) -> list[Finding]:
    """Per victim, the attack (not the paper's shared R) with the highest mean SSIM on the poisoned pool."""
    rec = pd.concat([r.records for r in runs])
    ssim = rec[(rec.table == "attack") & (rec.metric == "ssim") & rec.entity.isin(_entities(runs))]
    out = []
    for victim, sub in ssim.groupby("entity", sort=False):
        labels = [lab for lab in dict.fromkeys(sub.label) if parse_label(str(lab)).on == "protected"]
        adaptive = [lab for lab in labels if not parse_label(str(lab)).attack.startswith(PAPER_ATTACK)]
        if not adaptive:
            continue
        best = max(adaptive, key=lambda lab: float(sub[sub.label == lab].value.mean()))
        name = parse_label(str(best)).name
        unprotected = str(best).removesuffix(" on protected") + " on unprotected"
        a, b = _paired(
            runs,
            _cell("attack", str(best), "ssim", str(victim)),
            _cell("attack", unprotected, "ssim", str(victim)),
        )
        if a:
            out.append(
                Finding(
                    f"Does an attacker that adapts get through {victim}'s DPM?",
                    f"SSIM, {name}, {SHARDS['protected']} pool",
                    f"{SHARDS['unprotected']} features",
                    a,
                    b,
                )
            )
    return out


def _codes(runs: list[Run]) -> list[Finding]:
    k = (runs[0].scenario.get("data_owner") or {}).get("k")
    label = f"authorised k={k}"
    a, b = _paired(
        runs,
        _cell("ambiguation", label, "ssim_mean"),
        _cell("ambiguation", "random guess", "ssim_mean"),
    )
    if not a:
        return []
    return [
        Finding(
            "Do the keys decode better than a guess?",
            f"SSIM decoded with the keys (k={k})",
            "with a random guess of the supports",
            a,
            b,
        )
    ]


def _collaboration(runs: list[Run]) -> list[Finding]:
    rows: list[dict[str, Any]] = list(runs[0].scenario.get("collaboration") or [])
    where = {(str(r["entity"]), tuple(r["data"])): i for i, r in enumerate(rows, start=1)}
    out = []
    for i, row in enumerate(rows, start=1):
        entity, data = str(row["entity"]), list(row["data"])
        poisoned = [d for d in data if str(d).startswith("poisoned:")]
        if not poisoned:
            continue
        alone = where.get((entity, ("own:raw",)))
        original = where.get((entity, tuple(str(d).replace("poisoned:", "original:") for d in data)))
        for base, what in (
            (alone, f"Does the pool lift {entity}?"),
            (original, f"What does poisoning cost {entity}?"),
        ):
            if base is None:
                continue
            a, b = _paired(
                runs,
                _cell("table5", str(row["label"]), "top1", row=i),
                _cell("table5", str(rows[base - 1]["label"]), "top1", row=base),
            )
            if a:
                out.append(
                    Finding(
                        what,
                        f"top-1 %, row {i} ({row['label']})",
                        f"row {base} ({rows[base - 1]['label']})",
                        a,
                        b,
                    )
                )
    return out


def findings(runs: list[Run]) -> list[Finding]:
    """The run's findings, in the order a reader meets the methods."""
    if not runs:
        return []
    return [*_deep_poisoning(runs), *_adaptive_attacks(runs), *_codes(runs), *_collaboration(runs)]


def summary(f: Finding) -> dict[str, float | int | str]:
    """Numbers for a table line: n, the measure's and reference's means and the paired difference's
    mean and 95% interval (NaN where one run leaves no interval)."""
    n, mean, _, lo, hi = t_interval(f.ours)
    _, ref, _, _, _ = t_interval(f.reference)  # empty for a measure alone: NaN
    _, diff, _, dlo, dhi = t_interval(f.differences)
    return {
        "question": f.what,
        "measure": f.measure,
        "n": n,
        "ours": mean,
        "ours_lo": lo,
        "ours_hi": hi,
        "against": f.against,
        "reference": ref,
        "difference": diff,
        "difference_lo": dlo,
        "difference_hi": dhi,
    }
