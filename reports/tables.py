"""The paper's tables from a run directory, with the paper's numbers beside ours.

Reads files only (scenario.yaml, results/*.jsonl, manifest.json); never imports torch or
trains anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

# Deep Poisoning paper, ResNet50 on ImageNet (Tables 1 and 2).
PAPER_TABLE1 = {"original": {"top1": 79.39, "top5": 94.18}, "poisoned": {"top1": 78.88, "top5": 94.11}}
PAPER_TABLE2 = {"original": {"l1": 0.0443, "ssim": 0.6730}, "poisoned": {"l1": 0.2928, "ssim": 0.0070}}


def records(run_dir: Path) -> pd.DataFrame:
    """Every result record of a run as one flat frame (table, row, label, entity, metric, value)."""
    rows = []
    for path in sorted((Path(run_dir) / "results").glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise FileNotFoundError(f"{run_dir}/results: no result records yet")
    return pd.DataFrame(rows)


def _pivot(df: pd.DataFrame, table: str) -> pd.DataFrame:
    sub = df[df.table == table]
    return sub.pivot_table(index="entity", columns=["label", "metric"], values="value", aggfunc="first")


def table1(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of C on original vs poisoned features, per entity, with the paper's ResNet50 row."""
    out = _pivot(df, "table1")
    paper = pd.DataFrame(
        {(k, m): [v] for k, ms in PAPER_TABLE1.items() for m, v in ms.items()}, index=["paper"]
    )
    return pd.concat([out, paper[out.columns]])


def table2(df: pd.DataFrame) -> pd.DataFrame:
    """R's reconstruction (L1, SSIM) from original vs poisoned features, with the paper's ResNet50 row."""
    out = _pivot(df, "table2")
    paper = pd.DataFrame(
        {(k, m): [v] for k, ms in PAPER_TABLE2.items() for m, v in ms.items()}, index=["paper"]
    )
    return pd.concat([out, paper[out.columns]])


def table5(df: pd.DataFrame, scenario: dict | None = None) -> pd.DataFrame:
    """The collaboration table: top-1/top-5 per row, beside the paper's figures where given."""
    sub = df[df.table == "table5"]
    out = sub.pivot_table(index=["row", "label", "entity"], columns="metric", values="value", aggfunc="first")
    out = out.reset_index().sort_values("row").set_index("row")
    if scenario is not None:
        rows = scenario.get("collaboration", [])
        for metric in ("top1", "top5"):
            out[f"paper_{metric}"] = [
                (rows[int(r) - 1].get("paper") or {}).get(metric) if int(r) - 1 < len(rows) else None
                for r in out.index
            ]
        out["inferred"] = [bool(rows[int(r) - 1].get("inferred")) for r in out.index]
    return out


def render_report(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    df = records(run_dir)
    scenario = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    parts = [f"# {scenario['name']} (seed {manifest['seed']})  {run_dir}"]
    stages = ", ".join(
        f"{k} {v['wall_s']:.0f} s" for k, v in manifest["stages"].items() if v.get("wall_s") is not None
    )
    parts.append(f"stages: {stages}")
    fmt = {"float_format": lambda v: f"{v:.4g}"}
    if (df.table == "table1").any():
        parts += ["\nTable 1: top-1/top-5 of C on original vs poisoned features", table1(df).to_string(**fmt)]
    if (df.table == "table2").any():
        parts += [
            "\nTable 2: reconstruction by R from original vs poisoned features",
            table2(df).to_string(**fmt),
        ]
    if (df.table == "table5").any():
        parts += ["\nTable 5: entity collaboration", table5(df, scenario).to_string(**fmt)]
    return "\n".join(parts)
