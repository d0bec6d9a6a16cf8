"""The report's FedAvg and partition sections: FedAvg beside Table 5's rows with the bytes each approach
moves, and each entity's class histogram (tables "fedavg", "bytes", "class_histogram")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.plots import _pyplot, save
from reports.report import Section, Stats, fmt

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


def histogram_plot(counts: pd.DataFrame, path: Path, formats: tuple[str, ...] = ("png", "svg")) -> Path:
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
    ax.set_title("each entity's images per class")
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return save(fig, path, formats)[0]


def section_histograms(stats: Stats, scenario: dict[str, Any], out: Path) -> Section | None:
    """Each entity's class histogram (the partition is the task's, the same in every run of a sweep)."""
    sub = stats.table("class_histogram")
    if sub.empty:
        return None
    counts = sub.pivot_table(index="entity", columns="label", values="mean", aggfunc="first", sort=False)
    order = sub.drop_duplicates("label").sort_values("row")["label"].tolist()
    counts = counts[order]
    entities = [e.get("name") for e in scenario.get("entities") or []]
    counts = counts.loc[[e for e in entities if e in counts.index] or list(counts.index)]
    image = histogram_plot(counts, out / "class_histogram.png")
    frame = counts.reset_index()
    display = frame.map(fmt)
    skew = scenario.get("partition") or {"kind": "stratified"}
    what = ", ".join(f"{k} {v}" for k, v in skew.items() if k != "kind")
    return Section(
        "class_histogram",
        "Partitions: each entity's images per class",
        f"The partition: {skew.get('kind')}{f' ({what})' if what else ''}, drawn from dataset.seed.",
        frame,
        display,
        images=[image.name],
    )
