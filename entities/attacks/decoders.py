"""The attacker's decoders (feature -> image) and the small helpers every pool attack shares.

`Decoder` covers the reconstructor shapes of the Deep Poisoning paper's section 4.2.2, which
`entities.nets.Reconstructor` does not: plain or residual inverse bottleneck blocks, any number of
blocks per upscale, an upscale factor of 2 or 4 per stage, and clamp, min-max or sigmoid output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from entities.data import to_float
from entities.nets import InverseBottleneck, inverse_layers
from entities.rows import Rows
from entities.training import device, fit, to_device

OUTPUTS = ("minmax", "clamp", "sigmoid")


class ResidualInverse(nn.Module):
    """x + (CONV-BN-CONV-BN-CONV)(x), then ReLU: the residual form of the paper's inverse block."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.body = nn.Sequential(*inverse_layers(channels, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


@dataclass(frozen=True)
class Shape:
    """A decoder's shape: the knobs of the paper's section 4.2.2."""

    width: int = 32
    blocks_per_upscale: int = 2
    upscale: int = 2
    residual: bool = False
    output: str = "minmax"

    def label(self) -> str:
        kind = "residual" if self.residual else "plain"
        return f"{kind}, {self.blocks_per_upscale} blocks/upscale, x{self.upscale}, {self.output}"


class Decoder(nn.Module):
    """Inverts features of spatial size side/factor back to side x side images in [0, 1]."""

    def __init__(self, in_channels: int, factor: int, shape: Shape):
        super().__init__()
        if shape.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {shape.output!r}")
        if shape.upscale < 2:
            raise ValueError(f"upscale must be at least 2, got {shape.upscale}")
        stages = round(math.log(factor, shape.upscale)) if factor > 1 else 0
        if shape.upscale**stages != factor:
            raise ValueError(f"a x{shape.upscale} upscale cannot make up a total factor of {factor}")
        block = ResidualInverse if shape.residual else InverseBottleneck
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(stages):
            layers += [block(channels, shape.width) for _ in range(shape.blocks_per_upscale)]
            out = max(channels // shape.upscale, 16)
            layers += [nn.Upsample(scale_factor=shape.upscale, mode="nearest"), nn.Conv2d(channels, out, 1)]
            channels = out
        layers += [
            nn.Conv2d(channels, shape.width, 3, padding=1, bias=False),
            nn.BatchNorm2d(shape.width),
            nn.ReLU(inplace=True),
            nn.Conv2d(shape.width, 3, 3, padding=1),
        ]
        self.body = nn.Sequential(*layers)
        self.output = shape.output

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y = self.body(features)
        if self.output == "clamp":
            return y.clamp(0, 1)
        if self.output == "sigmoid":
            return torch.sigmoid(y)
        lo = y.amin(dim=(1, 2, 3), keepdim=True)
        hi = y.amax(dim=(1, 2, 3), keepdim=True)
        return (y - lo) / (hi - lo + 1e-6)


def as_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 arrays to float in [0, 1]; float tensors as they are."""
    if isinstance(images, np.ndarray):
        return to_float(images)
    return images.float() if images.dtype != torch.uint8 else images.float() / 255.0


def as_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images as the uint8 arrays entities train on."""
    if isinstance(images, np.ndarray):
        return images if images.dtype == np.uint8 else np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)
    if images.dtype == torch.uint8:
        return images.numpy()
    return np.rint(images.detach().float().clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)


def factor_of(images: torch.Tensor, features: torch.Tensor) -> int:
    """How much a decoder must upscale features to reach the images' side."""
    side, feat = images.shape[-1], features.shape[-1]
    if side % feat:
        raise ValueError(f"image side {side} is not a multiple of the feature side {feat}")
    return side // feat


def recipe(
    epochs: int, lr: float = 1e-3, batch_size: int = 32, min_steps: int = 0, weight_decay: float = 0.0
) -> SimpleNamespace:
    """A training recipe (the fields `entities.training.fit` reads), Adam."""
    return SimpleNamespace(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        optimizer="adam",
        min_steps=min_steps,
    )


def train_decoder(
    features: torch.Tensor,
    images: torch.Tensor,
    shape: Shape,
    training: Any,
    *,
    seed: int,
    factor: int | None = None,
    net: str = "decoder",
) -> tuple[Decoder, list[float]]:
    """A fresh Decoder fitted with L1 from features to images (both on the CPU). Returns it (eval, CPU)
    and its per-epoch training loss; `net` names it in progress reports."""
    dev = device()
    torch.manual_seed(seed)
    decoder = Decoder(features.shape[1], factor or factor_of(images, features), shape).to(dev).train()

    def loss(index: torch.Tensor) -> torch.Tensor:
        out = decoder(to_device(features[index].float()))
        return (out - to_device(images[index])).abs().mean()

    history = fit(decoder, recipe=training, n=len(features), loss_fn=loss, seed=seed, net=net)
    return decoder.eval().cpu(), history


DECODE_BATCH = 256  # the batch `apply` uses elsewhere: the same batches, so the same values


@torch.no_grad()
def decode(decoder: nn.Module, features: torch.Tensor | Rows) -> torch.Tensor:
    """Apply a decoder over features in batches, each gathered and made float only when its turn comes
    (a victim's pool is memory-mapped); images on the CPU, clamped into [0, 1]."""
    rows = Rows.of(features)
    if not len(rows):
        return rows[:].float()
    dev = device()
    decoder = decoder.to(dev).eval()
    out = torch.cat([decoder(b.float().to(dev)).cpu() for b in rows.batches(DECODE_BATCH)]).clamp(0, 1)
    decoder.cpu()
    return out


def heldout_l1(decoder: nn.Module, features: torch.Tensor, images: torch.Tensor) -> float:
    """Mean L1 of a decoder on (features, images): the attacker's own validation score."""
    return float((decode(decoder, features) - images).abs().mean())
