"""Plots from a run's result records (files only; matplotlib with the Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def rd_curve_plot(curve: pd.DataFrame, path: Path) -> Path:
    """PSNR and SSIM against the rate in bits per value: the codes at each k of the sweep (rate as the paper
    counts it, and with 8-bit values), JPEG at each quality (whole file, and payload without headers).

    curve: the "rd_curve" records pivoted by label (rows "codes k=..." and "jpeg q=...").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codes = curve[[label.startswith("codes") for label in curve.index]].sort_values("rate_bpv")
    jpegs = curve[[label.startswith("jpeg") for label in curve.index]].sort_values("rate_bpv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, name in ((axes[0], "psnr_mean", "PSNR (dB)"), (axes[1], "ssim_mean", "SSIM")):
        if len(codes):
            ax.plot(codes["rate_bpv"], codes[metric], "o-", label="codes, support only (paper)")
            ax.plot(codes["rate_bpv_q8"], codes[metric], "o--", label="codes, support + 8-bit values")
        if len(jpegs):
            ax.plot(jpegs["rate_bpv"], jpegs[metric], "s-", label="JPEG, whole file")
            ax.plot(jpegs["payload_bpv"], jpegs[metric], "s--", label="JPEG, without headers")
        ax.set_xlabel("rate (bits per value, 3 values per pixel)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Rate-distortion on the data owner's test images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
