"""The report's protection sections (issue 17): Table 3 beside the paper's, each protection against every
attack on its pool, Table 4 (a shared obfuscator reversed by its holder), and the privacy-utility frontier.

A protection's utility is the top-1 of the refined rows that pool only its victim's protected features
(`own:features` and `poisoned:V`), where every point has such a row; otherwise Table 3's, C's top-1 on the
entity's test images through its protection (the paper's measure); both are shown. Its privacy lost is
the strongest attack on its pooled protected features: per run the highest SSIM (and, apart, the highest
rank-1 re-identification) over every attack run on them, then the mean and 95% t-interval over runs.
Reads records only.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.attacks import parse_label
from reports.compare import t_interval
from reports.paper import DEEP_POISONING, PAPER_TABLE3, PAPER_TABLE4, table3_row
from reports.plots import _pyplot, save
from reports.report import Section, Stats, _interval, _stat, fmt, grid
from reports.runs import Run, Sweep

HOLDER = "protection-holder"  # the attack of a holder of the victim's protector (Table 4's reversal)
PROTECTED = "protected"


def protection_labels(records: pd.DataFrame) -> dict[str, str]:
    """Each entity's protection as Table 3 names it (the label of its protected features' line)."""
    t3 = records[records.table == "table3"]
    out: dict[str, str] = {}
    for entity, label in zip(t3.entity, t3.label, strict=True):
        if label != "none" or entity not in out:
            out[str(entity)] = str(label)
    return out


def _strongest(attacked: pd.DataFrame) -> tuple[float, str] | None:
    """The highest value among one victim's attack records of one metric, and the attack that made it."""
    if attacked.empty:
        return None
    best = attacked.loc[attacked.value.idxmax()]
    return float(best.value), parse_label(str(best.label)).name


def refined_rows_of(scenario: dict[str, Any]) -> dict[int, str]:
    """The collaboration rows (numbered from 1, as table5 records them) whose pool is one victim's
    protected features and nothing else but the refining entity's own: row -> that victim."""
    rows: dict[int, str] = {}
    for i, row in enumerate(scenario.get("collaboration") or [], start=1):
        pooled = [str(d).split(":", 1) for d in row.get("data", []) if str(d) != "own:features"]
        if len(pooled) == 1 and pooled[0][0] == "poisoned":
            rows[i] = pooled[0][1]
    return rows


def utility_column(points: pd.DataFrame) -> str:
    """The refined rows' top-1 when every point has one, else Table 3's (one measure on one frontier)."""
    return "refined" if "refined" in points and points["refined"].notna().all() else "top1"


def frontier_points(runs: list[Run]) -> pd.DataFrame:
    """One line per victim with a protection (Table 3) and attacks on its protected pool: its top-1 (Table
    3's, and the refined rows' pooling only its features where there are such rows), the strongest attack's
    SSIM and re-identification, each with its mean and 95% interval over runs, which attack was strongest
    (in how many runs), and whether the point is on the frontier (no other point has both more utility,
    as `utility_column` picks it, and less SSIM)."""
    values: dict[str, dict[str, list[float]]] = {}
    winners: dict[str, Counter[str]] = {}
    labels: dict[str, str] = {}
    for run in runs:
        rec = run.records
        mine = protection_labels(rec)
        attack = rec[(rec.table == "attack") & rec.value.notna()]
        on = np.array([parse_label(str(lab)).on == PROTECTED for lab in attack.label], dtype=bool)
        attack = attack[on] if len(attack) else attack
        refined = rec[(rec.table == "table5") & (rec.metric == "top1") & rec.value.notna()]
        pools = refined_rows_of(run.scenario)
        for victim, label in mine.items():
            top1 = rec[(rec.table == "table3") & (rec.label == label) & (rec.entity == victim)]
            top1 = top1[top1.metric == "top1"]
            hits = attack[attack.entity == victim]
            ssim = _strongest(hits[hits.metric == "ssim"])
            if top1.empty or ssim is None:
                continue
            labels[victim] = label
            v = values.setdefault(victim, {"top1": [], "refined": [], "ssim": [], "reid": []})
            v["top1"].append(float(top1.value.iloc[-1]))
            mine_rows = refined[[pools.get(int(r)) == victim for r in refined.row]]
            v["refined"].append(float(mine_rows.value.mean()) if len(mine_rows) else np.nan)
            v["ssim"].append(ssim[0])
            reid = _strongest(hits[hits.metric == "reid_rank1"])
            v["reid"].append(np.nan if reid is None else 100 * reid[0])
            winners.setdefault(victim, Counter())[ssim[1]] += 1
    lines: list[dict[str, Any]] = []
    for victim, v in values.items():
        line: dict[str, Any] = {"victim": victim, "protection": labels[victim]}
        for metric in ("top1", "refined", "ssim", "reid"):
            n, mean, _, lo, hi = t_interval(v[metric])
            line.update({"n": n, metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
        counts = winners[victim]
        line["strongest attack"] = ", ".join(
            f"{a} ({c}/{len(v['ssim'])})" if len(counts) > 1 else a for a, c in counts.most_common()
        )
        lines.append(line)
    if not lines:
        return pd.DataFrame()
    points = pd.DataFrame(lines)
    points["on frontier"] = on_frontier(points["ssim"].to_numpy(), points[utility_column(points)].to_numpy())
    return points


def on_frontier(lost: np.ndarray, utility: np.ndarray) -> np.ndarray:
    """Which points no other point dominates (at most as much privacy lost and at least as much utility,
    better in one of them)."""
    keep = np.ones(len(lost), dtype=bool)
    for i in range(len(lost)):
        better = (lost <= lost[i]) & (utility >= utility[i]) & ((lost < lost[i]) | (utility > utility[i]))
        keep[i] = not better.any()
    return keep


def frontier_plot(points: pd.DataFrame, path: Path, n_runs: int) -> Path:
    """Utility against privacy lost, one point per protected victim, the frontier joined: against the
    strongest attack's SSIM (left) and its rank-1 re-identification (right)."""
    plt = _pyplot()
    y = utility_column(points)
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.8), sharey=True)
    for ax, x, name in (
        (axes[0], "ssim", "the strongest attack's SSIM (data range 1)"),
        (axes[1], "reid", "the strongest attack's rank-1 re-identification (%)"),
    ):
        p = points[points[x].notna()]
        if p.empty:
            ax.set_axis_off()
            continue
        errors: dict[str, Any] = {}
        if n_runs > 1:
            errors = {
                "xerr": np.nan_to_num(np.vstack([p[x] - p[f"{x}_lo"], p[f"{x}_hi"] - p[x]])),
                "yerr": np.nan_to_num(np.vstack([p[y] - p[f"{y}_lo"], p[f"{y}_hi"] - p[y]])),
            }
        ax.errorbar(p[x], p[y], fmt="o", color="#3b6ea8", ms=5, capsize=3, zorder=2, **errors)
        best = on_frontier(p[x].to_numpy(), p[y].to_numpy())
        front = p[best].sort_values(x)
        ax.step(front[x], front[y], where="post", color="#c0392b", lw=2, alpha=0.8, zorder=3)
        ax.plot(
            front[x],
            front[y],
            "o",
            mfc="none",
            mec="#c0392b",
            ms=10,
            mew=1.5,
            zorder=3,
            label="on the frontier",
        )
        placed: list[tuple[float, float]] = []
        span = max(float(p[x].max()), 1e-9)
        for xv, yv, victim in zip(p[x], p[y], p["victim"], strict=True):
            # victims often share a point: stack their names instead of overprinting
            near = sum(abs(xv - px) < 0.06 * span and abs(yv - py) < 4 for px, py in placed)
            placed.append((xv, yv))
            ax.annotate(
                str(victim), (xv, yv), textcoords="offset points", xytext=(7, 4 + 10 * near), fontsize=7
            )
        ax.set_xlabel(f"privacy lost: {name}\n(lower is more private)")
        ax.set_xlim(left=0)
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right", frameon=False)
    axes[0].set_ylabel(
        "utility: top-1 of C refined on its protected pool (%)"
        if y == "refined"
        else "utility: C's top-1 on the protected features (%)"
    )
    spread = f"mean and 95% t-interval over {n_runs} seeds" if n_runs > 1 else "one seed"
    fig.suptitle(f"Protections: privacy lost against utility ({spread})", fontsize=10)
    fig.tight_layout()
    return save(fig, path, ("png", "svg"))[0]


def section_frontier(points: pd.DataFrame, n_runs: int, out: Path) -> Section | None:
    if points.empty:
        return None
    image = frontier_plot(points, out / "frontier.png", n_runs)
    shown = pd.DataFrame(
        {
            "victim": points["victim"],
            "protection": points["protection"],
            "top-1 (%)": [_interval(*v) for v in zip(*(points[c] for c in _cols("top1")), strict=True)],
            "refined top-1 (%)": [
                _interval(*v) for v in zip(*(points[c] for c in _cols("refined")), strict=True)
            ],
            "strongest SSIM": [_interval(*v) for v in zip(*(points[c] for c in _cols("ssim")), strict=True)],
            "strongest re-identification (%)": [
                _interval(*v) for v in zip(*(points[c] for c in _cols("reid")), strict=True)
            ],
            "strongest attack": points["strongest attack"],
            "on frontier": ["yes" if f else "" for f in points["on frontier"]],
        }
    )
    if points["refined"].isna().all():
        shown = shown.drop(columns="refined top-1 (%)")
    utility = (
        "the top-1 of the refined rows that pool only the victim's protected features"
        if utility_column(points) == "refined"
        else "C's top-1 on the victim's test images through its protection (Table 3)"
    )
    return Section(
        "frontier",
        "The privacy-utility frontier of the protections",
        f"One point per victim and its protection. Utility: {utility} (the refined rows' when every "
        "victim has one, else Table 3's). Privacy lost: the strongest attack on its pooled protected "
        "features, per run the highest over every attack run on them (SSIM; re-identification apart), "
        "then the mean over runs. "
        "A point is on the frontier when no other has both more utility and a lower SSIM: a protection worth "
        "having lies left of 'none' at about its height."
        + (
            f" Means over {n_runs} seeds, with the 95% t-interval in brackets."
            if n_runs > 1
            else " One seed."
        ),
        points,
        shown,
        images=[image.name],
    )


def _cols(metric: str) -> tuple[str, str, str, str]:
    return metric, f"{metric}_lo", f"{metric}_hi", "n"


def _strongest_by_label(points: pd.DataFrame) -> dict[str, tuple[float, str]]:
    out: dict[str, tuple[float, str]] = {}
    for _, p in points.iterrows():
        if p["protection"] not in out or p["ssim"] > out[p["protection"]][0]:
            out[str(p["protection"])] = (float(p["ssim"]), str(p["strongest attack"]))
    return out


def section_table3(stats: Stats, points: pd.DataFrame) -> Section | None:
    if "table3" not in stats.tables():
        return None
    frame, display = grid(stats, "table3", ["label"], ["metric"])
    strongest = _strongest_by_label(points)
    frame["strongest attack ssim"] = [strongest.get(str(lab), (None, ""))[0] for lab in frame["label"]]
    display["strongest attack ssim"] = [fmt(v) for v in frame["strongest attack ssim"]]
    display["strongest attack"] = [strongest.get(str(lab), (None, ""))[1] for lab in frame["label"]]
    for metric in ("top1", "top5", "l1", "ssim"):
        paper = [
            PAPER_TABLE3[r][metric] if (r := table3_row(str(lab))) is not None else None
            for lab in frame["label"]
        ]
        frame[f"paper {metric}"] = paper
        display[f"paper {metric}"] = [fmt(v) for v in paper]
    return Section(
        "table3",
        "Table 3: perturbations of the features, alone and with a DPM",
        f"Ours: C's top-1/top-5 on the protected test features, R's L1 and SSIM from them, and the strongest "
        f"attack on the protected pool (the frontier's privacy measure; the paper measured R only). Paper: "
        f"{DEEP_POISONING}, ResNet-101 on ImageNet halves (its perturbations' parameters are lost).",
        frame,
        display,
        paper_columns=[f"paper {m}" for m in ("top1", "top5", "l1", "ssim")],
    )


def section_protections(stats: Stats) -> Section | None:
    """Each protection against every attack on its pool (Table 3's cost beside it), and the strongest."""
    attack_cells = stats.table("attack")
    labels = protection_labels(stats.table("table3"))
    if attack_cells.empty or not labels:
        return None
    protected = attack_cells[
        attack_cells.label.str.endswith(f" on {PROTECTED}") & (attack_cells.metric == "ssim")
    ]
    attacks_seen = list(dict.fromkeys(str(x).removesuffix(f" on {PROTECTED}") for x in protected.label))
    numeric, shown = [], []
    for victim in dict.fromkeys(str(v) for v in protected.entity):
        num: dict[str, Any] = {"victim": victim, "protection": labels.get(victim, "")}
        dis: dict[str, Any] = {"victim": victim, "protection": labels.get(victim, "")}
        for metric in ("top1", "ssim"):
            cell = stats.by_key.get(("table3", None, labels.get(victim, ""), victim, metric))
            num[f"table3 {metric}"] = None if cell is None else cell["mean"]
            dis[f"table3 {metric}"] = _stat(cell, stats.n_runs)
        best: tuple[float, str] | None = None
        for name in attacks_seen:
            cell = stats.by_key.get(("attack", None, f"{name} on {PROTECTED}", victim, "ssim"))
            num[f"{name} ssim"] = None if cell is None else cell["mean"]
            dis[f"{name} ssim"] = _stat(cell, stats.n_runs)
            if cell is not None and (best is None or cell["mean"] > best[0]):
                best = (float(cell["mean"]), name)
        num["strongest ssim"], num["strongest"] = (best[0], best[1]) if best else (None, None)
        dis["strongest ssim"], dis["strongest"] = (fmt(best[0]), best[1]) if best else ("", "")
        numeric.append(num)
        shown.append(dis)
    return Section(
        "protections",
        "Protections against every attack on their pool",
        "Per victim, its declared protection, what it costs (Table 3: C's top-1 on its protected test "
        "features) and hides from R (Table 3's SSIM), and the SSIM of each attack's reconstructions of its "
        "protected pooled features, the strongest last."
        + (f" Mean ± SD over {stats.n_runs} seeds." if stats.n_runs > 1 else ""),
        pd.DataFrame(numeric),
        pd.DataFrame(shown).fillna(""),
    )


def section_table4(stats: Stats, points: pd.DataFrame) -> Section | None:
    """Table 4's comparison: no protection, a shared obfuscator, a private DPM; R's SSIM (the paper's
    "privacy reconstruction"), a holder's (its "image sharing reconstruction"), and the strongest attack."""
    labels = protection_labels(stats.table("table3"))
    attack_cells = stats.table("attack")
    held_by = attack_cells.label.str.contains(f": {HOLDER} on {PROTECTED}", regex=False)
    holders = attack_cells[held_by & (attack_cells.metric == "ssim")]
    if holders.empty:
        return None
    strongest = {
        str(p["victim"]): (float(p["ssim"]), str(p["strongest attack"])) for _, p in points.iterrows()
    }
    numeric, shown = [], []
    for paper_row, ours in PAPER_TABLE4_ROWS.items():
        for victim in [v for v, lab in labels.items() if lab == ours]:
            top1 = stats.by_key.get(("table3", None, ours, victim, "top1"))
            r_ssim = stats.by_key.get(("table3", None, ours, victim, "ssim"))
            held = holders[holders.entity == victim]
            holder = None if held.empty else held.iloc[0]
            paper = PAPER_TABLE4[paper_row]
            best = strongest.get(victim)
            num = {
                "paper row": paper_row,
                "victim": victim,
                "protection": ours,
                "top1": None if top1 is None else top1["mean"],
                "R ssim": None if r_ssim is None else r_ssim["mean"],
                "holder ssim": None if holder is None else holder["mean"],
                "strongest ssim": None if best is None else best[0],
                "paper utility mAP": paper["utility"],
                "paper R ssim": paper["r_ssim"],
                "paper holder ssim": paper["holder_ssim"],
            }
            numeric.append(num)
            shown.append(
                {
                    "paper row": paper_row,
                    "victim": victim,
                    "protection": ours,
                    "top1": _stat(top1, stats.n_runs),
                    "R ssim": _stat(r_ssim, stats.n_runs),
                    "holder ssim": "no holder attacked" if holder is None else _stat(holder, stats.n_runs),
                    "strongest ssim": "" if best is None else f"{fmt(best[0])} ({best[1]})",
                    "paper utility mAP": fmt(paper["utility"]),
                    "paper R ssim": fmt(paper["r_ssim"]),
                    "paper holder ssim": fmt(paper["holder_ssim"]) if paper["holder_ssim"] else "denied",
                }
            )
    if not numeric:
        return None
    return Section(
        "table4",
        "Table 4: a shared obfuscator against a private DPM",
        "R's SSIM from the protected test features (the paper's 'privacy reconstruction'), the SSIM of a "
        "holder of the victim's protector inverting its pooled features (protection-holder: the paper's "
        "'image sharing reconstruction', where a collaborator holds the shared obfuscator; against a private "
        "DPM it holds another entity's), and the strongest attack of all. Utility: ours is C's top-1 on the "
        f"protected features, the paper's the mAP of 20 CelebA attributes. Paper: {DEEP_POISONING}, VGG on "
        "CelebA (DeepObfuscator as the shared obfuscator)."
        + (f" Mean ± SD over {stats.n_runs} seeds." if stats.n_runs > 1 else ""),
        pd.DataFrame(numeric),
        pd.DataFrame(shown),
        paper_columns=["paper utility mAP", "paper R ssim", "paper holder ssim"],
    )


# Table 4's rows and the Table 3 label of the protection that plays each here
PAPER_TABLE4_ROWS = {"w/o protection": "none", "DeepObfuscator": "shared obfuscator", "DPM": "DPM"}


def sections(sweep: Sweep, stats: Stats, out: Path) -> list[Section | None]:
    """The protection sections, in the report's order."""
    points = frontier_points(sweep.runs)
    return [
        section_table3(stats, points),
        section_table4(stats, points),
        section_protections(stats),
        section_frontier(points, len(sweep.runs), out),
    ]
