"""Stage throughput (images/s): Veil's training loop of a stage against a plain PyTorch loop over the same
model, the same data and batch size and the same optimizer, timed alternately in this process.

    python bench/stage_throughput.py --stage pretrain --backbone resnet50 --side 224 --batch 16 --steps 4
    python bench/stage_throughput.py --stage poison                 # collab-10-1's shapes: resnet18, 32 px
    python bench/stage_throughput.py --stage refine --shift 1 --steps 20

- pretrain: entities.entity.train_classifier (F + C from scratch on raw images: cosine schedule,
  progress, flips, checkpoint hooks) against SGD with Nesterov momentum over shuffled batches, flip,
  cross-entropy, backward, step.
- poison: entities.entity.train_dpm (the DPM P between frozen F, C and R; F featurizes once; loss CE or
  distillation + lambda * SSIM(R(P(F(x))), x), Adam) against the same loss written out in a plain loop.
- refine: entities.entity.train_decider (C refined on float16 features gathered a batch at a time from
  a memory-mapped shard, as the stage reads the pool; BatchNorm keeps its statistics; optional shift
  crops) against a plain loop over the same features as an in-memory float16 tensor
  (--in-memory: Veil reads the tensor too).

With --accelerations, Veil's loop is timed again under each of resources.gpu's settings forced on this
device (channels-last; bf16 autocast), each against the same plain loop: what they buy here.

Images are random (uint8); one round is --steps batches (one epoch of batch x steps images). Prints
images/s of each round, the medians, their ratio (Veil / plain: 1.0 means no overhead; target at least
0.9) and the median of each round's ratio to the plain round before it, the machine's load.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from entities import entity as E  # noqa: E402
from entities.metrics import distillation, ssim  # noqa: E402
from entities.nets import DPM, build_classifier, build_reconstructor, feature_shape  # noqa: E402
from entities.rows import Rows  # noqa: E402
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
    # the DPM's (scenario `dpm`) and refine's (scenario `refine`) fields
    lam: float = 1.0
    objective: str = "ce"
    temperature: float = 4.0
    shift: int = 0


@dataclass(frozen=True)
class Backbone:
    name: str
    split: str


@dataclass(frozen=True)
class Shape:
    blocks: int
    width: int


Loop = Callable[[], None]


def sgd(params: object, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)  # type: ignore[arg-type]


def shift(x: torch.Tensor, cells: int) -> torch.Tensor:
    """Each feature map translated by up to `cells`, zero-filled (random crops of features)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (cells,) * 4)
    dy, dx = torch.randint(0, 2 * cells + 1, (2, n)).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


# --- pretrain ---------------------------------------------------------------------------------


def pretrain_loops(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray) -> dict[str, Loop]:
    backbone, classes = Backbone(args.backbone, args.split), args.classes

    def plain() -> None:
        torch.manual_seed(0)
        featurizer, decider = build_classifier(backbone.name, backbone.split, classes)
        net = nn.Sequential(featurizer, decider).train()
        opt = sgd(net.parameters(), 0.01)
        x, y = torch.from_numpy(images).float().div_(255), torch.from_numpy(labels)
        order = torch.randperm(len(x))
        for start in range(0, len(x), args.batch):
            index = order[start : start + args.batch]
            xb = x[index]
            flip = torch.rand(len(xb)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = nn.functional.cross_entropy(net(xb), y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def veil() -> None:
        recipe = Recipe(epochs=1, lr=0.01, batch_size=args.batch)
        E.train_classifier(backbone, recipe, images, labels, classes, seed=0)

    return {"plain": plain, "veil": veil}


# --- poison -----------------------------------------------------------------------------------


def shared_nets(args: argparse.Namespace) -> E.SharedNets:
    torch.manual_seed(0)
    featurizer, decider = build_classifier(args.backbone, args.split, args.classes)
    channels = feature_shape(featurizer, args.side)[0]
    recon = build_reconstructor(
        channels, backbone=args.backbone, split=args.split, width=32, blocks_per_upscale=2, output="minmax"
    )
    return E.SharedNets(featurizer.eval(), decider.eval(), recon.eval())


def poison_loops(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray) -> dict[str, Loop]:
    nets = shared_nets(args)
    E.freeze(nets.featurizer, nets.decider, nets.reconstructor)
    recipe = Recipe(
        epochs=1,
        lr=0.001,
        batch_size=args.batch,
        weight_decay=0.0,
        optimizer="adam",
        objective=args.objective,
    )

    def plain() -> None:
        torch.manual_seed(0)
        x, y = torch.from_numpy(images).float().div_(255), torch.from_numpy(labels)
        with torch.no_grad():  # F is frozen: featurize once
            feats = torch.cat([nets.featurizer(x[i : i + 256]) for i in range(0, len(x), 256)])
            if args.objective == "distill":  # C's logits on F(x), the target
                target = torch.cat([nets.decider(feats[i : i + 256]) for i in range(0, len(x), 256)])
        dpm = DPM(feats.shape[1], blocks=args.dpm_blocks, width=args.dpm_width).train()
        opt = torch.optim.Adam(dpm.parameters(), lr=0.001)
        order = torch.randperm(len(x))
        for start in range(0, len(x), args.batch):
            index = order[start : start + args.batch]
            poisoned = dpm(feats[index])
            logits = nets.decider(poisoned)
            if args.objective == "ce":
                task = nn.functional.cross_entropy(logits, y[index])
            else:
                task = distillation(logits, target[index], recipe.temperature)
            loss = task + recipe.lam * ssim(nets.reconstructor(poisoned), x[index]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def veil() -> None:
        E.train_dpm(recipe, Shape(args.dpm_blocks, args.dpm_width), nets, images, labels, seed=0)

    return {"plain": plain, "veil": veil}


# --- refine -----------------------------------------------------------------------------------


def refine_loops(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray) -> dict[str, Loop]:
    nets = shared_nets(args)
    x = torch.from_numpy(images).float().div_(255)
    with torch.no_grad():
        feats = torch.cat([nets.featurizer(x[i : i + 256]) for i in range(0, len(x), 256)]).half()
    shard = Path(tempfile.mkdtemp(prefix="veil-refine-")) / "features.f16.npy"
    np.save(shard, feats.numpy())
    mapped = np.load(shard, mmap_mode="r")  # as the stage reads a pool shard: a memory map
    y = torch.from_numpy(labels)
    recipe = Recipe(epochs=1, lr=0.01, batch_size=args.batch, shift=args.shift)

    def plain() -> None:
        torch.manual_seed(0)
        decider = copy.deepcopy(nets.decider)
        for p in decider.parameters():
            p.requires_grad_(True)
        E.keep_batchnorm_statistics(decider)  # the same model: C's BatchNorm keeps its statistics
        opt = sgd(decider.parameters(), 0.01)
        order = torch.randperm(len(feats))
        for start in range(0, len(feats), args.batch):
            index = order[start : start + args.batch]
            xb = feats[index].float()
            if args.shift:
                xb = shift(xb, args.shift)
            loss = nn.functional.cross_entropy(decider(xb), y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def veil() -> None:
        data = Rows([feats]) if args.in_memory else Rows([mapped])
        E.train_decider(recipe, copy.deepcopy(nets.decider), data, y, seed=0)

    return {"plain": plain, "veil": veil}


STAGES = {"pretrain": pretrain_loops, "poison": poison_loops, "refine": refine_loops}


def accelerated(how: Acceleration, loop: Loop) -> Loop:
    def run() -> None:
        with accelerating(how):
            loop()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", choices=sorted(STAGES), default="pretrain")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--split", default="conv2_x")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--steps", type=int, default=8, help="batches per timed round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--objective", choices=("ce", "distill"), default="ce", help="poison: the DPM's task term"
    )
    parser.add_argument("--dpm-blocks", type=int, default=4)
    parser.add_argument("--dpm-width", type=int, default=64)
    parser.add_argument("--shift", type=int, default=0, help="refine: crops of up to this many cells")
    parser.add_argument(
        "--in-memory", action="store_true", help="refine: Veil reads the in-memory tensor too"
    )
    parser.add_argument(
        "--accelerations", action="store_true", help="also Veil under channels-last and under bf16 autocast"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.batch * args.steps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, args.side, args.side), dtype=np.uint8)
    labels = rng.integers(0, args.classes, n).astype(np.int64)
    loops = STAGES[args.stage](args, images, labels)
    if args.accelerations:
        loops |= {f"veil {name}": accelerated(how, loops["veil"]) for name, how in ACCELERATIONS.items()}
    rates: dict[str, list[float]] = {name: [] for name in loops}
    loops["plain"]()  # warm up (allocator, kernels)
    for r in range(args.repeat):
        for name, loop in loops.items():
            t0 = time.perf_counter()
            loop()
            rate = n / (time.perf_counter() - t0)
            rates[name].append(rate)
            print(f"round {r + 1} {name:<18} {rate:8.2f} images/s", flush=True)
    plain = statistics.median(rates["plain"])
    print(
        f"{args.stage}: {args.backbone} at {args.side} px, batch {args.batch}, {args.steps} steps a round, "
        f"{args.threads} threads, on {'cuda' if torch.cuda.is_available() else 'cpu'}: "
        f"plain {plain:.2f} images/s"
    )
    for name in loops:
        if name != "plain":
            rate = statistics.median(rates[name])
            # each round's ratio to the plain round just before it: load that drifts hits both alike
            paired = statistics.median(v / p for v, p in zip(rates[name], rates["plain"], strict=True))
            print(
                f"  {name}: {rate:.2f} images/s, ratio to plain {rate / plain:.3f}; median of the rounds' "
                f"ratios {paired:.3f} (target at least 0.9)"
            )
    print(f"load: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
