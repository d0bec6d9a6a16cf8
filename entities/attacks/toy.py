"""A small, self-contained setting to try the attacks on (tests and bench/attacks.py), built with the
entities functions and plain recipe objects, without the simulation.

`build_world` trains F+C on the task set, R on the public set, one DPM per victim entity with the
recipe, and a sparsifying autoencoder whose ambiguated test codes are published. It returns the truth
the referee holds next to the knowledge an outsider gets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from entities import sparse
from entities.attacks.base import Knowledge, KnownPairs, OwnKeys, Pooled
from entities.data import partition, to_float
from entities.datasets import ImageSet, TaskData
from entities.datasets.photos import build_photos
from entities.entity import SharedNets, featurize, train_classifier, train_dpm, train_reconstructor
from entities.rows import Rows


def _training(
    epochs: int, lr: float, batch_size: int = 32, optimizer: str = "adam", min_steps: int = 0
) -> Any:
    return SimpleNamespace(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=0.0 if optimizer == "adam" else 5e-4,
        optimizer=optimizer,
        min_steps=min_steps,
    )


def toy_scenario(scale: float = 1.0) -> SimpleNamespace:
    """The recipes of the toy world (the fields entities read from a scenario); `scale` multiplies epochs."""

    def e(n: int) -> int:
        return max(1, round(n * scale))

    dpm = _training(e(6), 1e-3, min_steps=e(150))
    dpm.__dict__.update(lam=1.0, objective="distill", temperature=4.0)
    return SimpleNamespace(
        seed=0,
        backbone=SimpleNamespace(name="resnet18", split="conv2_x"),
        pretrain=_training(e(8), 0.05, optimizer="sgd"),
        reconstructor=SimpleNamespace(
            width=32, blocks_per_upscale=2, output="minmax", training=_training(e(15), 2e-3, min_steps=e(300))
        ),
        dpm=dpm,
        dpm_shape=SimpleNamespace(blocks=2, width=32),
        autoencoder=dict(
            maps=4, code_length=64, k=16, widths=[8, 8, 8, 4], strides=[1, 2, 1, 2], skip_channels=4
        ),
        autoencoder_training=_training(e(10), 5e-3, batch_size=20),
        k=16,
        k_prime=32,
    )


@dataclass
class Victim:
    """One entity's truth: its images (float), labels, its DPM, its poisoned and original features."""

    images: torch.Tensor
    labels: torch.Tensor
    dpm: nn.Module
    poisoned: torch.Tensor
    original: torch.Tensor


@dataclass
class World:
    """The toy world: the data, and (when built) the pool side (shared nets, victims) and the codes side
    (the public network, the true test codes and their ambiguated publication)."""

    scenario: SimpleNamespace
    data: TaskData
    nets: SharedNets | None = None
    victims: dict[str, Victim] = field(default_factory=dict)
    autoencoder: sparse.SparsifyingAutoencoder | None = None
    codes_truth: torch.Tensor | None = None  # the true k-sparse test codes
    codes: torch.Tensor | None = None  # their ambiguated publication
    sampler: str = "ctg"
    timings: dict[str, float] = field(default_factory=dict)

    def knowledge(self, protected: bool = True, known_pairs: int = 0, own: str | None = None) -> Knowledge:
        """An outsider's knowledge: the pool (poisoned, or `protected=False` the original features), F, C, R,
        D_q, the recipes, the codes and the public network; plus known pairs of every victim (the first
        `known_pairs` of its pool), and an insider's own images and DPM when `own` names a victim."""
        pool = {
            name: Pooled(Rows([v.poisoned if protected else v.original]), v.labels)
            for name, v in self.victims.items()
        }
        pairs = {
            name: KnownPairs(
                v.images[:known_pairs],
                (v.poisoned if protected else v.original)[:known_pairs],
                torch.arange(min(known_pairs, len(v.images))),
            )
            for name, v in self.victims.items()
        }
        s = self.scenario
        k = Knowledge(
            public_images=self.data.public_train.images,
            public_labels=self.data.public_train.labels,
            dpm_recipe=s.dpm,
            dpm_shape=s.dpm_shape,
            reconstructor_recipe=s.reconstructor,
            codes=self.codes,
            k=s.k,
            k_prime=s.k_prime,
            sampler=self.sampler,
            public_network=self.autoencoder,
        )
        if self.nets is not None:
            k.pool, k.known_pairs = pool, pairs if known_pairs else None
            k.featurizer, k.decider, k.reconstructor = (
                self.nets.featurizer,
                self.nets.decider,
                self.nets.reconstructor,
            )
        if own is not None:
            v = self.victims[own]
            k.own_images, k.own_labels = v.images, v.labels
            k.own_dpm = v.dpm
        return k

    def own_keys(self, n: int) -> OwnKeys:
        """A curious user's keys: the first n published images."""
        assert self.codes_truth is not None
        return OwnKeys(torch.arange(n), sparse.supports(self.codes_truth[:n]))


def build_world(
    *,
    patch: int = 32,
    task_classes: int = 6,
    public_classes: int = 3,
    train_per_class: int = 40,
    test_per_class: int = 10,
    victims: int = 2,
    pool: bool = True,
    codes: bool = True,
    sampler: str = "ctg",
    scale: float = 1.0,
    seed: int = 0,
) -> World:
    """Train what the toy world needs: the pool side (F+C, R, one DPM per victim) and/or the codes side
    (the autoencoder, its ambiguated test codes). About a minute of one idle CPU core at the defaults."""
    s = toy_scenario(scale)
    data = build_photos(
        patch=patch,
        task_classes=task_classes,
        public_classes=public_classes,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        seed=seed,
        jitter_strength=0.3,
    )
    world = World(s, data, sampler=sampler)
    train = data.task_train
    if pool:
        t = time.monotonic()
        featurizer, decider = train_classifier(
            s.backbone, s.pretrain, train.images, train.labels, task_classes, seed=seed
        )
        world.timings["classifier_s"] = time.monotonic() - t
        t = time.monotonic()
        recon = train_reconstructor(s.reconstructor, s.backbone, featurizer, data.public_train, seed=seed + 1)
        world.nets = SharedNets(featurizer, decider, recon)
        world.timings["reconstructor_s"] = time.monotonic() - t
        t = time.monotonic()
        for i, index in enumerate(partition(train.labels, [1.0 / victims] * victims, seed)):
            own: ImageSet = train.subset(index)
            dpm = train_dpm(s.dpm, s.dpm_shape, world.nets, own.images, own.labels, seed=seed + 10 + i)
            world.victims[f"E{i + 1}"] = Victim(
                images=to_float(own.images),
                labels=torch.as_tensor(own.labels),
                dpm=dpm,
                poisoned=featurize(featurizer, own.images, dpm),
                original=featurize(featurizer, own.images),
            )
        world.timings["dpms_s"] = time.monotonic() - t
    if codes:
        t = time.monotonic()
        torch.manual_seed(seed)
        model = sparse.SparsifyingAutoencoder(image_size=patch, **s.autoencoder)
        sparse.train_autoencoder(model, train.images, s.autoencoder_training, seed=seed)
        model = model.cpu().eval()
        with torch.no_grad():
            truth = model.encode(to_float(data.task_test.images), s.k)
            train_codes = model.encode(to_float(train.images), s.k)
        lam, sigma = sparse.ambiguation_stats(train_codes, s.k)
        generator = torch.Generator().manual_seed(seed + 1)  # as the data owner seeds it
        world.codes = sparse.ambiguate(
            truth, s.k_prime, sampler=sampler, lam=lam, sigma=sigma, generator=generator
        )  # type: ignore[arg-type]
        world.autoencoder, world.codes_truth = model, truth
        world.timings["autoencoder_s"] = time.monotonic() - t
    return world
