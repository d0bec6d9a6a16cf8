"""`veil report`: a run's or a sweep's report/ (index.html, report.md, one CSV per table, PNG and SVG plots).

The paper's tables beside ours, Table 5 as grouped bars, rate-distortion curves, paired differences over
seeds, curves against a varied parameter, each attack's success per victim, privacy against utility, image
grids (Table 2's, the codes', the referee's), and warnings where a result should not be trusted. Any table of
records that has no section of its own gets a generic one, so new record kinds show up without code.
Reads run directories only (reports.runs); never imports torch or the simulator.
"""

from __future__ import annotations

import html
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from reports import attacks, compare, findings
from reports.paper import (
    AMBIGUATION_PAPER,
    AMBIGUATION_SCALE,
    DEEP_POISONING,
    DEEP_POISONING_SCALE,
    PAPER_AMBIGUATION,
    PAPER_GUESS_BITS,
    PAPER_GUESS_BITS_PER_MAP,
    PAPER_KEY_KB,
    PAPER_TABLE1,
    PAPER_TABLE2,
    PAPER_TABLE5,
    scenario_to_paper_rows,
)
from reports.plots import attack_bars, privacy_utility_plot, rd_curve_plot, table5_bars, training_plot
from reports.runs import CELL, Sweep

DPM_NOT_POISONED = 0.5  # poisoned SSIM at or above this fraction of the original's: the DPM did not train
OWN_SECTIONS = {
    "table1",
    "table2",
    "table3",
    "table5",
    "ambiguation",
    "sizes",
    "rd_curve",
    "training",
    "attack",
}
# What each net's training loss is (the group of a label: "C refined row 3" -> "C refined")
LOSSES = {
    "F+C": "cross-entropy on raw images",
    "R": "L1 reconstruction error on public images",
    "DPM": "the task term (KL or CE) + lambda x SSIM(R(P(F(x))), x)",
    "C refined": "cross-entropy on pooled features",
    "autoencoder": "the sparse autoencoder's reconstruction loss",
}
REPORT_SUFFIXES = (".html", ".md", ".csv", ".png", ".svg")
GRIDS = "figures"  # report/figures/: the image grids of the first run, copied


@dataclass(frozen=True)
class Figure:
    """An image copied into report/, with its own caption."""

    src: str  # relative to report/
    caption: str
    width: int  # display width in pixels (the grids are tiny: shown enlarged, pixelated)


@dataclass
class Section:
    """One table of the report: numbers for the CSV, strings for HTML and Markdown, plots beside it."""

    slug: str
    title: str
    caption: str
    frame: pd.DataFrame  # numeric, written as <slug>.csv
    display: pd.DataFrame  # formatted strings, one column per shown column
    images: list[str] = field(default_factory=list)  # PNG file names in report/ (an SVG beside each)
    paper_columns: list[str] = field(default_factory=list)  # display columns holding the paper's numbers
    paper_rows: list[int] = field(default_factory=list)  # display rows (positions) holding the paper's
    figures: list[Figure] = field(default_factory=list)  # copied PNGs (no SVG), each with its own caption


def fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e6 else f"{v:.{digits}g}"
    return str(v)


def _stat(s: pd.Series | None, n_runs: int) -> str:
    """A cell for display: the mean, with ± SD over the runs when there are several."""
    if s is None:
        return ""
    if n_runs > 1 and int(s["n"]) > 1 and s["sd"] != 0:  # the same in every run: no "± 0"
        return f"{fmt(s['mean'])} ± {fmt(s['sd'], 2)}"
    return fmt(s["mean"])


class Stats:
    """The cells of the runs (compare.cells), looked up by (table, row, label, entity, metric)."""

    def __init__(self, sweep: Sweep):
        self.n_runs = len(sweep.runs)
        self.frame = compare.cells(sweep.runs)
        self.by_key: dict[tuple[Any, ...], pd.Series] = {}
        for _, s in self.frame.iterrows():
            row = None if pd.isna(s["row"]) else int(s["row"])
            self.by_key[(s["table"], row, s["label"], s["entity"], s["metric"])] = s

    def table(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame.table == name]

    def tables(self) -> list[str]:
        return list(dict.fromkeys(self.frame.table))


def grid(
    stats: Stats, table: str, index: list[str], columns: list[str], metrics: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A table's cells pivoted: (numbers: mean [, sd, ci_low, ci_high] per column; strings for display)."""
    sub = stats.table(table)
    if metrics is not None:
        sub = sub[sub.metric.isin(metrics)]
    keys_r: dict[tuple[Any, ...], None] = {}
    keys_c: dict[str, None] = {}
    cell: dict[tuple[tuple[Any, ...], str], pd.Series] = {}
    for _, s in sub.iterrows():
        rk = tuple(None if pd.isna(s[i]) else (int(s[i]) if i == "row" else s[i]) for i in index)
        ck = " ".join(str(s[c]) for c in columns)
        keys_r.setdefault(rk)
        keys_c.setdefault(ck)
        cell[(rk, ck)] = s
    if metrics is not None and columns == ["metric"]:
        keys_c = {m: None for m in metrics if m in keys_c}
    numeric, shown = [], []
    for rk in keys_r:
        num: dict[str, Any] = dict(zip(index, rk, strict=True))
        dis: dict[str, Any] = {i: fmt(v) for i, v in zip(index, rk, strict=True)}
        for ck in keys_c:
            s = cell.get((rk, ck))
            num[ck] = None if s is None else s["mean"]
            if stats.n_runs > 1:
                for extra in ("sd", "ci_low", "ci_high"):
                    num[f"{ck} {extra}"] = None if s is None else s[extra]
            dis[ck] = _stat(s, stats.n_runs)
        numeric.append(num)
        shown.append(dis)
    return pd.DataFrame(numeric), pd.DataFrame(shown)


def _add_row(frame: pd.DataFrame, display: pd.DataFrame, values: dict[str, Any]) -> tuple[pd.DataFrame, ...]:
    frame = pd.concat([frame, pd.DataFrame([values])], ignore_index=True)
    display = pd.concat([display, pd.DataFrame([{k: fmt(v) for k, v in values.items()}])], ignore_index=True)
    return frame, display.fillna("")


def _scales(scenario: dict[str, Any]) -> str:
    dataset = scenario.get("dataset") or {}
    backbone = (scenario.get("backbone") or {}).get("name", "?")
    size = dataset.get("patch") or dataset.get("image_size") or "?"
    return f"ours: {backbone} on '{dataset.get('kind', '?')}' at {size} px; paper: {DEEP_POISONING_SCALE}"


def section_findings(sweep: Sweep) -> Section | None:
    """What the run shows, first: each measure beside the one it is judged against, and the difference."""
    found = [findings.summary(f) for f in findings.findings(sweep.runs)]
    if not found:
        return None
    frame = pd.DataFrame(found)
    n = len(sweep.runs)
    display = pd.DataFrame(
        {
            "question": frame["question"],
            "measured": frame["measure"],
            "value": [
                _interval(*v) for v in zip(frame.ours, frame.ours_lo, frame.ours_hi, frame.n, strict=True)
            ],
            "against": frame["against"],
            "its value": [fmt(v, 3) for v in frame.reference],
            "difference": [
                _interval(*v)
                for v in zip(frame.difference, frame.difference_lo, frame.difference_hi, frame.n, strict=True)
            ],
        }
    )
    return Section(
        "findings",
        "What this run shows",
        "Each line: a question, what was measured to answer it and its value, what that is set against, and "
        "the difference. SSIM has data range 1 (about 0.5 and above: a person tells the images apart; near "
        "0: nothing left of them). "
        + (
            f"Means over {n} seeds; in brackets the 95% t-interval, for the difference paired by seed."
            if n > 1
            else "One run: these are one draw, with no interval; a Table 5 row moves by several points with "
            "the seed. For intervals, run several seeds (veil run FILE --seeds 0-4 --report)."
        ),
        frame,
        display,
    )


def section_table12(stats: Stats, scenario: dict[str, Any], which: str) -> Section | None:
    if which not in stats.tables():
        return None
    frame, display = grid(stats, which, ["entity"], ["label", "metric"])
    paper = PAPER_TABLE1 if which == "table1" else PAPER_TABLE2
    values: dict[str, Any] = {"entity": "paper"}
    for label, ms in paper.items():  # every column of the paper's table, even one we did not measure
        for metric, v in ms.items():
            values[f"{label} {metric}"] = v
    frame, display = _add_row(frame, display, values)
    if which == "table1":
        title = "Table 1: accuracy of C on original vs poisoned features (top-1/top-5, %)"
    else:
        title = "Table 2: reconstruction by R from original vs poisoned features (L1; SSIM, data range 1)"
    return Section(
        which,
        title,
        f"One row per entity (its test images through its own DPM); the last row is the paper's "
        f"({DEEP_POISONING}, ResNet-50). Scales differ: {_scales(scenario)}.",
        frame,
        display,
        paper_rows=[len(display) - 1],
    )


def section_table5(stats: Stats, scenario: dict[str, Any], out: Path) -> Section | None:
    if "table5" not in stats.tables():
        return None
    frame, display = grid(
        stats, "table5", ["row", "label", "entity"], ["metric"], ["top1", "top5", "n_train"]
    )
    to_paper = scenario_to_paper_rows(scenario)
    rows = scenario.get("collaboration") or []
    paper_row = [to_paper.get(int(r)) for r in frame["row"]]
    inferred = [
        bool(rows[int(r) - 1].get("inferred")) if int(r) - 1 < len(rows) else False for r in frame["row"]
    ]
    if stats.n_runs > 1:
        for metric in ("top1", "top5"):
            if f"{metric} ci_low" in frame:
                display[f"95% interval {metric}"] = [
                    f"[{fmt(lo, 3)}, {fmt(hi, 3)}]" if not pd.isna(lo) else ""
                    for lo, hi in zip(frame[f"{metric} ci_low"], frame[f"{metric} ci_high"], strict=True)
                ]
    frame["paper row"] = paper_row
    display["paper row"] = [fmt(p) for p in paper_row]
    for metric in ("top1", "top5"):
        values = [getattr(PAPER_TABLE5[p], metric) if p else None for p in paper_row]
        frame[f"paper {metric}"] = values
        display[f"paper {metric}"] = [fmt(v) for v in values]
    frame["inferred"] = inferred
    display["inferred"] = ["inferred" if i else "" for i in inferred]
    bars = pd.DataFrame({"row": frame["row"], "label": frame["label"], "paper_row": paper_row})
    for metric in ("top1", "top5"):
        if metric in frame:
            bars[metric] = frame[metric]
            bars[f"{metric}_lo"] = frame.get(f"{metric} ci_low")
            bars[f"{metric}_hi"] = frame.get(f"{metric} ci_high")
            bars[f"paper_{metric}"] = frame[f"paper {metric}"]
    image = table5_bars(bars, out / "table5.png", stats.n_runs)
    return Section(
        "table5",
        "Table 5: entity collaboration (top-1/top-5 accuracy, %)",
        "Each row: which entity trains C on what. A row is matched to the paper's row by its entity and data "
        "mix; 'inferred' marks rows whose paper label was lost and inferred. "
        + (
            f"Ours: mean ± SD over {stats.n_runs} seeds, with the 95% Student-t interval of the mean. "
            if stats.n_runs > 1
            else "Ours: one seed (no interval; run a sweep for one). "
        )
        + f"Scales differ: {_scales(scenario)}.",
        frame,
        display,
        images=[image.name],
        paper_columns=["paper row", "paper top1", "paper top5"],
    )


def section_differences(sweep: Sweep) -> Section | None:
    diffs = compare.paired_differences(sweep.runs, "top1") + compare.paired_differences(sweep.runs, "top5")
    if not diffs:
        return None
    frame = compare.differences_frame(diffs)
    display = pd.DataFrame(
        {
            "claim (paper rows)": frame["claim"],
            "what": frame["what"],
            "our rows": frame["our rows"],
            "metric": frame["metric"],
            "ours": [f"{fmt(d.mean, 3)} ± {fmt(d.sd, 2)}" if d.n > 1 else fmt(d.mean, 3) for d in diffs],
            "95% interval": [f"[{fmt(d.ci_low, 3)}, {fmt(d.ci_high, 3)}]" if d.n > 1 else "" for d in diffs],
            "threshold": [f"> {fmt(d.claim.threshold)}" if d.judged else "" for d in diffs],
            "verdict": frame["verdict"],
            "paper": [fmt(d.paper, 3) for d in diffs],
        }
    )
    n = len(sweep.runs)
    return Section(
        "differences",
        "Table 5 claims: the paper's claims as paired differences between rows (points)",
        (
            f"Per seed, the difference between rows of the same run; then mean ± SD over {n} seeds and the "
            "95% Student-t interval. A claim holds when the interval lies above its threshold, does not hold "
            "when it lies below, and is undecided otherwise."
            if n > 1
            else "The difference between rows of this one run. One run has no interval, so it neither "
            "confirms nor refutes a claim: a row moves by several points with the seed. For a verdict, run "
            "several seeds (veil run FILE --seeds 0-4 --report) and read the differences' 95% intervals."
        ),
        frame,
        display,
        paper_columns=["paper"],
    )


def section_ambiguation(stats: Stats) -> Section | None:
    if "ambiguation" not in stats.tables():
        return None
    metrics = ["psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "rate_bpv", "support_recovery"]
    frame, display = grid(stats, "ambiguation", ["label"], ["metric"], metrics)
    frame = frame[[not str(lab).startswith("jpeg") or "whole file" in str(lab) for lab in frame["label"]]]
    display = display.loc[frame.index].reset_index(drop=True)
    frame = frame.reset_index(drop=True)
    cols = {"paper row": [], "paper PSNR": [], "paper SSIM": [], "paper rate": []}  # type: dict[str, list[Any]]
    used: set[str] = set()
    for label in frame["label"]:
        hit = next(
            (
                p
                for p in PAPER_AMBIGUATION
                if str(label).startswith(p[0]) and "bit values" not in str(label) and p[1] not in used
            ),
            None,
        )
        if hit is not None:
            used.add(hit[1])
        for column, v in zip(cols, hit[1:] if hit else (None,) * 4, strict=True):
            cols[column].append(v)
    for column, values in cols.items():
        frame[column] = values
        display[column] = [fmt(v) for v in values]
    return Section(
        "ambiguation",
        "Ambiguation Table 1: sparse codes of the data owner's test images",
        "PSNR in dB, SSIM with data range 1 (mean and per-image SD over the whole test set); rate in bits "
        "per value, counting the support only, as the paper does. "
        f"Paper: {AMBIGUATION_PAPER}, {AMBIGUATION_SCALE}.",
        frame,
        display,
        paper_columns=list(cols),
    )


def section_jpeg(stats: Stats) -> Section | None:
    sub = stats.table("ambiguation")
    labels = [lab for lab in dict.fromkeys(sub.label) if str(lab).startswith("jpeg")]
    if not labels:
        return None
    metrics = ["quality", "met", "target_bpv", "rate_bpv", "payload_bpv", "psnr_mean", "ssim_mean"]
    frame, display = grid(stats, "ambiguation", ["label"], ["metric"], metrics)
    keep = frame["label"].isin(labels)
    return Section(
        "jpeg",
        "JPEG at a matched, measured rate",
        "The largest Pillow quality whose measured rate (whole file, or payload without headers) is within "
        "the codes' rate; met = 0 where no quality got there.",
        frame[keep].reset_index(drop=True),
        display[keep.to_numpy()].reset_index(drop=True),
    )


def section_sizes(stats: Stats) -> Section | None:
    if "sizes" not in stats.tables():
        return None
    metrics = ["key_kb_h2", "key_kb_exact", "key_bits_exact", "guessing_bits", "public_kb", "rate_paper"]
    frame, display = grid(stats, "sizes", ["label"], ["metric"], metrics)
    values = {
        "label": f"paper, published (L=20, m=512, k=128; guessing {PAPER_GUESS_BITS_PER_MAP} bits per map)",
        "key_kb_h2": PAPER_KEY_KB,
        "guessing_bits": float(PAPER_GUESS_BITS),
    }
    frame, display = _add_row(frame, display, values)
    return Section(
        "sizes",
        "Key size and guessing cost per image",
        "Key: the supports, log2 C(m,k)^L bits (by the H2 approximation, and exactly). Guessing cost for an "
        "adversary who knows k: log2 C(k',k)^L bits. Public part: the ambiguated codes. The last row is "
        f"the paper's ({AMBIGUATION_PAPER}: 1.01 KB key, C(256,128) ~ 2^252 per map).",
        frame,
        display,
        paper_rows=[len(display) - 1],
    )


def section_rd_curve(stats: Stats, out: Path) -> Section | None:
    if "rd_curve" not in stats.tables():
        return None
    metrics = ["k", "quality", "rate_bpv", "rate_bpv_q8", "payload_bpv", "psnr_mean", "ssim_mean"]
    frame, display = grid(stats, "rd_curve", ["label"], ["metric"], metrics)
    curve = frame.set_index("label")[[m for m in metrics if m in frame]].astype(float)
    image = rd_curve_plot(curve, out / "rd_curve.png", formats=("png", "svg"))
    return Section(
        "rd_curve",
        "Rate-distortion: the codes at each k against JPEG",
        "PSNR and SSIM against bits per value (3 values per pixel). Codes: the support's entropy only (the "
        "paper's rate), and with the non-zero values at 8 bits. JPEG: the measured file size, whole and "
        "without headers." + (f" Means over {stats.n_runs} seeds." if stats.n_runs > 1 else ""),
        frame,
        display,
        images=[image.name],
    )


def _net_group(label: str) -> str:
    """The kind of net a training label names: "C refined row 3" -> "C refined", "DPM (2)" -> "DPM"."""
    base = label.split(" (")[0]
    return base.split(" row ")[0]


def section_training(stats: Stats, out: Path) -> Section | None:
    """Training curves: the loss per epoch of every net, one plot per kind of net."""
    sub = stats.table("training")
    if sub.empty:
        return None
    sub = sub[sub.metric == "loss"].copy()
    sub["group"] = [_net_group(str(x)) for x in sub["label"]]
    images = []
    for group, curves in sub.groupby("group", sort=False):
        slug = "".join(c if c.isalnum() else "-" for c in str(group)).strip("-").lower()
        images.append(training_plot(curves, str(group), out / f"training-{slug}.png", stats.n_runs).name)
    columns = ["label", "entity", "row", "mean"] + (["sd"] if stats.n_runs > 1 else [])
    frame = sub[columns].rename(columns={"row": "epoch", "mean": "loss"})
    shown = []
    for (label, entity), c in sub.groupby(["label", "entity"], sort=False):
        c = c.sort_values("row")
        first, last = float(c["mean"].iloc[0]), float(c["mean"].iloc[-1])
        shown.append(
            {
                "net": label,
                "party": entity,
                "loss": LOSSES.get(_net_group(str(label)), ""),
                "epochs": str(len(c)),
                "first epoch": fmt(first),
                "last epoch": fmt(last),
                "last / first": fmt(last / first) if first else "",
            }
        )
    seeds = f" Means over {stats.n_runs} seeds (bands: ± one SD)." if stats.n_runs > 1 else ""
    return Section(
        "training",
        "Training curves",
        "The mean training loss of each epoch, for every net each party trained (F+C: the classifier from "
        "raw images, pre-training and the table rows trained from raw images; R: the reconstructor; DPM: "
        "each entity's poisoning module; C refined: the decider refined on a row's features). A curve "
        "that does not fall means the net did not learn at this size." + seeds,
        frame.reset_index(drop=True),
        pd.DataFrame(shown),
        images=images,
    )


# The attack table's columns, in reading order (any other metric follows)
ATTACK_METRICS = [
    "ssim",
    "psnr",
    "l1",
    "support_recovery",
    "support_precision",
    "reid_rank1",
    "reid_chance",
    "reid_person_rank1",
]


def _attack_order(label: str, victim: str) -> tuple[str, str, str]:
    a = attacks.parse_label(label)
    return a.name, victim, a.on


def section_attack(stats: Stats, scenario: dict[str, Any], out: Path) -> Section | None:
    """Attack success per attack and victim: the bars, and every score of every attack."""
    cells = stats.table("attack")
    if cells.empty:
        return None
    metrics = list(dict.fromkeys(m for m in [*ATTACK_METRICS, *cells.metric] if m in set(cells.metric)))
    frame, display = grid(stats, "attack", ["label", "entity"], ["metric"], metrics)
    # by attack and victim, its protected and unprotected lines together
    order = sorted(range(len(frame)), key=lambda i: _attack_order(frame.label[i], frame.entity[i]))
    frame = frame.iloc[order].reset_index(drop=True).rename(columns={"entity": "victim"})
    display = display.iloc[order].reset_index(drop=True).rename(columns={"entity": "victim"})
    bars = attacks.scores(cells)
    images = []
    if len(bars):
        threshold = (scenario.get("verdict") or {}).get("ssim")
        images.append(
            attack_bars(bars, out / "attacks.png", stats.n_runs, threshold, attacks.chance(cells)).name
        )
    return Section(
        "attack",
        "Attack success per attack and victim",
        "The referee, who has the truth, scores what each adversary made. On the pooled features: SSIM "
        "(data range 1), PSNR (dB) and L1 of the attack's images against the victim's; 'protected' is the "
        "victim's DPM-poisoned features, 'unprotected' its original ones (the same entity without a DPM: in "
        "the plot, the black tick on each bar). On the published codes: the share of the true support "
        "guessed (support_recovery; guessing every published position finds all of it, at the precision "
        "support_precision), the random guess being the chance floor. reid_rank1: rank-1 re-identification "
        "of the true image among the test images (reid_chance: by chance)."
        + (
            " This is a face dataset: reid_person_rank1 asks whether the nearest of the candidates is "
            "another image of the same person (the attack's purpose), not the same image."
            if "reid_person_rank1" in metrics
            else ""
        )
        + " The dotted line is the verdict's "
        "SSIM threshold (BROKEN above it)."
        + (f" Mean ± SD over {stats.n_runs} seeds; error bars: 95% t-interval." if stats.n_runs > 1 else ""),
        frame,
        display,
        images=images,
    )


def _interval(mean: float, lo: float, hi: float, n: int) -> str:
    return f"{fmt(mean, 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}]" if n > 1 else fmt(mean, 3)


def section_privacy_utility(sweep: Sweep, out: Path) -> Section | None:
    """Per victim, its protection's privacy (the best attack on it) against its utility (C's top-1)."""
    points = attacks.privacy_utility(sweep.runs)
    if points.empty:
        return None
    n_runs = len(sweep.runs)
    image = privacy_utility_plot(points, out / "privacy-utility.png", n_runs)
    display = pd.DataFrame(
        {
            "victim": points["victim"],
            "features": [
                "DPM-poisoned (protected)" if p == "protected" else "original (unprotected)"
                for p in points["protection"]
            ],
            "best attack": points["best attack"],
            "best attack's SSIM": [
                _interval(*v) for v in zip(points.ssim, points.ssim_lo, points.ssim_hi, points.n, strict=True)
            ],
            "top-1 of C (%)": [
                _interval(*v) for v in zip(points.top1, points.top1_lo, points.top1_hi, points.n, strict=True)
            ],
        }
    )
    return Section(
        "privacy-utility",
        "Privacy against utility",
        "One point per victim and protection. Privacy: the SSIM (data range 1) of the best attack on those "
        "features (per run the highest over the attacks run on them, then the mean over runs). Utility: "
        "the top-1 accuracy of C on the victim's test images through the same features (Table 1). "
        "Deep Poisoning protects when its point lies left of the unprotected one at about the same height."
        + (f" Means over {n_runs} seeds, with the 95% t-interval in brackets." if n_runs > 1 else ""),
        points,
        display,
        images=[image.name],
    )


# What a section's caption says of each kind of grid it holds (reports.attacks.Grid.kind)
GRID_ROWS = {
    "table2": "An entity's Table 2 grid: the first images of the common test set; R from their original "
    "features; R from the entity's DPM-poisoned features.",
    "codes": "The data owner's codes grid: its first test images; decoded by an authorised user (the true "
    "supports); decoded as published (ambiguated); with a random guess of the supports; JPEG at the "
    "authorised decode's rate (whole file; its quality in the row label, 'over rate' where even quality 1 "
    "is above it).",
    "attack": "An attack's grid: top row, the victim's true images; bottom row, what the attack made of "
    "them (the first images the referee scored).",
}


def sections_grids(sweep: Sweep, out: Path) -> list[Section]:
    """The image grids of the first run, copied into report/figures/, one section per method."""
    run = sweep.runs[0]
    found = attacks.grids(run)
    if found:
        (out / GRIDS).mkdir(exist_ok=True)
    for g in found:
        shutil.copyfile(g.path, out / GRIDS / g.path.name)
    which = f"run {run.path.name} (seed {run.seed})"
    if len(sweep.runs) > 1:
        which = f"the first run of {len(sweep.runs)}, {which}; the others' are in their figures/"
    sections = []
    for method in dict.fromkeys(g.method for g in found):
        mine = [g for g in found if g.method == method]
        frame = pd.DataFrame(
            {
                "figure": [f"{GRIDS}/{g.path.name}" for g in mine],
                "grid": [g.kind for g in mine],
                "party": [g.party for g in mine],
                "adversary": [g.adversary for g in mine],
                "attack": [g.attack + (f" ({g.variant})" if g.variant else "") for g in mine],
                "features": [g.shard for g in mine],
            }
        )
        slug = "grids-" + "".join(c if c.isalnum() else "-" for c in method.lower())
        rows = " ".join(GRID_ROWS[kind] for kind in dict.fromkeys(g.kind for g in mine))
        sections.append(
            Section(
                slug,
                f"Reconstructions, {method}",
                f"{rows} From {which}.",
                frame,
                frame.drop(columns="figure").assign(figure=[g.path.name for g in mine]),
                # enlarged by a whole factor (pixelated) to at most 800 pixels wide, at most 3 times
                figures=[
                    Figure(f"{GRIDS}/{g.path.name}", g.caption, g.width * max(1, min(3, 800 // g.width)))
                    for g in mine
                ],
            )
        )
    return sections


def section_generic(stats: Stats, table: str) -> Section:
    """Any other table of records: cells pivoted by (row, label, entity) against metric."""
    sub = stats.table(table)
    index = []
    if sub.row.notna().any():
        index.append("row")
    index.append("label")
    if (sub.entity != sub.label).any():
        index.append("entity")
    frame, display = grid(stats, table, index, ["metric"])
    return Section(
        f"t-{''.join(c if c.isalnum() or c in '-_' else '-' for c in table)}",
        f"{table}",
        f"The '{table}' records, as they are"
        + (f" (mean ± SD over {stats.n_runs} runs)." if stats.n_runs > 1 else "."),
        frame,
        display,
    )


def section_parameter(sweep: Sweep, out: Path) -> Section | None:
    param = compare.parameter(sweep)
    if param is None:
        return None
    curves = compare.against_parameter(sweep, param)
    curves = curves[~curves.metric.str.endswith("_s")]
    images = compare.parameter_plot(curves, param, out)
    wide = curves.pivot_table(
        index=CELL, columns=param, values="mean", aggfunc="first", sort=False
    ).reset_index()
    wide.columns = [str(c) for c in wide.columns]
    display = wide.map(fmt)
    return Section(
        "parameter",
        f"Against {param}",
        f"Each cell's mean at each value of {param} (over the seeds at that value).",
        wide,
        display,
        images=[p.name for p in images if p.suffix == ".png"],
    )


# ------------------------------------------------------------------------------------------ warnings


def warnings(sweep: Sweep, diffs: list[compare.Difference]) -> list[str]:
    out = compare.suspect_warnings(sweep.runs) + compare.environment_warnings(sweep.runs)
    n = len(sweep.runs)
    bad_dpm: dict[str, list[str]] = {}
    for r in sweep.runs:
        t2 = r.records[(r.records.table == "table2") & (r.records.metric == "ssim")]
        by = t2.pivot_table(index="entity", columns="label", values="value", aggfunc="first")
        if {"original", "poisoned"} <= set(by.columns):
            for entity, s in by.iterrows():
                if s["poisoned"] >= DPM_NOT_POISONED * s["original"]:
                    bad_dpm.setdefault(str(entity), []).append(f"{s['poisoned']:.3f} vs {s['original']:.3f}")
    for entity, seen in bad_dpm.items():
        where = f" in {len(seen)} of {n} runs" if n > 1 else ""
        out.append(
            f"{entity}'s DPM did not poison{where}: R's SSIM from its poisoned features is not clearly below "
            f"the original's ({'; '.join(seen[:3])}; the paper: 0.0070 vs 0.6730). Its pool features and the "
            "Table 5 rows that use them say nothing about privacy."
        )
    for r in sweep.runs[:1]:
        amb = r.records[(r.records.table == "ambiguation") & (r.records.metric == "met")]
        for label in amb[amb.value == 0].label:
            out.append(
                f"{label}: no JPEG quality reached the target rate, so its PSNR/SSIM are not at a matched "
                "rate (even JPEG's lowest quality is above it)."
            )
    diverged: dict[tuple[str, str], list[str]] = {}
    for r in sweep.runs:
        losses = r.records[r.records.table == "training"]
        for (label, entity), c in losses.groupby(["label", "entity"], sort=False):
            bad = c[~c.value.map(math.isfinite)]
            if len(bad):
                where = f"{r.path.name} epoch {bad.row.min()}"
                diverged.setdefault((str(label), str(entity)), []).append(where)
    for (label, entity), seen in diverged.items():
        where = f" in {len(seen)} of {n} runs" if n > 1 else ""
        out.append(
            f"{label} of {entity} diverged{where}: its training loss is not a number from "
            f"{'; '.join(seen[:3])} on. The net it trained, and what was measured on it, cannot be trusted."
        )
    rows = sweep.runs[0].scenario.get("collaboration") or []
    inferred = [f"{i} ({row.get('label')})" for i, row in enumerate(rows, start=1) if row.get("inferred")]
    if inferred:
        out.append(
            f"Table 5 rows {', '.join(inferred)}: the paper's labels were lost; these mixes are inferred."
        )
    for d in diffs:  # one seed is no evidence either way: judged on sweeps only
        if d.n > 1 and d.verdict == "does not hold":
            out.append(
                f"Claim {d.claim.name} > {d.claim.threshold:g} ({d.claim.text}, {d.metric}) does not hold: "
                f"{d.mean:.3g} over {d.n} seeds, 95% interval [{d.ci_low:.3g}, {d.ci_high:.3g}]; "
                f"the paper has {d.paper:.3g}."
            )
    for r in sweep.runs:
        unfinished = [k for k, v in (r.manifest.get("stages") or {}).items() if v.get("status") != "done"]
        if unfinished:
            out.append(
                f"{r.path.name}: stages not finished: {', '.join(unfinished)}; its tables are partial."
            )
    return out


# ------------------------------------------------------------------------------------------ header


def header(sweep: Sweep) -> tuple[str, list[tuple[str, str]], Section]:
    runs = sweep.runs
    first = runs[0]
    title = f"{first.name}" + (f": {len(runs)} runs" if len(runs) > 1 else "")
    versions = first.manifest.get("versions") or {}
    hardware = first.manifest.get("hardware") or {}
    facts = [
        ("scenario", f"{first.name}: {first.scenario.get('description', '')}"),
        ("directory", str(sweep.path or ", ".join(str(r.path) for r in runs))),
        ("seeds", ", ".join(str(r.seed) for r in runs)),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("hardware", ", ".join(f"{k} {v}" for k, v in hardware.items())),
        (
            "created",
            ", ".join(str(r.manifest.get("created", "?")) for r in runs[:3])
            + (" ..." if len(runs) > 3 else ""),
        ),
    ]
    if sweep.varied:
        facts.append(("varied", ", ".join(f"{k}: {v}" for k, v in sweep.varied.items())))
    stages: dict[str, list[float]] = {}
    status: dict[str, list[str]] = {}
    for r in runs:
        for name, s in (r.manifest.get("stages") or {}).items():
            status.setdefault(name, []).append(str(s.get("status")))
            if s.get("wall_s") is not None:
                stages.setdefault(name, []).append(float(s["wall_s"]))
    frame = pd.DataFrame(
        [
            {
                "stage": name,
                "status": ", ".join(f"{st} {st_list.count(st)}/{len(runs)}" for st in dict.fromkeys(st_list))
                if len(runs) > 1
                else st_list[0],
                "wall_s": compare.t_interval(stages.get(name, []))[1],
                "wall_s sd": compare.t_interval(stages.get(name, []))[2],
            }
            for name, st_list in status.items()
        ]
    )
    display = pd.DataFrame(
        {
            "stage": frame["stage"],
            "status": frame["status"],
            "wall time (s)": [
                f"{fmt(m, 3)} ± {fmt(s, 2)}" if len(runs) > 1 and not pd.isna(s) else fmt(m, 3)
                for m, s in zip(frame["wall_s"], frame["wall_s sd"], strict=True)
            ],
        }
    )
    return title, facts, Section("stages", "Stages", "Per-stage status and wall time.", frame, display)


# ------------------------------------------------------------------------------------------ writers

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1.5rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem;
       border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
p.caption { color: #555; font-size: .9rem; margin: .3rem 0 .6rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .4rem 0 1rem;
       display: block; overflow-x: auto; max-width: 100%; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e5e5e5; text-align: right; white-space: nowrap; }
th { background: #f3f5f8; font-weight: 600; } td.text, th.text { text-align: left; }
td.paper, th.paper, tr.paper td { background: #fdf5e6; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; font-size: .9rem; }
dl.facts dt { font-weight: 600; color: #444; } dl.facts dd { margin: 0; }
div.warnings { background: #fff4f2; border-left: 4px solid #d9534f; padding: .6rem 1rem; margin: 1rem 0; }
div.warnings li { margin: .25rem 0; } div.ok { background: #f0f8f0; border-left: 4px solid #5cb85c;
       padding: .6rem 1rem; }
figure { margin: .5rem 0 1.2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .8rem; color: #666; }
figure.grid img { image-rendering: pixelated; } nav a { margin-right: .8rem; font-size: .85rem; }
"""


def _is_text(column: pd.Series) -> bool:
    values = [v for v in column if v != ""]
    return bool(values) and not all(_numberish(v) for v in values)


def _numberish(v: str) -> bool:
    try:
        float(str(v).split(" ")[0].strip("[],"))
        return True
    except ValueError:
        return False


def html_table(s: Section) -> str:
    text = {c for c in s.display.columns if _is_text(s.display[c])}

    def cls(column: str) -> str:
        names = (["text"] if column in text else []) + (["paper"] if column in s.paper_columns else [])
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{cls(c)}>{html.escape(str(c))}</th>" for c in s.display.columns)
    body = []
    for i, (_, row) in enumerate(s.display.iterrows()):
        tr = ' class="paper"' if i in s.paper_rows else ""
        tds = "".join(f"<td{cls(c)}>{html.escape(str(v))}</td>" for c, v in row.items())
        body.append(f"<tr{tr}>{tds}</tr>")
    return (
        f'<table id="{s.slug}"><thead><tr>{head}</tr></thead><tbody>' + "\n".join(body) + "</tbody></table>"
    )


def md_table(display: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(c) for c in display.columns) + " |",
        "|" + "|".join("---" for _ in display.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in display.itertuples(index=False)]
    return "\n".join(lines)


def write_html(
    path: Path, title: str, facts: list[tuple[str, str]], warns: list[str], sections: list[Section]
) -> None:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Veil report: {html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Veil report: {html.escape(title)}</h1>",
        '<dl class="facts">'
        + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
        + "</dl>",
    ]
    if warns:
        parts.append(
            '<div class="warnings"><strong>Warnings: read these before trusting the results</strong><ul>'
            + "".join(f"<li>{html.escape(w)}</li>" for w in warns)
            + "</ul></div>"
        )
    else:
        parts.append('<div class="ok">No warnings.</div>')
    parts.append(
        "<nav>"
        + "".join(f'<a href="#sec-{s.slug}">{html.escape(s.title.split(":")[0])}</a>' for s in sections)
        + "</nav>"
    )
    for s in sections:
        parts.append(f'<section id="sec-{s.slug}"><h2>{html.escape(s.title)}</h2>')
        parts.append(
            f'<p class="caption">{html.escape(s.caption)} CSV: <a href="{s.slug}.csv">{s.slug}.csv</a></p>'
        )
        for image in s.images:
            svg = Path(image).with_suffix(".svg").name
            parts.append(
                f'<figure><img src="{html.escape(image)}" alt="{html.escape(s.title)}">'
                f'<figcaption>{html.escape(image)} (<a href="{html.escape(svg)}">SVG</a>)</figcaption>'
                "</figure>"
            )
        for f in s.figures:
            parts.append(
                f'<figure class="grid"><img src="{html.escape(f.src)}" width="{f.width}" '
                f'alt="{html.escape(f.caption)}"><figcaption>{html.escape(f.caption)}</figcaption></figure>'
            )
        parts.append(html_table(s))
        parts.append("</section>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts) + "\n")


def write_markdown(
    path: Path, title: str, facts: list[tuple[str, str]], warns: list[str], sections: list[Section]
) -> None:
    parts = [f"# Veil report: {title}", ""]
    parts += [f"- **{k}**: {v}" for k, v in facts]
    if warns:
        parts += ["", "## Warnings", ""] + [f"- {w}" for w in warns]
    for s in sections:
        parts += ["", f"## {s.title}", "", s.caption, ""]
        parts += [f"![{s.title}]({image})" for image in s.images]
        for f in s.figures:
            parts += [f"![{f.caption}]({f.src})", "", f"*{f.caption}*", ""]
        if s.images:
            parts.append("")
        parts.append(md_table(s.display))
    path.write_text("\n".join(parts) + "\n")


def build(sweep: Sweep, out: Path) -> tuple[str, list[tuple[str, str]], list[str], list[Section]]:
    """Every section of the report of `sweep`, with its plots written under `out`."""
    stats = Stats(sweep)
    scenario = sweep.runs[0].scenario
    title, facts, stages = header(sweep)
    diffs = compare.paired_differences(sweep.runs, "top1")
    from reports import fedavg, protections  # they build on this module's Section and Stats

    candidates = [
        section_findings(sweep),
        section_parameter(sweep, out),
        section_table12(stats, scenario, "table1"),
        section_table12(stats, scenario, "table2"),
        *protections.sections(sweep, stats, out),
        fedavg.section_histograms(sweep, out),
        section_table5(stats, scenario, out),
        fedavg.section_fedavg(stats),
        section_differences(sweep),
        section_ambiguation(stats),
        section_jpeg(stats),
        section_sizes(stats),
        section_rd_curve(stats, out),
        section_attack(stats, scenario, out),
        section_privacy_utility(sweep, out),
        *sections_grids(sweep, out),
        section_training(stats, out),
    ]
    sections = [s for s in candidates if s is not None]
    own = OWN_SECTIONS | fedavg.TABLES - {"fedavg_rounds", "bytes_total"}
    sections += [section_generic(stats, t) for t in stats.tables() if t not in own]
    sections.append(stages)
    return title, facts, warnings(sweep, diffs), sections


def write_report(sweep: Sweep, out: Path) -> Path:
    """Write report/ (index.html, report.md, <table>.csv, plots) into `out`; return index.html's path."""
    out.mkdir(parents=True, exist_ok=True)
    # a fresh report: nothing left from an earlier one
    for old in [*out.iterdir(), *(out / GRIDS).glob("*.png")]:
        if old.is_file() and old.suffix in REPORT_SUFFIXES:
            old.unlink()
    title, facts, warns, sections = build(sweep, out)
    for s in sections:
        s.frame.to_csv(out / f"{s.slug}.csv", index=False)
    write_markdown(out / "report.md", title, facts, warns, sections)
    index = out / "index.html"
    write_html(index, title, facts, warns, sections)
    return index
