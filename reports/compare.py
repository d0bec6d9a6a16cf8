"""Runs of one scenario compared: each cell as mean, SD and a 95% Student-t interval over seeds; the paper's
Table 5 claims as paired differences between rows; curves against a varied parameter.

Reads run directories only (reports.runs); never imports torch or the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from reports.formats import MAX_MAGNITUDE
from reports.paper import CLAIMS, PAPER_TABLE5, Claim, scenario_to_paper_rows
from reports.runs import CELL, Run, Sweep, dotted, field_value

CONFIDENCE = 0.95
# Manifest fields that may change results; a difference is warned about, not refused.
# The hardware section's fields beyond the machine are what decide one seed's numbers on a machine:
# torch's threads, the CPU's SIMD kernels, CUDA/cuDNN, and whether deterministic algorithms were on.
ENVIRONMENT = (
    ("versions", "torch"),
    ("hardware", "machine"),
    ("hardware", "cuda"),
    ("nodes", "torch_threads"),  # what each party's node used (the driver's own count says little)
    ("nodes", "torch_interop_threads"),
    ("hardware", "cpu_capability"),
    ("hardware", "cuda_version"),
    ("hardware", "cudnn_version"),
    ("hardware", "deterministic_algorithms"),
    ("hardware", "cudnn_deterministic"),
    ("hardware", "cudnn_benchmark"),
)


class NotComparable(ValueError):
    """Runs whose resolved scenarios differ in more than the seed (and the sweep's varied field)."""

    def __init__(self, fields: list[str], detail: str):
        self.fields = fields
        super().__init__(detail)


def is_seed_field(path: str) -> bool:
    return path == "seed" or path.endswith(".seed")


def ignored_fields(sweep: Sweep, vary: list[str] | None = None) -> set[str]:
    return {"seed"} | set(sweep.varied) | set(vary or ())


def _ignored(path: str, ignore: set[str]) -> bool:
    return any(path == i or path.startswith(f"{i}.") or path.startswith(f"{i}[") for i in ignore)


def differing_fields(runs: list[Run], ignore: set[str]) -> list[str]:
    """Dotted paths of the resolved scenarios that are not the same in every run, `ignore` left out."""
    flats = [dotted(r.scenario) for r in runs]
    keys = sorted({k for f in flats for k in f})
    missing = object()
    return [k for k in keys if not _ignored(k, ignore) and len({repr(f.get(k, missing)) for f in flats}) > 1]


def check_comparable(sweep: Sweep, vary: list[str] | None = None) -> None:
    """Raise NotComparable naming every differing field (seed and the varied fields ignored)."""
    if not sweep.runs:
        raise NotComparable([], "no runs to compare")
    check_distinct(sweep.runs)
    fields = differing_fields(sweep.runs, ignored_fields(sweep, vary))
    if fields:
        lines = []
        for k in fields:
            values = ", ".join(f"{r.path.name}: {field_value(r.scenario, k)!r}" for r in sweep.runs)
            lines.append(f"  {k}  ({values})")
        raise NotComparable(
            fields,
            "these runs cannot be compared: their resolved scenarios differ in "
            f"{', '.join(fields)} (not only in the seed)\n" + "\n".join(lines),
        )


def suspect_warnings(runs: list[Run]) -> list[str]:
    """One line per run holding values that are not finite, or too large to be a measure (NaN, inf,
    1e308: their sums and means overflow to inf), each such record named with its value as stored."""
    out = []
    for r in runs:
        if r.suspect:
            more = f" and {len(r.suspect) - 10} more" if len(r.suspect) > 10 else ""
            out.append(
                f"{r.path.name}: {len(r.suspect)} recorded values are not finite numbers of a measure's "
                f"size (NaN, inf, or beyond {MAX_MAGNITUDE:g}): {'; '.join(r.suspect[:10])}{more}. The "
                "cells, means and differences computed from them are not measures (a sum of them can show "
                "as inf)."
            )
    return out


def check_distinct(runs: list[Run]) -> None:
    """NotComparable when one run directory is given twice (by two paths, a link, or a sweep and one of
    its own runs): it would count as two seeds."""
    seen: dict[Path, Path] = {}
    for run in runs:
        real = run.path.resolve()
        if real in seen:
            raise NotComparable(
                [],
                f"{run.path} and {seen[real]} are the same run directory ({real}); each run counts once: "
                "give each run (or sweep) once",
            )
        seen[real] = run.path


def environment_warnings(runs: list[Run]) -> list[str]:
    """One line per manifest field (torch version, machine, CUDA, threads, CPU capability, cuDNN,
    deterministic settings) that differs between runs."""
    out = []
    for section, key in ENVIRONMENT:
        seen: dict[str, list[str]] = {}
        for r in runs:
            found = r.manifest.get(section) or {}
            if section == "nodes":  # one entry per party: the values the parties used
                value: Any = sorted({repr((n or {}).get(key)) for n in found.values()}) if found else None
            else:
                value = found.get(key)
            seen.setdefault(repr(value), []).append(r.path.name)
        if len(seen) > 1:
            parts = "; ".join(f"{v} in {', '.join(names)}" for v, names in seen.items())
            out.append(f"{section}.{key} differs between runs ({parts}): results may differ for that reason")
    return out


def t_interval(values: np.ndarray | list[float]) -> tuple[int, float, float, float, float]:
    """(n, mean, SD, lower, upper): the 95% Student-t interval of the mean; SD and bounds NaN for n < 2."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return n, mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return n, mean, sd, mean - half, mean + half


def _key(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["row"] = out["row"].astype("Int64")
    return out


def cells(runs: list[Run]) -> pd.DataFrame:
    """One line per cell (table, row, label, entity, metric): n, mean, sd, ci_low, ci_high, and the value of
    each run in column `run:<name>`."""
    frames = []
    for r in runs:
        df = _key(r.records)[[*CELL, "value"]].drop_duplicates(CELL, keep="last")
        frames.append(df.assign(run=r.path.name))
    data = pd.concat(frames, ignore_index=True)
    wide = data.pivot_table(
        index=CELL, columns="run", values="value", aggfunc="first", dropna=False, sort=False
    )
    wide = wide.dropna(how="all")
    order = list(dict.fromkeys(r.path.name for r in runs))
    wide = wide[[c for c in order if c in wide.columns]]
    summary = [t_interval(list(row)) for row in wide.to_numpy()]
    out = pd.DataFrame(summary, columns=["n", "mean", "sd", "ci_low", "ci_high"], index=wide.index)
    out = pd.concat([out, wide.add_prefix("run:")], axis=1)
    return out.reset_index()


# What a claim's verdict is with one run: a difference, but no interval to judge it by.
ONE_RUN = "one run: no interval (run with --seeds 0-4 for one)"


@dataclass(frozen=True)
class Difference:
    """A claim's paired difference over runs: per run, then n, mean, SD and the 95% t-interval."""

    claim: Claim
    metric: str
    ours_rows: tuple[tuple[int, ...], tuple[int, ...]]  # our row numbers for plus, minus
    per_run: list[float]
    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float

    @property
    def paper(self) -> float:
        return self.claim.paper(self.metric)

    @property
    def judged(self) -> bool:
        """The paper states its claims on top-1; other metrics' differences are shown, not judged."""
        return self.metric == "top1"

    @property
    def verdict(self) -> str:
        """'holds' (interval above the threshold), 'does not hold' (below), 'undecided', or ONE_RUN."""
        if not self.judged:
            return "not judged (the claims are on top-1)"
        if self.n < 2:  # one draw decides nothing either way: say how to get an interval instead
            return ONE_RUN
        if self.ci_low > self.claim.threshold:
            return "holds"
        if self.ci_high < self.claim.threshold:
            return "does not hold"
        return "undecided"


def table5_values(run: Run, metric: str = "top1") -> dict[int, float]:
    """Our row number -> value of `metric` in a run's Table 5."""
    df = run.records
    sub = df[(df.table == "table5") & (df.metric == metric) & df.row.notna()]
    return {int(r): float(v) for r, v in zip(sub.row, sub.value, strict=True)}


def paired_differences(runs: list[Run], metric: str = "top1") -> list[Difference]:
    """The paper's Table 5 claims whose rows all exist in these runs (matched by entity and data mix)."""
    if not runs:
        return []
    to_paper = scenario_to_paper_rows(runs[0].scenario)
    ours = {p: o for o, p in to_paper.items()}
    values = [table5_values(r, metric) for r in runs]
    out = []
    for claim in CLAIMS:
        rows = claim.plus + claim.minus
        if not all(p in ours for p in rows):
            continue
        plus = tuple(ours[p] for p in claim.plus)
        minus = tuple(ours[p] for p in claim.minus)
        per_run = []
        for v in values:
            if all(r in v for r in plus + minus):
                per_run.append(float(np.mean([v[r] for r in plus]) - np.mean([v[r] for r in minus])))
        if not per_run:
            continue
        n, mean, sd, lo, hi = t_interval(per_run)
        out.append(Difference(claim, metric, (plus, minus), per_run, n, mean, sd, lo, hi))
    return out


def differences_frame(diffs: list[Difference]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "claim": d.claim.name,
                "what": d.claim.text,
                "our rows": " - ".join(",".join(map(str, side)) for side in d.ours_rows),
                "metric": d.metric,
                "n": d.n,
                "mean": d.mean,
                "sd": d.sd,
                "ci_low": d.ci_low,
                "ci_high": d.ci_high,
                "threshold": d.claim.threshold,
                "verdict": d.verdict,
                "paper": d.paper,
            }
            for d in diffs
        ]
    )


def parameter(sweep: Sweep, vary: list[str] | None = None) -> str | None:
    """The varied field that is not a seed, if any (the first, when several)."""
    fields = [k for k in [*sweep.varied, *(vary or [])] if not is_seed_field(k)]
    return fields[0] if fields else None


def parameter_value(run: Run, path: str, sweep: Sweep) -> Any:
    value = field_value(run.scenario, path)
    if value is None and path in sweep.varied:  # not a scenario field: take sweep.json's list
        names = [r.path.name for r in sweep.runs]
        values = sweep.varied[path]
        if run.path.name in names and len(values) == len(names):
            value = values[names.index(run.path.name)]
    return value


def against_parameter(sweep: Sweep, path: str) -> pd.DataFrame:
    """Each cell's mean (and interval, where a value has several seeds) at each value of the parameter."""
    groups: dict[Any, list[Run]] = {}
    for r in sweep.runs:
        groups.setdefault(repr(parameter_value(r, path, sweep)), []).append(r)
    frames = []
    for runs in groups.values():
        value = parameter_value(runs[0], path, sweep)
        frames.append(cells(runs)[[*CELL, "n", "mean", "sd", "ci_low", "ci_high"]].assign(**{path: value}))
    out = pd.concat(frames, ignore_index=True)
    try:
        out = out.sort_values([*CELL, path], kind="stable")
    except TypeError:
        pass
    return out


# Which cells are drawn against a parameter: (table, metric, one line per)
CURVE_PANELS = (
    ("table5", "top1", "row"),
    ("table1", "top1", "label"),
    ("table2", "ssim", "label"),
    ("ambiguation", "psnr_mean", "label"),
)


def curve_stem(path: str) -> str:
    """The file name stem of the curves against a dotted field: dpm.lambda -> against-dpm-lambda."""
    return "against-" + "".join(c if c.isalnum() else "-" for c in path)


def parameter_plot(curves: pd.DataFrame, path: str, out: Path) -> list[Path]:
    """Curves of the main metrics against the varied parameter; PNG and SVG. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in CURVE_PANELS if ((curves.table == p[0]) & (curves.metric == p[1])).any()]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (table, metric, by) in zip(axes[0], panels, strict=True):
        sub = curves[(curves.table == table) & (curves.metric == metric)]
        if by == "label":  # average the entities of a label (e.g. Table 1's original/poisoned)
            sub = sub.groupby(["label", path], as_index=False, sort=False)["mean"].mean()
        for name, line in sub.groupby(by, sort=False):
            label = f"row {name}: {line.label.iloc[0]}" if by == "row" else str(name)
            ax.plot(line[path], line["mean"], "o-", label=label)
            if "ci_low" in line and line["ci_low"].notna().any():
                ax.fill_between(line[path], line["ci_low"], line["ci_high"], alpha=0.15)
        ax.set_xlabel(path)
        ax.set_ylabel(f"{metric} ({table})")
        ax.set_title(f"{table}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    stem = curve_stem(path)
    files = []
    for ext in ("png", "svg"):
        target = out / f"{stem}.{ext}"
        fig.savefig(target, dpi=100)
        files.append(target)
    plt.close(fig)
    return files


def fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float | np.floating):
        return f"{v:.{digits}g}"
    return str(v)


def render_text(sweep: Sweep, vary: list[str] | None = None, out: Path | None = None) -> str:
    """The text `veil compare` prints (and, for a parameter, the curves it writes under `out`)."""
    runs = sweep.runs
    seeds = ", ".join(str(r.seed) for r in runs)
    count = f"{len(runs)} runs (seeds {seeds})" if len(runs) > 1 else f"one run (seed {seeds})"
    lines = [f"# {runs[0].name}: {count}"]
    lines += [f"warning: {w}" for w in suspect_warnings(runs) + environment_warnings(runs)]
    spread = ["sd", "ci_low", "ci_high"] if len(runs) > 1 else []  # one run: a value, no interval
    param = parameter(sweep, vary)
    if param is None:
        table = cells(runs)
        table = table[~table.metric.str.endswith("_s")]  # wall times are not results
        lines.append(
            f"\nEach cell over {len(runs)} runs: mean, SD and the 95% Student-t interval of the mean"
            if len(runs) > 1
            else "\nOne run: each cell is its value (no SD, no interval; --seeds 0-4 gives them)"
        )
        shown = table[[*CELL, "n", "mean", *spread]].copy()
        if not spread:
            shown = shown.drop(columns=["n"]).rename(columns={"mean": "value"})
        shown["row"] = shown["row"].astype(object).where(shown["row"].notna(), "")
        lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        for metric in ("top1", "top5"):
            diffs = paired_differences(runs, metric)
            if diffs:
                frame = differences_frame(diffs).drop(columns=["metric", "what"])
                if not spread:
                    frame = frame.drop(columns=["n", "sd", "ci_low", "ci_high"])
                    frame = frame.rename(columns={"mean": "value"})
                lines.append(
                    f"\nTable 5 paired differences ({metric}, points), paper rows; 'our rows' are this "
                    "scenario's row numbers"
                )
                lines.append(frame.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    else:
        curves = against_parameter(sweep, param)
        curves = curves[~curves.metric.str.endswith("_s")]
        wide = curves.pivot_table(index=CELL, columns=param, values="mean", aggfunc="first", sort=False)
        lines.append(f"\nEach cell against {param} (mean over the runs at each value)")
        lines.append(wide.reset_index().to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        if out is not None:
            files = parameter_plot(curves, param, out)
            curves.to_csv(out / f"{curve_stem(param)}.csv", index=False)
            lines.append(f"\ncurves: {', '.join(str(f) for f in files)}")
    return "\n".join(lines)


def paper_table5_value(row: int, metric: str) -> float:
    return float(getattr(PAPER_TABLE5[row], metric))
