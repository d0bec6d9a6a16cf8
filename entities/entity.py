"""What an entity does in the Deep Poisoning collaboration, stage by stage.

An entity holds a private partition of the task set D_p in its own directory. Everything it
keeps private (images, DPM weights) is read and written only under `private_dir`; what it
shares (F, C, R from the leader; poisoned features to the pool; metrics) is returned to the
caller, which sends it by message.

The scenario is passed as the simulator's pydantic object; this package reads its fields
but does not import the simulator.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from entities import data as datasets
from entities.metrics import accuracy, distillation, l1, ssim
from entities.nets import DPM, build_classifier, build_reconstructor, feature_shape
from entities.training import apply, device, fit

StateDict = dict[str, torch.Tensor]


def derive_seed(base: int, *parts: object) -> int:
    """A stable per-task seed, so results do not depend on which node or order runs a task."""
    digest = hashlib.sha256(repr((base, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def load_task_data(scenario: Any) -> datasets.TaskData:
    """The scenario's dataset: D_p (train/test) and the public D_q."""
    spec = scenario.dataset
    if spec.kind == "photos":
        return datasets.build_photos(
            patch=spec.patch,
            task_classes=spec.task_classes,
            public_classes=spec.public_classes,
            train_per_class=spec.train_per_class,
            test_per_class=spec.test_per_class,
            seed=scenario.seed,
            jitter_strength=spec.jitter,
            public_per_class=spec.public_per_class,
            layout=spec.layout,
        )
    raise ValueError(
        f"dataset.kind {spec.kind!r}: this version of Veil runs only the built-in 'photos' dataset; "
        "the local image-folder loader is not implemented yet"
    )


def to_float(images: np.ndarray) -> torch.Tensor:
    return datasets.to_float(np.asarray(images))


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


def empty_nets(scenario: Any, num_classes: int) -> SharedNets:
    """Untrained F, C, R of the scenario's shapes, to load shared weights into."""
    featurizer, decider = build_classifier(scenario.backbone.name, scenario.backbone.split, num_classes)
    reconstructor = new_reconstructor(scenario, feature_shape(featurizer, image_size(scenario))[0])
    return SharedNets(featurizer, decider, reconstructor)


def new_reconstructor(scenario: Any, channels: int) -> nn.Module:
    """An untrained R of the scenario's shape for features with `channels` channels."""
    r = scenario.reconstructor
    return build_reconstructor(
        channels,
        scenario.backbone.split,
        width=r.width,
        blocks_per_upscale=r.blocks_per_upscale,
        output=r.output,
    )


def load_nets(scenario: Any, num_classes: int, states: dict[str, StateDict]) -> SharedNets:
    nets = empty_nets(scenario, num_classes)
    for name, module in (
        ("featurizer", nets.featurizer),
        ("decider", nets.decider),
        ("reconstructor", nets.reconstructor),
    ):
        if name in states:
            module.load_state_dict(states[name])
    return nets


def image_size(scenario: Any) -> int:
    spec = scenario.dataset
    return int(spec.patch if spec.kind == "photos" else spec.image_size)


def train_classifier(
    scenario: Any, images: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int
) -> tuple[nn.Module, nn.Module]:
    """F+C from scratch on raw images (the leader's pre-training, and the raw-image table rows)."""
    dev = device()
    torch.manual_seed(seed)
    featurizer, decider = build_classifier(scenario.backbone.name, scenario.backbone.split, num_classes)
    net = nn.Sequential(featurizer, decider).to(dev).train()
    x, y = to_float(images), torch.as_tensor(labels)
    aug = torch.Generator().manual_seed(seed + 1)

    def loss(index: torch.Tensor) -> torch.Tensor:
        xb = flip(x[index], aug).to(dev)
        return nn.functional.cross_entropy(net(xb), y[index].to(dev))

    fit(net.parameters(), recipe=scenario.pretrain, n=len(x), loss_fn=loss, seed=seed)
    return featurizer.eval().cpu(), decider.eval().cpu()


def train_reconstructor(
    scenario: Any, featurizer: nn.Module, public: datasets.ImageSet, *, seed: int
) -> nn.Module:
    """R inverts the frozen F, trained with L1 on the public set D_q only."""
    dev = device()
    torch.manual_seed(seed)
    featurizer = featurizer.to(dev).eval()
    x = to_float(public.images)
    feats = apply(lambda b: featurizer(b.to(dev)), x)
    recon = new_reconstructor(scenario, feats.shape[1]).to(dev)

    def loss(index: torch.Tensor) -> torch.Tensor:
        return l1(recon(feats[index].to(dev)), x[index].to(dev)).mean()

    fit(recon.parameters(), recipe=scenario.reconstructor.training, n=len(x), loss_fn=loss, seed=seed)
    featurizer.cpu()
    return recon.eval().cpu()


def freeze(*modules: nn.Module) -> None:
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)


def train_dpm(
    scenario: Any, entity: Any, nets: SharedNets, images: np.ndarray, labels: np.ndarray, *, seed: int
) -> nn.Module:
    """P minimises task(P) + lambda * SSIM(R(P(F(x))), x) with F, C, R frozen.

    The task term is the paper's CE(C(P(F(x))), y), or with `dpm.objective: distill` the KL divergence
    from C's predictions on the original features, KL(C(F(x)) || C(P(F(x)))) at `dpm.temperature`. CE
    lets P learn the task on top of C, so C already fits the poisoned features and the pool has little
    left to teach it (bench/pool_signal.py); distillation keeps P(F(x)) exactly as useful to C as F(x).
    """
    dev = device()
    torch.manual_seed(seed)
    freeze(nets.featurizer, nets.decider, nets.reconstructor)
    featurizer, decider, recon = (m.to(dev) for m in (nets.featurizer, nets.decider, nets.reconstructor))
    x, y = to_float(images), torch.as_tensor(labels)
    feats = apply(lambda b: featurizer(b.to(dev)), x)  # F is frozen: featurize once
    dpm = DPM(feats.shape[1], blocks=entity.dpm.blocks, width=entity.dpm.width).to(dev).train()
    cfg = scenario.dpm
    if cfg.objective == "distill":
        original = apply(lambda b: decider(b.to(dev)), feats)  # C's logits on F(x), the target

    def loss(index: torch.Tensor) -> torch.Tensor:
        poisoned = dpm(feats[index].to(dev))
        logits = decider(poisoned)
        if cfg.objective == "distill":
            task = distillation(logits, original[index].to(dev), cfg.temperature)
        else:
            task = nn.functional.cross_entropy(logits, y[index].to(dev))
        similarity = ssim(recon(poisoned), x[index].to(dev)).mean()
        return task + cfg.lam * similarity

    fit(dpm.parameters(), recipe=cfg, n=len(x), loss_fn=loss, seed=seed)
    for m in (featurizer, decider, recon):
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


def featurize(
    featurizer: nn.Module, images: np.ndarray, dpm: nn.Module | None = None, *, mirrored: bool = False
) -> torch.Tensor:
    """F(x), or P(F(x)) when a DPM is given, for a whole image array.

    With `mirrored`, the features of each image's mirror image follow those of the originals: the
    flip augmentation that raw-image training gets, precomputed, since the pool holds fixed features.
    """
    dev = device()
    featurizer = featurizer.to(dev).eval()
    chain = featurizer if dpm is None else nn.Sequential(featurizer, dpm.to(dev).eval())
    x = to_float(images)
    out = apply(lambda b: chain(b.to(dev)), torch.cat([x, x.flip(-1)]) if mirrored else x)
    chain.cpu()
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
    scenario: Any, decider: nn.Module, features: torch.Tensor, labels: torch.Tensor, *, seed: int
) -> nn.Module:
    """Refine the shared C on a mix of features (rows 6-12 of Table 5)."""
    dev = device()
    torch.manual_seed(seed)
    decider = decider.to(dev)
    for p in decider.parameters():
        p.requires_grad_(True)
    keep_batchnorm_statistics(decider)

    cells = scenario.refine.shift
    aug = torch.Generator().manual_seed(seed + 1)

    def loss(index: torch.Tensor) -> torch.Tensor:
        x = features[index].float()
        if cells:
            x = shift(x, cells, aug)
        return nn.functional.cross_entropy(decider(x.to(dev)), labels[index].to(dev))

    fit(decider.parameters(), recipe=scenario.refine, n=len(features), loss_fn=loss, seed=seed)
    return decider.eval().cpu()


def evaluate(featurizer: nn.Module, decider: nn.Module, test: datasets.ImageSet) -> dict[str, float]:
    """Top-1/top-5 of C(F(x)) on the shared test set."""
    dev = device()
    net = nn.Sequential(featurizer, decider).to(dev).eval()
    logits = apply(lambda b: net(b.to(dev)), to_float(test.images))
    net.cpu()
    return accuracy(logits, torch.as_tensor(test.labels))


def save_private(private_dir: Path, name: str, obj: Any) -> Path:
    """Write to the entity's private directory atomically (temp file, then rename)."""
    private_dir.mkdir(parents=True, exist_ok=True)
    path = private_dir / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


def load_private(private_dir: Path, name: str) -> Any:
    path = private_dir / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; the stage that writes it has not run for this party")
    return torch.load(path, weights_only=False)
