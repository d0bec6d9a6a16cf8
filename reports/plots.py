"""Plots from a run's result records (files only; matplotlib with the Agg backend, no display)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Save `fig` as path (PNG) and beside it in the other formats, each written atomically; close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in formats:
        target = path.with_suffix(f".{ext}")
        tmp = target.with_name(f".{target.stem}.tmp.{ext}")
        fig.savefig(tmp, dpi=110)
        tmp.replace(target)
        out.append(target)
    _pyplot().close(fig)
    return out


def rd_curve_plot(curve: pd.DataFrame, path: Path, formats: tuple[str, ...] = ("png",)) -> Path:
    """PSNR and SSIM against the rate in bits per value: the codes at each k of the sweep (rate as the paper
    counts it, and with 8-bit values), JPEG at each quality (whole file, and payload without headers).

    curve: the "rd_curve" records pivoted by label (rows "codes k=..." and "jpeg q=...").
    """
    plt = _pyplot()
    codes = curve[[label.startswith("codes") for label in curve.index]].sort_values("rate_bpv")
    jpegs = curve[[label.startswith("jpeg") for label in curve.index]].sort_values("rate_bpv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, name in (
        (axes[0], "psnr_mean", "PSNR (dB)"),
        (axes[1], "ssim_mean", "SSIM (data range 1)"),
    ):
        if len(codes):
            ax.plot(codes["rate_bpv"], codes[metric], "o-", label="codes, support only (paper's rate)")
            if "rate_bpv_q8" in codes:
                ax.plot(codes["rate_bpv_q8"], codes[metric], "o--", label="codes, support + 8-bit values")
            if "k" in codes:
                for rate, value, k in zip(codes["rate_bpv"], codes[metric], codes["k"], strict=True):
                    ax.annotate(
                        f"k={k:g}", (rate, value), textcoords="offset points", xytext=(4, 6), fontsize=7
                    )
        if len(jpegs):
            ax.plot(jpegs["rate_bpv"], jpegs[metric], "s-", label="JPEG, whole file")
            if "payload_bpv" in jpegs:
                ax.plot(jpegs["payload_bpv"], jpegs[metric], "s--", label="JPEG, without headers")
        ax.set_xscale("log")
        ax.set_xlabel("rate (bits per value, 3 values per pixel; log scale)")
        ax.set_ylabel(name)
        ax.set_title(name.split(" (")[0] + " against rate")
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Rate-distortion on the data owner's test images")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, path, formats)[0]


def table5_bars(
    table: pd.DataFrame, path: Path, n_runs: int, formats: tuple[str, ...] = ("png", "svg")
) -> Path:
    """Table 5 as grouped bars: ours (mean, 95% t-interval over seeds when there are several) beside the
    paper's, top-1 and top-5.

    table: one line per our row: columns row, label, and for m in top1/top5: m (mean), m_lo, m_hi, paper_m.
    """
    plt = _pyplot()
    metrics = [m for m in ("top1", "top5") if m in table]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(7.0, 0.9 * len(table) + 2), 3.6 * len(metrics)))
    axes = np.atleast_1d(axes)
    x = np.arange(len(table))
    width = 0.38
    for ax, metric in zip(axes, metrics, strict=True):
        ours = table[metric].to_numpy(dtype=float)
        err = None
        if n_runs > 1 and f"{metric}_lo" in table:
            lo = table[f"{metric}_lo"].to_numpy(dtype=float)
            hi = table[f"{metric}_hi"].to_numpy(dtype=float)
            err = np.vstack([ours - lo, hi - ours])
        spread = f", 95% t-interval over {n_runs} seeds" if err is not None else " (one seed)"
        ax.bar(x - width / 2, ours, width, yerr=err, capsize=3, label=f"ours{spread}", color="#3b6ea8")
        paper = table.get(f"paper_{metric}")
        if paper is not None:
            p = pd.to_numeric(paper, errors="coerce").to_numpy(dtype=float)
            ax.bar(
                x + width / 2, np.nan_to_num(p), width, label="paper (ImageNet, ResNet-50)", color="#c98b2b"
            )
            for xi, pi in zip(x, p, strict=True):
                if np.isnan(pi):
                    ax.text(xi + width / 2, 1, "n/a", ha="center", fontsize=7, color="#777")
        paper_rows = table.get("paper_row", pd.Series([None] * len(table)))
        wrap = max(10, int(110 / max(len(table), 1)))  # characters per line: the labels must not overlap
        ticks = [
            f"{int(r)}{'' if pd.isna(p) else f' (paper {int(p)})'}\n{textwrap.fill(str(label), wrap)}"
            for r, p, label in zip(table["row"], paper_rows, table["label"], strict=True)
        ]
        ax.set_xticks(x, ticks, fontsize=7)
        ax.set_ylabel(f"{'top-1' if metric == 'top1' else 'top-5'} accuracy (%)")
        ax.set_ylim(0, 118)
        ax.set_yticks(range(0, 101, 20))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", ncol=2, frameon=False)
    axes[-1].set_xlabel("our Table 5 row (the paper's row it matches by entity and data mix)")
    fig.suptitle("Table 5: entity collaboration, ours beside the paper's")
    fig.tight_layout()
    return save(fig, path, formats)[0]


def training_plot(
    curves: pd.DataFrame, title: str, path: Path, n_runs: int, formats: tuple[str, ...] = ("png", "svg")
) -> Path:
    """Loss per epoch of the nets of one kind: one line per net and party (mean over the runs, with a
    band of ± one SD when there are several).

    curves: columns label, entity, row (the epoch, 1-based), mean, sd.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    lines = list(dict.fromkeys(zip(curves["label"], curves["entity"], strict=True)))
    cmap = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    positive = bool((curves["mean"] > 0).all())
    single = set(curves["label"]) == {title}  # every line is the same net: name the parties only
    for i, (label, entity) in enumerate(lines):
        c = curves[(curves["label"] == label) & (curves["entity"] == entity)].sort_values("row")
        epochs = c["row"].to_numpy(dtype=float)
        mean = c["mean"].to_numpy(dtype=float)
        name = entity if single else f"{label}, {entity}"
        # a dash per line, so that lines which coincide (a row retraining the leader's net) stay visible
        dash = ("-", "--", "-.", ":")[i % 4]
        ax.plot(
            epochs,
            mean,
            dash,
            marker="o" if len(c) <= 15 else None,
            ms=3,
            lw=1.4,
            color=cmap(i % cmap.N),
            label=name,
        )
        if n_runs > 1 and "sd" in c:
            sd = np.nan_to_num(c["sd"].to_numpy(dtype=float))
            low = mean - sd if not positive else np.maximum(mean - sd, mean * 0.05)
            ax.fill_between(epochs, low, mean + sd, color=cmap(i % cmap.N), alpha=0.15, lw=0)
    values = curves["mean"].to_numpy(dtype=float)
    if positive and len(values) and values.max() / max(values.min(), 1e-12) > 20:
        ax.set_yscale("log")
        ax.set_ylabel("mean training loss per epoch (log scale)")
    else:
        ax.set_ylabel("mean training loss per epoch")
    ax.set_xlabel("epoch (a small training set gets more epochs: at least min_steps updates)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    spread = f"; mean ± SD over {n_runs} seeds" if n_runs > 1 else ""
    ax.set_title(f"Training loss: {title}{spread}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return save(fig, path, formats)[0]


def attack_bars(
    bars: pd.DataFrame,
    path: Path,
    n_runs: int,
    threshold: float | None = None,
    chance: float | None = None,
    formats: tuple[str, ...] = ("png", "svg"),
) -> Path:
    """Each attack's success, grouped by attack, one bar per victim (95% t-interval over seeds when there
    are several): SSIM on the pooled features, support recovery on the codes. On a protected victim's bar,
    a black tick: the same attack on that victim's unprotected features (what the protection is worth).

    bars: reports.attacks.scores (attack, on, victim, metric, mean, lo, hi, unprotected).
    threshold: the verdict's SSIM above which a protection counts as broken; chance: a random guess's
    support recovery.
    """
    plt = _pyplot()
    panels = [
        (
            bars[bars.victim != "codes"],
            "Deep Poisoning: pooled features",
            "SSIM of the reconstructions (data range 1)",
        ),
        (
            bars[bars.victim == "codes"],
            "Ambiguation: published codes",
            "support recovery (share of the true support)",
        ),
    ]
    panels = [p for p in panels if len(p[0])]
    # Horizontal bars, panels stacked: attack names run to 50 characters, which no x axis holds legibly.
    rows = [len(dict.fromkeys(p[0].attack)) * max(1, len(dict.fromkeys(p[0].victim))) for p in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9.0, 0.24 * sum(rows) + 1.1 * len(panels) + 1.2),
        height_ratios=[r + 3 for r in rows],
        squeeze=False,
    )
    cmap = plt.get_cmap("tab10")
    colors = {v: cmap(i % 10) for i, v in enumerate(dict.fromkeys(bars.victim))}  # a victim's colour in both
    for ax, (sub, title, xlabel) in zip(axes[:, 0], panels, strict=True):
        attacks = list(dict.fromkeys(sub.attack))
        victims = list(dict.fromkeys(sub.victim))
        height = 0.8 / len(victims)
        for j, victim in enumerate(victims):
            v = sub[sub.victim == victim].set_index("attack").reindex(attacks)
            y = np.arange(len(attacks)) - 0.4 + height * (j + 0.5)
            mean = v["mean"].to_numpy(dtype=float)
            err = None
            if n_runs > 1:  # drawn within the score's range (the table has the interval itself)
                lo = np.maximum(v["lo"].to_numpy(dtype=float), np.minimum(mean, 0.0))
                hi = np.minimum(v["hi"].to_numpy(dtype=float), 1.0)
                err = np.nan_to_num(np.vstack([mean - lo, hi - mean]))
            name = "the data owner's codes" if victim == "codes" else f"victim {victim} (protected features)"
            ax.barh(y, mean, height * 0.92, xerr=err, capsize=2, color=colors[victim], label=name)
            ref = pd.to_numeric(v["unprotected"], errors="coerce").to_numpy(dtype=float)
            if not np.isnan(ref).all():
                ax.vlines(
                    ref,
                    y - height * 0.46,
                    y + height * 0.46,
                    colors="black",
                    lw=2.5,
                    zorder=3,
                    label="same attack on the victim's unprotected (original) features" if j == 0 else None,
                )
        if victims != ["codes"] and threshold is not None:
            ax.axvline(
                threshold, color="#d9534f", ls=":", lw=1.3, label=f"verdict: broken above SSIM {threshold:g}"
            )
        if victims == ["codes"] and chance is not None:
            ax.axvline(chance, color="#777", ls="--", lw=1.3, label=f"chance: a random guess ({chance:.2f})")
        ax.set_yticks(np.arange(len(attacks)), attacks, fontsize=8)
        ax.set_ylim(len(attacks) - 0.5, -0.5)  # the first attack on top, as in the table
        ax.set_xlim(min(0.0, float(np.nanmin(sub["mean"]))), 1.05)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    handles: dict[str, Any] = {}  # one legend under the panels, each entry once
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    spread = f"; mean and 95% t-interval over {n_runs} seeds" if n_runs > 1 else " (one seed)"
    fig.suptitle(f"Attack success per attack and victim{spread}", fontsize=11)
    fig.tight_layout(rect=(0, (0.3 + 0.17 * ((len(handles) + 1) // 2)) / fig.get_figheight(), 1, 1))
    return save(fig, path, formats)[0]


def privacy_utility_plot(
    points: pd.DataFrame, path: Path, n_runs: int, formats: tuple[str, ...] = ("png", "svg")
) -> Path:
    """Privacy against utility: one point per victim and protection, x the best attack's SSIM on it, y C's
    top-1 on the same features; a victim's unprotected and protected points joined by a grey line.

    points: reports.attacks.privacy_utility (victim, protection, ssim[_lo, _hi], top1[_lo, _hi]).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    # (marker, size, face, colour, legend): the unprotected point hollow and larger, so that
    # a protection that changed nothing still shows both points
    styles = {
        "unprotected": ("o", 11, "none", "#555555", "unprotected: original features"),
        "protected": ("s", 6, "#3b6ea8", "#3b6ea8", "Deep Poisoning: DPM-poisoned features"),
    }
    for _, pair in points.groupby("victim", sort=False):
        if len(pair) == 2:
            ax.plot(pair["ssim"], pair["top1"], "-", color="#bbbbbb", lw=1, zorder=1)
    for protection, (marker, size, face, color, name) in styles.items():
        p = points[points.protection == protection]
        if not len(p):
            continue
        xerr = yerr = None
        if n_runs > 1:
            xerr = np.nan_to_num(np.vstack([p["ssim"] - p["ssim_lo"], p["ssim_hi"] - p["ssim"]]))
            yerr = np.nan_to_num(np.vstack([p["top1"] - p["top1_lo"], p["top1_hi"] - p["top1"]]))
        ax.errorbar(
            p["ssim"],
            p["top1"],
            xerr=xerr,
            yerr=yerr,
            fmt=marker,
            color=color,
            mfc=face,
            ms=size,
            capsize=3,
            label=name,
            zorder=2,
        )
    named = points.drop_duplicates("victim", keep="last")  # one name per victim: its protected point's
    placed: list[tuple[float, float]] = []
    for x, y, victim in zip(named["ssim"], named["top1"], named["victim"], strict=True):
        # victims often share a point (C's top-1 is one number): stack their names instead of overprinting
        near = sum(abs(x - px) < 0.04 and abs(y - py) < 4 for px, py in placed)
        placed.append((x, y))
        ax.annotate(str(victim), (x, y), textcoords="offset points", xytext=(8, 6 + 11 * near), fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 105)
    ax.set_xlabel(
        "privacy lost: the best attack's SSIM on the victim's images\n(data range 1; lower is more private)"
    )
    ax.set_ylabel("utility: top-1 accuracy of C on the victim's features (%)")
    spread = f"; mean and 95% t-interval over {n_runs} seeds" if n_runs > 1 else " (one seed)"
    ax.set_title(f"Privacy against utility, per victim{spread}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    fig.tight_layout()
    return save(fig, path, formats)[0]
