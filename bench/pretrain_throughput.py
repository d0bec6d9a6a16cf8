"""Pre-training throughput (images/s): Veil's classifier training against a plain PyTorch loop, same
model, same images, same batch size and optimizer, timed alternately in this process.

    python bench/pretrain_throughput.py --backbone resnet50 --side 224 --batch 16 --steps 4 --repeat 3

Veil's side is entities.entity.train_classifier (its `fit` loop: cosine schedule, progress, flips,
checkpoint hooks). The reference is the loop a researcher would write: SGD with Nesterov momentum over
shuffled batches, flip, cross-entropy, backward, step. Both build the same split ResNet. Prints images/s
of each round, the medians, the ratio (Veil / plain: 1.0 means no overhead), the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from entities import entity as E  # noqa: E402
from entities.nets import build_classifier  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    min_steps: int = 0


@dataclass(frozen=True)
class Backbone:
    name: str
    split: str


def plain_loop(backbone: Backbone, images: np.ndarray, labels: np.ndarray, batch: int, classes: int) -> None:
    torch.manual_seed(0)
    featurizer, decider = build_classifier(backbone.name, backbone.split, classes)
    net = nn.Sequential(featurizer, decider).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x, y = torch.from_numpy(images).float().div_(255), torch.from_numpy(labels)
    order = torch.randperm(len(x))
    for start in range(0, len(x), batch):
        index = order[start : start + batch]
        xb = x[index]
        flip = torch.rand(len(xb)) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = nn.functional.cross_entropy(net(xb), y[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def veil_loop(backbone: Backbone, images: np.ndarray, labels: np.ndarray, batch: int, classes: int) -> None:
    E.train_classifier(backbone, Recipe(epochs=1, lr=0.01, batch_size=batch), images, labels, classes, seed=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--split", default="conv2_x")
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="batches per timed round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    classes = 10
    n = args.batch * args.steps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, args.side, args.side), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.int64)
    backbone = Backbone(args.backbone, args.split)
    rates: dict[str, list[float]] = {"plain": [], "veil": []}
    plain_loop(backbone, images[: 2 * args.batch], labels[: 2 * args.batch], args.batch, classes)  # warm up
    for r in range(args.repeat):
        for name, loop in (("plain", plain_loop), ("veil", veil_loop)):
            t0 = time.perf_counter()
            loop(backbone, images, labels, args.batch, classes)
            rate = n / (time.perf_counter() - t0)
            rates[name].append(rate)
            print(f"round {r + 1} {name:<5} {rate:8.2f} images/s")
    plain, veil = statistics.median(rates["plain"]), statistics.median(rates["veil"])
    print(
        f"{args.backbone} at {args.side} px, batch {args.batch}, {args.steps} steps a round, "
        f"{args.threads} threads: plain {plain:.2f} images/s, Veil {veil:.2f} images/s, "
        f"ratio {veil / plain:.3f}"
    )
    print(f"load: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
