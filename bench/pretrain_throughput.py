"""Pre-training throughput (images/s): Veil's classifier training against a plain PyTorch loop, same
model, same images, same batch size and optimizer, timed alternately in this process.

    python bench/pretrain_throughput.py --backbone resnet50 --side 224 --batch 16 --steps 4 --repeat 3

With --accelerations, Veil's loop is timed again under each of resources.gpu's settings forced on this
device (channels-last; bf16 autocast), each against the same plain loop: what they buy here.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from entities import entity as E  # noqa: E402
from entities.nets import build_classifier  # noqa: E402
from entities.training import Acceleration, accelerating  # noqa: E402

ACCELERATIONS = {"channels-last": Acceleration(channels_last=True), "bf16": Acceleration(amp="bf16")}


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


def accelerated(how: Acceleration) -> Callable[[Backbone, np.ndarray, np.ndarray, int, int], None]:
    def loop(backbone: Backbone, images: np.ndarray, labels: np.ndarray, batch: int, classes: int) -> None:
        with accelerating(how):
            veil_loop(backbone, images, labels, batch, classes)

    return loop


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
    parser.add_argument(
        "--accelerations", action="store_true", help="also Veil under channels-last and under bf16 autocast"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    classes = 10
    n = args.batch * args.steps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, args.side, args.side), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.int64)
    backbone = Backbone(args.backbone, args.split)
    loops = {"plain": plain_loop, "veil": veil_loop}
    if args.accelerations:
        loops |= {f"veil {name}": accelerated(how) for name, how in ACCELERATIONS.items()}
    rates: dict[str, list[float]] = {name: [] for name in loops}
    plain_loop(backbone, images[: 2 * args.batch], labels[: 2 * args.batch], args.batch, classes)  # warm up
    for r in range(args.repeat):
        for name, loop in loops.items():
            t0 = time.perf_counter()
            loop(backbone, images, labels, args.batch, classes)
            rate = n / (time.perf_counter() - t0)
            rates[name].append(rate)
            print(f"round {r + 1} {name:<18} {rate:8.2f} images/s")
    plain = statistics.median(rates["plain"])
    print(
        f"{args.backbone} at {args.side} px, batch {args.batch}, {args.steps} steps a round, "
        f"{args.threads} threads, on {'cuda' if torch.cuda.is_available() else 'cpu'}: "
        f"plain {plain:.2f} images/s"
    )
    for name in loops:
        if name != "plain":
            rate = statistics.median(rates[name])
            print(f"  {name}: {rate:.2f} images/s, ratio to plain {rate / plain:.3f}")
    print(f"load: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
