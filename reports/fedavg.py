"""The report's FedAvg and partition sections: FedAvg beside Table 5's rows with the bytes each approach
moves, and each entity's class histogram (tables "fedavg", "bytes", "class_histogram")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.plots import _pyplot, save
from reports.report import Section, Stats, fmt
from reports.runs import Run, Sweep

TABLES = {"fedavg", "fedavg_rounds", "bytes", "bytes_total", "class_histogram"}


def _cell(
    stats: Stats, table: str, row: int | None, label: str, entity: str, metric: str
) -> pd.Series | None:
    return stats.by_key.get((table, row, label, entity, metric))


def _shown(s: pd.Series | None, n_runs: int, digits: int = 4) -> str:
    """mean, and over several runs its 95% interval."""
    if s is None:
        return ""
    if n_runs > 1 and int(s["n"]) > 1 and not pd.isna(s["ci_low"]):
        return f"{fmt(s['mean'], digits)} [{fmt(s['ci_low'], 3)}, {fmt(s['ci_high'], 3)}]"
    return fmt(s["mean"], digits)


def _mb(s: pd.Series | None) -> str:
    return "" if s is None else f"{s['mean'] / 1e6:.3g}"


def section_fedavg(stats: Stats) -> Section | None:
    """Table 5's rows and FedAvg's, one table: top-1, top-5, and the bytes the approach moved."""
    if "fedavg" not in stats.tables():
        return None
    lines: list[dict[str, Any]] = []
    t5 = stats.table("table5")
    for row, label, entity in t5[["row", "label", "entity"]].drop_duplicates().itertuples(index=False):
        r = int(row)
        cells = {m: _cell(stats, "table5", r, label, entity, m) for m in ("top1", "top5")}
        moved = _cell(stats, "bytes", r, label, entity, "bytes")
        lines.append(
            {"approach": f"Table 5 row {r}", "label": label, "entity": entity, **cells, "bytes": moved}
        )
    fed = stats.table("fedavg")
    keys = fed[["row", "label", "entity"]].drop_duplicates().sort_values("row")
    for row, label, entity in keys.itertuples(index=False):
        r = int(row)
        cells = {m: _cell(stats, "fedavg", r, label, entity, m) for m in ("top1", "top5")}
        moved = _cell(stats, "fedavg", r, label, entity, "bytes")
        what = "FedAvg, the averaged model" if r == 0 else "FedAvg, the entity's last local model"
        lines.append({"approach": what, "label": label, "entity": entity, **cells, "bytes": moved})
    pool = _cell(stats, "bytes_total", None, "pool (every shard)", "all", "bytes")
    nets = _cell(stats, "bytes_total", None, "shared nets (F, C, R to each other entity)", "all", "bytes")
    frame = pd.DataFrame(
        [
            {
                "approach": x["approach"],
                "label": x["label"],
                "entity": x["entity"],
                **{m: None if x[m] is None else x[m]["mean"] for m in ("top1", "top5", "bytes")},
                **{
                    f"{m} {k}": None if x[m] is None else x[m][k]
                    for m in ("top1", "top5")
                    for k in ("ci_low", "ci_high")
                },
            }
            for x in lines
        ]
    )
    display = pd.DataFrame(
        [
            {
                "approach": x["approach"],
                "label": x["label"],
                "entity": x["entity"],
                "top1": _shown(x["top1"], stats.n_runs),
                "top5": _shown(x["top5"], stats.n_runs),
                "MB moved": _mb(x["bytes"]),
            }
            for x in lines
        ]
    )
    rounds = _cell(stats, "fedavg", 0, "FedAvg", "all", "rounds")
    spread = f"mean [95% t-interval] over {stats.n_runs} seeds" if stats.n_runs > 1 else "one seed"
    return Section(
        "fedavg",
        "FedAvg beside the collaboration (top-1/top-5 accuracy, %, and megabytes moved)",
        "Top-1/top-5 on the shared test set, "
        + spread
        + ". A Table 5 row moves the other entities' pooled features it reads (its own never leave it; raw-"
        "image rows move nothing); FedAvg moves the whole F + C to and from every entity each round"
        + (f" ({fmt(rounds['mean'])} rounds)" if rounds is not None else "")
        + ", plus one copy to the leader to evaluate"
        + (f". The whole pool is {_mb(pool)} MB" if pool is not None else "")
        + (
            f"; handing the leader's F, C, R to the other entities moved {_mb(nets)} MB once"
            if nets is not None
            else ""
        )
        + ". 'Last local model': the entity's model after its last round's local fit, before averaging.",
        frame,
        display,
    )


def histogram_plot(
    counts: pd.DataFrame, path: Path, title: str = "", formats: tuple[str, ...] = ("png", "svg")
) -> Path:
    """One stacked bar per entity: its images per class. counts: index entity, columns class names."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(counts) + 3), 3.6))
    bottom = np.zeros(len(counts))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(counts.columns):
        values = counts[name].to_numpy(dtype=float)
        ax.bar(counts.index.astype(str), values, bottom=bottom, label=str(name), color=cmap(i % 20))
        bottom += values
    ax.set_ylabel("images")
    ax.set_title(f"each entity's images per class{f': {title}' if title else ''}")
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return save(fig, path, formats)[0]


def _describe(skew: dict[str, Any]) -> str:
    what = ", ".join(f"{k} {v}" for k, v in skew.items() if k != "kind")
    return f"{skew.get('kind')}{f' ({what})' if what else ''}"


def section_histograms(sweep: Sweep, out: Path) -> Section | None:
    """Each entity's class histogram, once per partition the runs drew (a sweep over seeds keeps the task's
    partition; one over `partition.*` or `dataset.seed` draws several: each is shown from its first run)."""
    first: dict[str, Run] = {}
    for run in sweep.runs:
        skew = run.scenario.get("partition") or {"kind": "stratified"}
        task = (skew, run.scenario.get("dataset", {}).get("seed"))
        first.setdefault(json.dumps(task, sort_keys=True), run)
    tables = []
    for run in first.values():
        sub = run.records[run.records.table == "class_histogram"]
        if sub.empty:
            continue
        counts = sub.pivot_table(index="entity", columns="label", values="value", aggfunc="first", sort=False)
        counts = counts[sub.drop_duplicates("label").sort_values("row")["label"].tolist()]
        entities = [e.get("name") for e in run.scenario.get("entities") or []]
        counts = counts.loc[[e for e in entities if e in counts.index] or list(counts.index)]
        tables.append((_describe(run.scenario.get("partition") or {"kind": "stratified"}), counts))
    if not tables:
        return None
    images, frames = [], []
    for i, (what, counts) in enumerate(tables):
        name = "class_histogram.png" if len(tables) == 1 else f"class_histogram-{i + 1}.png"
        images.append(histogram_plot(counts, out / name, title=what).name)
        frame = counts.reset_index()
        frame.insert(0, "partition", what)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    return Section(
        "class_histogram",
        "Partitions: each entity's images per class",
        "Drawn from dataset.seed: " + "; ".join(what for what, _ in tables) + ".",
        frame,
        frame.map(fmt),
        images=images,
    )
