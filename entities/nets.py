"""The nets of the Deep Poisoning pipeline: featurizer F, decider C, reconstructor R and DPM P.

A torchvision backbone is cut at a named split point (entities.registry.BACKBONE_SPLITS) into F
(everything up to and including that point) and C (the rest). ResNets split after a stage (the ResNet
paper's names: conv2_x is torchvision's `layer1`), VGG after a conv block's max-pool (block1..block5).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from entities.registry import BACKBONE_SPLITS, BACKBONES, Splitter

_LAYERS = ("layer1", "layer2", "layer3", "layer4")  # conv2_x..conv5_x


def _resnet(make: Callable[..., torchvision.models.ResNet]) -> Splitter:
    def build(*, depth: int, num_classes: int) -> tuple[nn.Sequential, nn.Sequential]:
        net = make(weights=None, num_classes=num_classes)  # weights=None: never download
        featurizer = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, *(getattr(net, n) for n in _LAYERS[:depth])
        )
        decider = nn.Sequential(
            *(getattr(net, n) for n in _LAYERS[depth:]), net.avgpool, nn.Flatten(1), net.fc
        )
        return featurizer, decider

    return build


for _name, _make in (
    ("resnet18", torchvision.models.resnet18),
    ("resnet34", torchvision.models.resnet34),
    ("resnet50", torchvision.models.resnet50),
    ("resnet101", torchvision.models.resnet101),
):
    BACKBONES.register(_name)(_resnet(_make))


@BACKBONES.register("vgg16_bn")
def vgg16_bn(*, depth: int, num_classes: int) -> tuple[nn.Sequential, nn.Sequential]:
    net = torchvision.models.vgg16_bn(weights=None, num_classes=num_classes)
    layers = list(net.features)
    pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    cut = pools[depth - 1] + 1
    featurizer = nn.Sequential(*layers[:cut])
    decider = nn.Sequential(*layers[cut:], net.avgpool, nn.Flatten(1), net.classifier)
    return featurizer, decider


def stride(backbone: str, split: str) -> int:
    """How much F downsamples the input when `backbone` is cut at `split`."""
    BACKBONES.get(backbone)  # an unknown backbone: the error lists the known ones
    points = BACKBONE_SPLITS[backbone]
    if split not in points:
        raise ValueError(f"{backbone} has no split {split!r}; its splits: {', '.join(points)}")
    return points[split]


def build_classifier(backbone: str, split: str, num_classes: int) -> tuple[nn.Sequential, nn.Sequential]:
    """A fresh (untrained) backbone, split into featurizer F and decider C."""
    stride(backbone, split)  # a clear error for a split this backbone lacks
    depth = list(BACKBONE_SPLITS[backbone]).index(split) + 1
    return BACKBONES.get(backbone)(depth=depth, num_classes=num_classes)


def feature_shape(featurizer: nn.Module, image_size: int) -> tuple[int, int, int]:
    with torch.no_grad():
        was_training = featurizer.training
        featurizer.eval()
        shape = featurizer(torch.zeros(1, 3, image_size, image_size)).shape[1:]
        featurizer.train(was_training)
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def inverse_layers(channels: int, width: int) -> list[nn.Module]:
    """CONV-BN-CONV-BN-CONV: the body of the paper's inverse bottleneck block."""
    return [
        nn.Conv2d(channels, width, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.Conv2d(width, channels, 1),
    ]


class InverseBottleneck(nn.Module):
    """CONV-BN-CONV-BN-CONV-ReLU, the paper's building block of R."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.body = nn.Sequential(*inverse_layers(channels, width), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Reconstructor(nn.Module):
    """R: inverts F. Blocks before each x2 upscale, then CONV-BN-ReLU-CONV to an image in [0, 1]."""

    def __init__(self, in_channels: int, upscales: int, *, width: int, blocks_per_upscale: int, output: str):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(upscales):
            layers += [InverseBottleneck(channels, width) for _ in range(blocks_per_upscale)]
            # halve the channels as the resolution doubles, mirroring the featurizer (and 4x cheaper)
            out = max(channels // 2, 16)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, out, 1)]
            channels = out
        layers += [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 3, 3, padding=1),
        ]
        self.body = nn.Sequential(*layers)
        self.output = output

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y = self.body(features)
        if self.output == "clamp":
            return y.clamp(0, 1)
        # min-max normalisation per image, as in the paper's default reconstructor
        lo = y.amin(dim=(1, 2, 3), keepdim=True)
        hi = y.amax(dim=(1, 2, 3), keepdim=True)
        return (y - lo) / (hi - lo + 1e-6)


def build_reconstructor(
    featurizer_channels: int,
    *,
    backbone: str,
    split: str,
    width: int,
    blocks_per_upscale: int,
    output: str,
) -> Reconstructor:
    """An untrained R that upsamples F's features back to the image's side: x2 per halving in F."""
    upscales = int(math.log2(stride(backbone, split)))
    return Reconstructor(
        featurizer_channels, upscales, width=width, blocks_per_upscale=blocks_per_upscale, output=output
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, width: int):
        super().__init__()
        last = nn.BatchNorm2d(channels)
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, 3, padding=1, bias=False),
            last,
        )
        # start as the identity, so P(F(x)) = F(x) before poisoning begins
        nn.init.zeros_(last.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the backbones' features are post-ReLU; keep the poisoned ones in the same (non-negative) space
        return torch.relu(x + self.body(x))


class DPM(nn.Sequential):
    """P: the Deep Poisoning Module, a private stack of residual blocks between F and C."""

    def __init__(self, channels: int, *, blocks: int, width: int):
        super().__init__(*(ResidualBlock(channels, width) for _ in range(blocks)))
