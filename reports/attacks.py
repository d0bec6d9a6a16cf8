"""The attack records as the report reads them: who attacked what, how far each attack got, the best attack
against each protection beside that protection's utility; and the run's image grids (the referee's, each
entity's Table 2, the data owner's codes).

An attack record (simulator/stages/score.py) is labelled "<adversary>: <attack> on <features>", its entity
the victim: an entity for the pooled features, "codes" for the published codes. Reads files only.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.compare import t_interval
from reports.runs import Run

CODES = "codes"  # the victim of an attack on the published codes
# The label's words for the pool shard an attack read, and the shard's name in the figure names and in
# Table 1 (simulator/stages/attack.py KINDS, read here without importing the simulation).
SHARDS = {"unprotected": "original", "protected": "poisoned"}
ON_CODES = "ambiguated codes"
LABEL = re.compile(r"^(?P<adversary>[^:]+): (?P<attack>.+) on (?P<on>.+)$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Attack:
    adversary: str
    attack: str  # with its variant: "magnitude (largest)"
    on: str  # "protected", "unprotected", "ambiguated codes"; "" where the label does not say

    @property
    def name(self) -> str:
        return f"{self.adversary}: {self.attack}" if self.adversary else self.attack


def parse_label(label: str) -> Attack:
    m = LABEL.match(label)
    return Attack(m["adversary"], m["attack"], m["on"]) if m else Attack("", label, "")


def score_metric(victim: str) -> str:
    """How far an attack got: SSIM of the images it rebuilt, or the share of the codes' support it found."""
    return "support_recovery" if victim == CODES else "ssim"


def scores(cells: pd.DataFrame) -> pd.DataFrame:
    """One line per (attack, victim): its score metric's mean and 95% interval over runs, and for an attack
    on protected features, the same attack's mean on the victim's unprotected ones (`unprotected`).

    cells: the "attack" cells of compare.cells (label, entity, metric, mean, ci_low, ci_high).
    """
    wanted = cells[cells.metric == cells.entity.map(score_metric)]
    parsed = [parse_label(str(lab)) for lab in wanted.label]
    out = pd.DataFrame(
        {
            "attack": [a.name for a in parsed],
            "on": [a.on for a in parsed],
            "victim": wanted.entity.to_numpy(),
            "metric": wanted.metric.to_numpy(),
            "mean": wanted["mean"].to_numpy(dtype=float),
            "lo": wanted.ci_low.to_numpy(dtype=float),
            "hi": wanted.ci_high.to_numpy(dtype=float),
        }
    )
    base = {
        (a, v): m
        for a, on, v, m in zip(out.attack, out.on, out.victim, out["mean"], strict=True)
        if on == "unprotected"
    }
    out["unprotected"] = [
        base.get((a, v)) if on == "protected" else None
        for a, on, v in zip(out.attack, out.on, out.victim, strict=True)
    ]
    out = out[out.on != "unprotected"]
    return out.sort_values(["attack", "victim"], kind="stable", ignore_index=True)


def chance(cells: pd.DataFrame) -> float | None:
    """The chance floor on the codes: what a random guess of the support recovers (None if not run)."""
    sub = cells[(cells.metric == "support_recovery") & cells.label.str.contains(": random-guess on ")]
    return float(sub["mean"].iloc[0]) if len(sub) else None


def privacy_utility(runs: list[Run]) -> pd.DataFrame:
    """One line per (victim, protection): the best attack's SSIM on it (per run the max over the attacks on
    those features, then mean and 95% interval over runs) and C's top-1 on the same features (Table 1).
    Victims without both are left out."""
    best: dict[tuple[str, str], list[float]] = {}
    top1: dict[tuple[str, str], list[float]] = {}
    names: dict[tuple[str, str], Counter[str]] = {}  # which attack was best, in how many runs
    for run in runs:
        rec = run.records
        ssim = rec[
            (rec.table == "attack") & (rec.metric == "ssim") & (rec.entity != CODES) & rec.value.notna()
        ]
        for on, shard in SHARDS.items():
            on_shard = ssim[np.array([parse_label(lab).on == on for lab in ssim.label], dtype=bool)]
            for victim, sub in on_shard.groupby("entity", sort=False):
                key = (str(victim), on)
                winner = sub.loc[sub.value.idxmax()]
                best.setdefault(key, []).append(float(winner.value))
                names.setdefault(key, Counter())[parse_label(str(winner.label)).name] += 1
            t1 = rec[(rec.table == "table1") & (rec.metric == "top1") & (rec.label == shard)]
            for victim, value in zip(t1.entity, t1.value, strict=True):
                top1.setdefault((str(victim), on), []).append(float(value))
    lines: list[dict[str, Any]] = []
    for key in best:
        if key not in top1:
            continue
        n, x, _, x_lo, x_hi = t_interval(best[key])
        _, y, _, y_lo, y_hi = t_interval(top1[key])
        counts = names[key]
        lines.append(
            {
                "victim": key[0],
                "protection": key[1],
                "best attack": ", ".join(
                    f"{a} ({c}/{n})" if len(counts) > 1 else a for a, c in counts.items()
                ),
                "n": n,
                "ssim": x,
                "ssim_lo": x_lo,
                "ssim_hi": x_hi,
                "top1": y,
                "top1_lo": y_lo,
                "top1_hi": y_hi,
            }
        )
    # per victim, unprotected then protected
    return (
        pd.DataFrame(lines).sort_values("victim", kind="stable", ignore_index=True)
        if lines
        else pd.DataFrame()
    )


@dataclass(frozen=True)
class Grid:
    """One PNG of figures/: an entity's Table 2 grid, the data owner's codes grid, or the referee's grid
    of a victim's true images above an attack's output."""

    path: Path
    kind: str  # "table2", "codes" or "attack"
    party: str  # the entity (table2), the data owner (codes), the attack's victim ("codes": the codes)
    width: int  # pixels
    adversary: str = ""  # the rest: an attack grid's only
    attack: str = ""
    shard: str = ""  # "poisoned", "original" or "codes"
    variant: str = ""

    @property
    def method(self) -> str:
        return "ambiguated codes" if CODES in (self.kind, self.shard) else "Deep Poisoning"

    @property
    def caption(self) -> str:
        if self.kind == "table2":
            return f"{self.party}: test images; R from original features; R from DPM-poisoned features"
        if self.kind == "codes":
            return (
                f"{self.party}: originals; authorised; ambiguated as published; random guess; "
                "JPEG at the matched rate"
            )
        features = {
            "poisoned": f"{self.party}'s DPM-poisoned features (protected)",
            "original": f"{self.party}'s original features (unprotected)",
        }.get(self.shard, "the published ambiguated codes")
        variant = f" ({self.variant})" if self.variant else ""
        return f"{self.adversary}: {self.attack}{variant} on {features}"


def png_width(path: Path) -> int | None:
    """The width of a PNG from its header; None when the file is not a PNG."""
    with path.open("rb") as f:
        head = f.read(24)
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return int(struct.unpack(">I", head[16:20])[0])


def grids(run: Run) -> list[Grid]:
    """A run's grids, by method: each entity's Table 2 grid (table2-<entity>.png, poison.py) and the data
    owner's codes grid (codes-<owner>.png, codes.py) first, then the referee's, named
    attack-<adversary>-<attack>-<victim>-<shard>[-<variant>].png (score.py), by adversary, attack and
    victim, the unprotected beside the protected. Names that do not parse, and files that are not PNGs,
    are left out."""
    figures = run.path / "figures"
    entities = [str(e.get("name")) for e in run.scenario.get("entities") or []]
    owner = run.scenario.get("data_owner") or {}
    own = [("table2", e) for e in entities] + ([(CODES, str(owner["name"]))] if "name" in owner else [])
    out = []
    for kind, party in own:
        path = figures / f"{kind}-{party}.png"
        width = png_width(path) if path.is_file() else None
        if width:
            out.append(Grid(path, kind, party, width))
    adversaries = [str(a.get("name")) for a in run.scenario.get("adversaries") or []]
    if adversaries:
        alternatives = "|".join(re.escape(n) for n in sorted(adversaries, key=len, reverse=True))
        pattern = re.compile(
            rf"^attack-(?P<adversary>{alternatives})-(?P<attack>.+)-"
            rf"(?P<victim>{'|'.join(re.escape(v) for v in [*entities, CODES])})-"
            r"(?P<shard>poisoned|original|codes)(?:-(?P<variant>.+))?\.png$"
        )
        for path in sorted(figures.glob("attack-*.png")):
            m = pattern.match(path.name)
            width = png_width(path)
            if m and width:
                adversary, attack, shard, variant = m.group("adversary", "attack", "shard", "variant")
                out.append(Grid(path, "attack", m["victim"], width, adversary, attack, shard, variant or ""))
    kinds = {"table2": 0, CODES: 0, "attack": 1}
    shards = {"": 0, "poisoned": 0, "original": 1, "codes": 2}
    return sorted(
        out,
        key=lambda g: (g.method, kinds[g.kind], g.adversary, g.attack, g.party, g.variant, shards[g.shard]),
    )
