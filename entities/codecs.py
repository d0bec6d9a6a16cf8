"""Classical codecs behind one interface (CompressAI style: a codec returns the decoded images and the rate
it measured), so that learned codes are compared with them at a matched, measured rate.

Units: "bpp" is bits per pixel (H*W), from the real encoded bytes; "bpv" is bits per value (3*H*W), the
unit of the sparse-codes paper's rate.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from entities.metrics import ssim
from entities.registry import CODECS

PSNR_CAP_DB = 100.0  # identical images: a finite cap, so that means stay finite


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1] (data_range=1), capped at PSNR_CAP_DB."""
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return (-10 * torch.log10(mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))).clamp_max(PSNR_CAP_DB)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, 3, H, W) tensor, got {tuple(images.shape)}")
    if float(images.min()) < 0 or float(images.max()) > 1:
        raise ValueError("images must lie in [0, 1]")


def jpeg_header_bytes(data: bytes) -> int:
    """Bytes of a baseline JPEG file up to the end of its first start-of-scan header (markers, quantisation
    and Huffman tables), which on small images are most of the file (~620 bytes with Pillow's tables).
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file (no SOI marker)")
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise ValueError(f"malformed JPEG: no marker at byte {offset}")
        marker = data[offset + 1]
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        offset += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return offset
    raise ValueError("malformed JPEG: no start-of-scan marker")


@CODECS.register("jpeg")
def jpeg(images: torch.Tensor, quality: int) -> dict:
    """Real JPEG (Pillow, in memory, default 4:2:0 chroma subsampling) of each image at `quality`.

    Returns {"images": decoded (N, 3, H, W) in [0, 1], "bpp": mean 8*bytes/(H*W), "bpv": bpp/3,
    "sizes": encoded bytes per image, "quality", "payload_bpp": bpp without the header bytes}. "bpp" counts
    the whole file; "payload_bpp" is what a codec whose tables are shared in advance would pay.
    """
    _check_images(images)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    pixels = np.rint(images.detach().cpu().float().clamp(0, 1).numpy() * 255).astype(np.uint8)
    decoded, sizes, headers = [], [], []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(
            buffer, format="JPEG", quality=quality
        )
        sizes.append(buffer.tell())
        headers.append(jpeg_header_bytes(buffer.getvalue()))
        buffer.seek(0)
        with Image.open(buffer) as encoded:
            decoded.append(np.asarray(encoded.convert("RGB")).transpose(2, 0, 1))
    h, w = images.shape[-2:]
    bpp = float(np.mean([8 * s / (h * w) for s in sizes]))
    payload = float(np.mean([8 * (s - e) / (h * w) for s, e in zip(sizes, headers, strict=True)]))
    out = torch.from_numpy(np.stack(decoded)).float().div_(255.0)
    return {
        "images": out,
        "bpp": bpp,
        "bpv": bpp / 3,
        "sizes": sizes,
        "quality": quality,
        "payload_bpp": payload,
    }


def jpeg_at_rate(images: torch.Tensor, target_bpv: float, *, count: str = "file") -> dict:
    """JPEG at the largest quality in 1..95 whose measured mean bits per value is <= target_bpv.

    count "file": the whole file; "payload": without its header bytes (as when the tables are agreed in
    advance). Bisection (size grows with quality). When even quality 1 is over the target, quality 1 is
    returned (the closest rate JPEG can reach) with "met": False. Same keys as `jpeg`, plus "met".
    """
    if target_bpv <= 0:
        raise ValueError(f"target_bpv must be positive, got {target_bpv}")
    if count not in ("file", "payload"):
        raise ValueError(f"count must be 'file' or 'payload', got {count!r}")
    _check_images(images)

    def rate(out: dict) -> float:
        return float(out["bpv"] if count == "file" else out["payload_bpp"] / 3)

    lo, hi = 1, 95
    best = jpeg(images, lo)
    if rate(best) > target_bpv:
        return {**best, "met": False}
    while lo < hi:  # invariant: quality lo meets the target
        mid = (lo + hi + 1) // 2
        trial = jpeg(images, mid)
        if rate(trial) <= target_bpv:
            lo, best = mid, trial
        else:
            hi = mid - 1
    return {**best, "met": True}


def measure(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """PSNR and SSIM (data_range=1) of reconstructions y against originals x: mean and std over images."""
    p = psnr(x, y)
    s = ssim(x.float(), y.float())

    def std(v: torch.Tensor) -> float:
        return float(v.std()) if len(v) > 1 else 0.0

    return {
        "psnr_mean": float(p.mean()),
        "psnr_std": std(p),
        "ssim_mean": float(s.mean()),
        "ssim_std": std(s),
        "n": float(len(p)),
    }
