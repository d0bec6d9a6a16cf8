"""Image grids as PNG, for the researcher to look at: rows of images side by side, each image framed by
one white pixel, optionally a label left of each row. The referee's attack grids, an entity's Table 2
grid and the data owner's codes grid are all drawn here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

IMAGES = 8  # images per row: the first of each batch, so that grids of the same images line up
MARGIN = 4  # pixels of white around a row's label


def grid_png(*rows: torch.Tensor, n: int = IMAGES, labels: Sequence[str] = ()) -> bytes:
    """A PNG of one row per batch (N, 3, H, W) in [0, 1]: its first n images, side by side. Each image
    takes (H + 2) x (W + 2) pixels; with `labels`, a column of text (one per row) comes first."""
    n = min([n, *(len(r) for r in rows)])
    if n == 0 or not rows:
        raise ValueError("nothing to draw")
    if labels and len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
    strips = []
    for images in rows:
        x = images[:n].detach().float().clamp(0, 1).cpu()
        x = nn.functional.pad(x, (1, 1, 1, 1), value=1.0)
        strips.append(torch.cat(list(x), dim=2))  # (3, H+2, n*(W+2))
    pixels = np.rint(torch.cat(strips, dim=1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if labels:
        image = _labelled(image, labels, row_height=strips[0].shape[1])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _labelled(grid: Image.Image, labels: Sequence[str], row_height: int) -> Image.Image:
    """The grid with a white column on its left holding each row's label, vertically centred."""
    font = ImageFont.load_default(size=max(10, row_height // 4))  # legible on large images too
    measure = ImageDraw.Draw(grid)
    boxes = [measure.textbbox((0, 0), text, font=font) for text in labels]
    width = max(int(right) for _, _, right, _ in boxes) + 2 * MARGIN
    out = Image.new("RGB", (width + grid.width, grid.height), "white")
    out.paste(grid, (width, 0))
    draw = ImageDraw.Draw(out)
    for i, (text, (_, top, _, bottom)) in enumerate(zip(labels, boxes, strict=True)):
        draw.text((MARGIN, (i + 0.5) * row_height - (top + bottom) / 2), text, fill="black", font=font)
    return out


def save_grid(path: Path | str, *rows: torch.Tensor, n: int = IMAGES, labels: Sequence[str] = ()) -> Path:
    """`grid_png` written to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(grid_png(*rows, n=n, labels=labels))
    return path
