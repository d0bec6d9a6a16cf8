"""The backbone registry: every declared backbone builds, and each split's declared stride is F's real one."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from entities import nets
from entities.registry import BACKBONE_SPLITS, BACKBONES

SIDE = 64  # a multiple of every declared stride, so each feature map is exactly SIDE / stride wide
EVERY_SPLIT = [(b, s) for b, points in BACKBONE_SPLITS.items() for s in points]


def test_every_declared_backbone_has_a_builder() -> None:
    assert BACKBONES.missing() == []
    assert set(BACKBONES.names) == set(BACKBONE_SPLITS)


@pytest.mark.parametrize(("backbone", "split"), EVERY_SPLIT, ids=[f"{b}-{s}" for b, s in EVERY_SPLIT])
def test_the_declared_stride_is_the_featurizers_and_r_undoes_it(backbone: str, split: str) -> None:
    featurizer, decider = nets.build_classifier(backbone, split, num_classes=5)
    channels, height, width = nets.feature_shape(featurizer, SIDE)
    assert (height, width) == (SIDE // nets.stride(backbone, split),) * 2
    recon = nets.build_reconstructor(
        channels, backbone=backbone, split=split, width=8, blocks_per_upscale=1, output="clamp"
    )
    with torch.no_grad():
        features = featurizer.eval()(torch.zeros(1, 3, SIDE, SIDE))
        assert decider.eval()(features).shape == (1, 5)
        assert recon.eval()(features).shape == (1, 3, SIDE, SIDE)


@pytest.mark.parametrize(
    ("backbone", "make"),
    [("resnet18", torchvision.models.resnet18), ("vgg16_bn", torchvision.models.vgg16_bn)],
)
def test_f_and_c_are_the_torchvision_nets_own_layers_with_the_same_seeded_init(backbone, make) -> None:
    """A split only regroups the net's modules: a seeded run initialises the same weights as before."""
    split = list(BACKBONE_SPLITS[backbone])[1]
    torch.manual_seed(0)
    featurizer, decider = nets.build_classifier(backbone, split, num_classes=5)
    torch.manual_seed(0)
    whole = make(weights=None, num_classes=5)
    ours = [t for m in (featurizer, decider) for t in m.state_dict().values()]
    theirs = list(whole.state_dict().values())
    assert len(ours) == len(theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_a_tiny_vgg_split_runs_f_c_and_r_at_32_pixels() -> None:
    torch.manual_seed(0)
    featurizer, decider = nets.build_classifier("vgg16_bn", "block3", num_classes=3)
    assert nets.feature_shape(featurizer, 32) == (256, 4, 4)  # block3: 256 channels after the third pool
    recon = nets.build_reconstructor(
        256, backbone="vgg16_bn", split="block3", width=8, blocks_per_upscale=1, output="minmax"
    )
    images = torch.rand(2, 3, 32, 32)  # two: BatchNorm trains on a batch
    features = featurizer(images)
    logits, back = decider(features), recon(features)
    assert features.shape == (2, 256, 4, 4) and logits.shape == (2, 3) and back.shape == images.shape
    (nn.functional.cross_entropy(logits, torch.tensor([0, 1])) + (back - images).abs().mean()).backward()
    assert all(p.grad is not None for p in featurizer.parameters())


def test_a_split_the_backbone_lacks_names_its_splits() -> None:
    with pytest.raises(ValueError, match="vgg16_bn has no split 'conv2_x'; its splits: block1, block2"):
        nets.build_classifier("vgg16_bn", "conv2_x", num_classes=3)
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'; known: resnet18, "):
        nets.build_classifier("vgg19", "block1", num_classes=3)
