"""One training loop for every net Veil trains (classifiers, R, DPMs, deciders)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch
from torch import nn

from entities.progress import tracker
from entities.recipes import Recipe
from entities.registry import OPTIMIZERS


@OPTIMIZERS.register("adam")
def adam(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9."""
    return torch.optim.SGD(
        params, lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay, nesterov=True
    )


def device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index batches over n samples, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


# The per-epoch losses of every `fit` call inside a `recording()` block, in call order.
_CURVES: ContextVar[list[list[float]] | None] = ContextVar("veil_training_curves", default=None)


@contextmanager
def recording() -> Iterator[list[list[float]]]:
    """Collect the loss history (mean loss per epoch) of each `fit` call made inside the block.

        with recording() as curves:
            train_classifier(...)
        curves  # [[loss of epoch 1, loss of epoch 2, ...]]: one list per fit call, in call order

    Training is unchanged: the losses are the ones `fit` computes anyway. Blocks nest (the inner one
    collects) and are per thread/context, so parties running in one process do not mix.
    """
    curves: list[list[float]] = []
    token = _CURVES.set(curves)
    try:
        yield curves
    finally:
        _CURVES.reset(token)


def fit(
    params: Iterable[nn.Parameter],
    *,
    recipe: Recipe,
    n: int,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
    net: str = "net",
) -> list[float]:
    """Minimise loss_fn over shuffled index batches of n samples for recipe.epochs epochs
    (more when that makes fewer than recipe.min_steps steps).

    Cosine learning-rate decay; batches of one sample are skipped (BatchNorm needs two).
    Returns the mean loss of each epoch. `net` names what trains in progress reports (entities.progress).
    """
    params = [p for p in params if p.requires_grad]
    opt = OPTIMIZERS.get(recipe.optimizer)(params, recipe)
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    # a small dataset trains for more epochs, so that every run gets at least min_steps updates
    epochs = max(recipe.epochs, math.ceil(recipe.min_steps / steps_per_epoch))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    generator = seed_everything(seed)
    history = []
    progress = tracker(net, epochs * steps_per_epoch, epochs)
    for epoch in range(epochs):
        total, count = 0.0, 0
        for index in batches(n, recipe.batch_size, generator):
            progress.step(len(index), epoch + 1)
            if len(index) < 2:
                schedule.step()
                continue
            loss = loss_fn(index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(index)
            count += len(index)
        history.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    progress.finish()
    sink = _CURVES.get()
    if sink is not None:
        sink.append(list(history))
    return history


@torch.no_grad()
def apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """fn over x in batches, without gradients; the result stays on fn's device, then moves to the CPU."""
    return torch.cat([fn(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)]) if len(x) else x
