"""What an entity does in the Deep Poisoning collaboration: pre-train F, C and R (the leader), train a
private DPM and measure it, featurize for the pool, refine the decider, evaluate.

Each function takes the recipe it uses (entities.recipes), arrays and modules, and returns modules and
numbers; where anything is kept or sent is the caller's business (simulator.stages).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from entities import data, datasets
from entities.data import Images, batch_reader, in_memory, over_batches
from entities.metrics import accuracy, distillation, l1, ssim
from entities.nets import DPM, build_classifier, build_reconstructor, feature_shape
from entities.recipes import BackboneSpec, DPMRecipe, DPMShape, Recipe, ReconstructorSpec, RefineRecipe
from entities.registry import OBJECTIVES
from entities.rows import Rows
from entities.training import apply, device, fit, to_device

StateDict = dict[str, torch.Tensor]


def derive_seed(base: int, *parts: object) -> int:
    """A stable per-task seed, so results do not depend on which node or order runs a task."""
    digest = hashlib.sha256(repr((base, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def to_float(images: np.ndarray) -> torch.Tensor:
    return data.to_float(np.asarray(images))


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips: the one augmentation, for nets trained on raw images."""
    mask = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def shift(x: torch.Tensor, cells: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each feature map by up to `cells` in each direction, zero-filled: random crops for
    features (F is convolutional, so a shifted F(x) is close to F of a shifted x)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (cells, cells, cells, cells))
    dy, dx = torch.randint(0, 2 * cells + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@dataclass
class SharedNets:
    """F, C and R as the leader hands them to everyone (frozen for the DPM stage)."""

    featurizer: nn.Module
    decider: nn.Module
    reconstructor: nn.Module

    def state_dicts(self) -> dict[str, StateDict]:
        return {
            "featurizer": self.featurizer.state_dict(),
            "decider": self.decider.state_dict(),
            "reconstructor": self.reconstructor.state_dict(),
        }


def empty_nets(
    backbone: BackboneSpec, reconstructor: ReconstructorSpec, image_side: int, num_classes: int
) -> SharedNets:
    """Untrained F, C, R of the scenario's shapes, to load shared weights into."""
    featurizer, decider = build_classifier(backbone.name, backbone.split, num_classes)
    recon = new_reconstructor(reconstructor, backbone, feature_shape(featurizer, image_side)[0])
    return SharedNets(featurizer, decider, recon)


def new_reconstructor(spec: ReconstructorSpec, backbone: BackboneSpec, channels: int) -> nn.Module:
    """An untrained R of the scenario's shape for features with `channels` channels."""
    return build_reconstructor(
        channels,
        backbone=backbone.name,
        split=backbone.split,
        width=spec.width,
        blocks_per_upscale=spec.blocks_per_upscale,
        output=spec.output,
    )


def load_nets(
    backbone: BackboneSpec,
    reconstructor: ReconstructorSpec,
    image_side: int,
    num_classes: int,
    states: dict[str, StateDict],
) -> SharedNets:
    """F, C, R (those named in `states`) with the shared weights loaded."""
    nets = empty_nets(backbone, reconstructor, image_side, num_classes)
    for name, module in (
        ("featurizer", nets.featurizer),
        ("decider", nets.decider),
        ("reconstructor", nets.reconstructor),
    ):
        if name in states:
            module.load_state_dict(states[name])
    return nets


def train_classifier(
    backbone: BackboneSpec,
    recipe: Recipe,
    images: Images,
    labels: np.ndarray,
    num_classes: int,
    *,
    seed: int,
) -> tuple[nn.Module, nn.Module]:
    """F+C from scratch on raw images (the leader's pre-training, and the raw-image table rows); images
    that do not fit in memory are decoded batch by batch."""
    dev = device()
    torch.manual_seed(seed)
    featurizer, decider = build_classifier(backbone.name, backbone.split, num_classes)
    net = nn.Sequential(featurizer, decider).to(dev).train()
    read, y = batch_reader(images), torch.as_tensor(labels)
    aug = torch.Generator().manual_seed(seed + 1)

    def loss(index: torch.Tensor) -> torch.Tensor:
        xb = to_device(flip(read(index), aug))
        return nn.functional.cross_entropy(net(xb), y[index].to(dev))

    fit(net, recipe=recipe, n=len(y), loss_fn=loss, seed=seed, net="classifier", generators=[aug])
    return featurizer.eval().cpu(), decider.eval().cpu()


def train_reconstructor(
    spec: ReconstructorSpec,
    backbone: BackboneSpec,
    featurizer: nn.Module,
    public: datasets.ImageSet,
    *,
    seed: int,
) -> nn.Module:
    """R inverts the frozen F, trained with L1 on the public set D_q only.

    F is frozen, so its features are computed once when they and the images fit in memory; otherwise
    each batch is decoded and featurized when it is used."""
    dev = device()
    torch.manual_seed(seed)
    featurizer = featurizer.to(dev).eval()
    shape = feature_shape(featurizer.cpu(), public.side)
    featurizer = featurizer.to(dev)
    recon = new_reconstructor(spec, backbone, shape[0]).to(dev)
    read = batch_reader(public)
    if in_memory(public, factor=4 + 4 * math.prod(shape) // (3 * public.side**2)):
        feats = over_batches(public, lambda b: featurizer(b.to(dev)), read=read)

        def features(index: torch.Tensor) -> torch.Tensor:
            return to_device(feats[index])
    else:

        def features(index: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return featurizer(to_device(read(index)))

    def loss(index: torch.Tensor) -> torch.Tensor:
        return l1(recon(features(index)), to_device(read(index))).mean()

    fit(recon, recipe=spec.training, n=len(public), loss_fn=loss, seed=seed, net="reconstructor")
    featurizer.cpu()
    return recon.eval().cpu()


def freeze(*modules: nn.Module) -> None:
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)


TaskTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (C's logits on P(F(x)), batch index)


@OBJECTIVES.register("ce")
def cross_entropy_term(
    recipe: DPMRecipe, decider: nn.Module, feats: torch.Tensor, labels: torch.Tensor
) -> TaskTerm:
    """The paper's CE(C(P(F(x))), y)."""
    dev = device()
    return lambda logits, index: nn.functional.cross_entropy(logits, labels[index].to(dev))


@OBJECTIVES.register("distill")
def distillation_term(
    recipe: DPMRecipe, decider: nn.Module, feats: torch.Tensor, labels: torch.Tensor
) -> TaskTerm:
    """KL(C(F(x)) || C(P(F(x)))) at `recipe.temperature`: functional equivalence to the original features."""
    dev = device()
    original = apply(lambda b: decider(b.to(dev)), feats)  # C's logits on F(x), the target
    return lambda logits, index: distillation(logits, original[index].to(dev), recipe.temperature)


def train_dpm(
    recipe: DPMRecipe,
    shape: DPMShape,
    nets: SharedNets,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    before: nn.Module | None = None,
) -> nn.Module:
    """P minimises task(P) + lambda * SSIM(R(P(F(x))), x) with F, C, R frozen.

    The task term (`recipe.objective`) is the paper's CE(C(P(F(x))), y), or the KL divergence from C's
    predictions on the original features at `recipe.temperature` ("distill"). CE lets P learn the task
    on top of C, so C already fits the poisoned features and the pool has little left to teach it
    (bench/pool_signal.py); distillation keeps P(F(x)) exactly as useful to C as F(x).

    `before`, a fixed perturbation of the features (entities.protections.perturbations), is applied to
    each batch before P (the paper's GN+DPM, GF+DPM, MF+DPM); a random one draws afresh every batch.
    """
    dev = device()
    torch.manual_seed(seed)
    freeze(nets.featurizer, nets.decider, nets.reconstructor)
    featurizer, decider, recon = (m.to(dev) for m in (nets.featurizer, nets.decider, nets.reconstructor))
    x, y = to_float(images), torch.as_tensor(labels)
    feats = apply(lambda b: featurizer(b.to(dev)), x)  # F is frozen: featurize once
    dpm = DPM(feats.shape[1], blocks=shape.blocks, width=shape.width).to(dev).train()
    task_term = OBJECTIVES.get(recipe.objective)(recipe, decider, feats, y)

    if before is not None:
        before = before.to(dev).eval()

    def loss(index: torch.Tensor) -> torch.Tensor:
        batch = to_device(feats[index])
        poisoned = dpm(batch if before is None else before(batch))
        task = task_term(decider(poisoned), index)
        similarity = ssim(recon(poisoned), to_device(x[index])).mean()
        return task + recipe.lam * similarity

    fit(dpm, recipe=recipe, n=len(x), loss_fn=loss, seed=seed, net="dpm")
    for m in (featurizer, decider, recon) if before is None else (featurizer, decider, recon, before):
        m.cpu()
    return dpm.eval().cpu()


def measure_dpm(nets: SharedNets, dpm: nn.Module, test: datasets.ImageSet) -> dict[str, float]:
    """What the DPM gives up and what it hides: Tables 1 and 2 of the paper, on the test set."""
    dev = device()
    featurizer, decider, recon, dpm = (
        m.to(dev).eval() for m in (nets.featurizer, nets.decider, nets.reconstructor, dpm)
    )
    x, y = to_float(test.images), torch.as_tensor(test.labels)
    original = apply(lambda b: featurizer(b.to(dev)), x)
    poisoned = apply(lambda b: dpm(b.to(dev)), original)
    out: dict[str, float] = {}
    for kind, feats in (("original", original), ("poisoned", poisoned)):
        acc = accuracy(apply(lambda b: decider(b.to(dev)), feats), y)
        recon_images = apply(lambda b: recon(b.to(dev)), feats)
        out[f"top1_{kind}"] = acc["top1"]
        out[f"top5_{kind}"] = acc["top5"]
        out[f"l1_{kind}"] = l1(recon_images, x).mean().item()
        out[f"ssim_{kind}"] = ssim(recon_images, x).mean().item()
    for m in (featurizer, decider, recon, dpm):
        m.cpu()
    return out


# Rows per chunk of features computed for the pool: a multiple of `apply`'s batch (256), so the batches,
# and so the values, are those of one call over every image.
FEATURE_CHUNK = 1024


def featurize_chunks(
    featurizer: nn.Module,
    images: np.ndarray,
    dpm: nn.Module | None = None,
    *,
    mirrored: bool = False,
    chunk: int = FEATURE_CHUNK,
) -> Iterator[torch.Tensor]:
    """F(x), or P(F(x)) when a DPM is given, `chunk` rows at a time, so that neither the images as floats
    nor their features need to fit in memory at once.

    With `mirrored`, the features of each image's mirror image follow those of the originals: the
    flip augmentation that raw-image training gets, precomputed, since the pool holds fixed features.
    """
    dev = device()
    featurizer = featurizer.to(dev).eval()
    chain = featurizer if dpm is None else nn.Sequential(featurizer, dpm.to(dev).eval())
    n = len(images)
    try:
        for start in range(0, 2 * n if mirrored else n, chunk):
            stop = min(start + chunk, 2 * n if mirrored else n)
            parts = []
            if start < n:
                parts.append(to_float(images[start : min(stop, n)]))
            if stop > n:  # the mirror images of originals [start - n, stop - n)
                parts.append(to_float(images[max(start, n) - n : stop - n]).flip(-1))
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            yield apply(lambda b: chain(b.to(dev)), x)
    finally:
        chain.cpu()


def featurize(
    featurizer: nn.Module, images: np.ndarray, dpm: nn.Module | None = None, *, mirrored: bool = False
) -> torch.Tensor:
    """F(x), or P(F(x)) when a DPM is given, for a whole image array (see featurize_chunks)."""
    chunks = list(featurize_chunks(featurizer, images, dpm, mirrored=mirrored))
    return torch.cat(chunks) if chunks else to_float(images)


def reconstruct(nets: SharedNets, images: np.ndarray, dpm: nn.Module | None = None) -> torch.Tensor:
    """R(F(x)), or R(P(F(x))) when a DPM is given: what Table 2 measures, as images to look at."""
    dev = device()
    recon = nets.reconstructor.to(dev).eval()
    out = apply(lambda b: recon(b.to(dev)), featurize(nets.featurizer, images, dpm))
    recon.cpu()
    return out


def keep_batchnorm_statistics(net: nn.Module) -> None:
    """Train mode, except that BatchNorm layers normalise with (and keep) their running statistics.

    The refine mix holds poisoned features, whose statistics differ from original features; updating the
    running statistics with them would skew C at test time, where it sees original features only.
    Measured on collab-10-1 (CE objective, the first photos layout), top-1 with vs without: row 7 57.8
    vs 54.3, row 8 65.6 vs 62.8.
    """
    net.train()
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            m.eval()


def train_decider(
    recipe: RefineRecipe,
    decider: nn.Module,
    features: Rows | torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
) -> nn.Module:
    """Refine the shared C on a mix of features (rows 6-12 of Table 5). Each batch's rows are gathered
    from `features` and made float there, so memory-mapped pool shards are never read whole."""
    features = Rows.of(features)
    dev = device()
    torch.manual_seed(seed)
    decider = decider.to(dev)
    for p in decider.parameters():
        p.requires_grad_(True)
    keep_batchnorm_statistics(decider)

    cells = recipe.shift
    aug = torch.Generator().manual_seed(seed + 1)

    def loss(index: torch.Tensor) -> torch.Tensor:
        x = features[index].float()
        if cells:
            x = shift(x, cells, aug)
        return nn.functional.cross_entropy(decider(to_device(x)), labels[index].to(dev))

    fit(decider, recipe=recipe, n=len(features), loss_fn=loss, seed=seed, net="decider", generators=[aug])
    return decider.eval().cpu()


def evaluate(featurizer: nn.Module, decider: nn.Module, test: datasets.ImageSet) -> dict[str, float]:
    """Top-1/top-5 of C(F(x)) on the shared test set."""
    dev = device()
    net = nn.Sequential(featurizer, decider).to(dev).eval()
    logits = over_batches(test, lambda b: net(b.to(dev)))
    net.cpu()
    return accuracy(logits, torch.as_tensor(test.labels))
