"""The paper's tables from a run directory, with the paper's numbers beside ours.

Reads files only (scenario.yaml, results/*.jsonl, manifest.json); never imports torch or
trains anything.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.paper import (
    PAPER_AMBIGUATION,
    PAPER_KEY_KB,
    PAPER_TABLE1,
    PAPER_TABLE2,
    PAPER_TABLE5,
    scenario_to_paper_rows,
)
from reports.runs import load_run, read_records

AMBIGUATION_COLUMNS = ["psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "rate_bpv", "support_recovery"]
JPEG_COLUMNS = [
    "quality",
    "met",
    "target_bpv",
    "rate_bpp",
    "rate_bpv",
    "payload_bpv",
    "psnr_mean",
    "ssim_mean",
]


def records(run_dir: Path) -> pd.DataFrame:
    """Every result record of a run (reports.runs.read_records; kept for the bench scripts)."""
    return read_records(run_dir)


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
    out = out.reset_index().astype({"row": int}).sort_values("row").set_index("row")
    if scenario is not None:
        rows = scenario.get("collaboration") or []
        to_paper = scenario_to_paper_rows(scenario)
        out["paper_row"] = [to_paper.get(int(r)) for r in out.index]
        for metric in ("top1", "top5"):
            out[f"paper_{metric}"] = [
                getattr(PAPER_TABLE5[to_paper[int(r)]], metric) if int(r) in to_paper else None
                for r in out.index
            ]
        out["inferred"] = [
            bool(rows[int(r) - 1].get("inferred")) if int(r) - 1 < len(rows) else False for r in out.index
        ]
    return out


def _by_label(df: pd.DataFrame, table: str) -> pd.DataFrame:
    sub = df[df.table == table]
    out = sub.pivot_table(index="label", columns="metric", values="value", aggfunc="first")
    order = list(dict.fromkeys(sub.label))  # the order the data owner measured them in
    return out.loc[order]


def ambiguation(df: pd.DataFrame) -> pd.DataFrame:
    """PSNR/SSIM (mean and std over the test set) of the authorised decode, the ambiguated codes decoded as
    they are, the adversary's guesses and JPEG at a matched rate, beside the paper's Table 1."""
    out = _by_label(df, "ambiguation")
    out = out[[c for c in AMBIGUATION_COLUMNS if c in out.columns]].copy()
    for column in ("paper_row", "paper_psnr", "paper_ssim", "paper_rate"):
        out[column] = None
    for prefix, row, psnr, ssim, rate in PAPER_AMBIGUATION:
        hits = [label for label in out.index if label.startswith(prefix) and "bit values" not in label]
        if hits:
            out.loc[hits[0], ["paper_row", "paper_psnr", "paper_ssim", "paper_rate"]] = [
                row,
                psnr,
                ssim,
                rate,
            ]
    return out


def jpeg_matched(df: pd.DataFrame) -> pd.DataFrame:
    """JPEG at the largest quality whose measured rate (whole file, or without its headers) is within the
    codes' rate (as the paper counts it, and with 8-bit values)."""
    out = _by_label(df, "ambiguation")
    out = out[[label.startswith("jpeg") for label in out.index]]
    return out[[c for c in JPEG_COLUMNS if c in out.columns]]


def render_ambiguation(df: pd.DataFrame, run_dir: Path, plot_dir: Path | None = None) -> list[str]:
    """The report's section on sparse codes with ambiguation, and the rate-distortion plot."""
    fmt = {"float_format": lambda v: f"{v:.4g}"}
    parts = [
        "\nAmbiguation: sparse codes of the data owner's test images (PSNR in dB, SSIM with data_range=1, "
        "mean and std over the whole test set; rate in bits per value, support only as the paper counts it)",
        ambiguation(df).to_string(**fmt),
        "\nJPEG (Pillow) at a matched, measured rate (whole file, and payload without headers)",
        jpeg_matched(df).to_string(**fmt),
    ]
    if (df.table == "sizes").any():
        sizes = _by_label(df, "sizes").T
        parts += [f"\nSizes per image (the paper's key: {PAPER_KEY_KB} KB by H2)", sizes.to_string(**fmt)]
    if (df.table == "ambiguation_test").any():
        parts += [
            "\nCan the fakes be told from the true values? KS two-sample test of magnitudes, per sampler",
            _by_label(df, "ambiguation_test").to_string(**fmt),
        ]
    if (df.table == "access").any():
        access = df[df.table == "access"].pivot_table(
            index="label", columns="metric", values="value", aggfunc="first"
        )
        parts += ["\nAuthorised users", access.to_string(**fmt)]
    if (df.table == "rd_curve").any():
        from reports.plots import rd_curve_plot

        curve = _by_label(df, "rd_curve")
        path = rd_curve_plot(curve, (plot_dir or Path(run_dir) / "plots") / "rd_curve.png")
        columns = [
            c for c in ("k", "quality", "rate_bpv", "rate_bpv_q8", "payload_bpv", "psnr_mean", "ssim_mean")
        ]
        parts += [
            f"\nRate-distortion curve (plot: {path})",
            curve[[c for c in columns if c in curve]].to_string(**fmt),
        ]
    return parts


def render_report(run_dir: Path, plot_dir: Path | None = None) -> str:
    """A run's tables as text. The rate-distortion plot goes to plot_dir (default: <run>/plots)."""
    run = load_run(run_dir)
    run_dir, df, scenario, manifest = run.path, run.records, run.scenario, run.manifest
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
    if (df.table == "ambiguation").any():
        parts += render_ambiguation(df, run_dir, plot_dir)
    return "\n".join(parts)
