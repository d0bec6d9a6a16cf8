"""One training loop for every net Veil trains (classifiers, R, DPMs, deciders), with its checkpoints."""

from __future__ import annotations

import io
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from entities.files import make_private_dir, write_atomic
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


# --- how a CUDA device trains: bigger batches, mixed precision, channels-last, pinned copies ----------


@dataclass(frozen=True)
class Acceleration:
    """What `fit` and `to_device` do on a GPU (scenario `resources.gpu`). The defaults change nothing,
    and a node without CUDA always trains with them, so a CPU run's results never depend on these."""

    batch_scale: int = 1  # every recipe's batch_size times this
    lr_scale: float = 1.0  # and its learning rate times this (linear scaling: batch_scale; else 1)
    amp: str = "off"  # autocast dtype: "off", "bf16" or "fp16" (the latter with a gradient scaler)
    channels_last: bool = False  # the trained net and 4-D batches in channels-last memory format
    pin_memory: bool = False  # batches copied to the device from pinned memory, asynchronously


PLAIN = Acceleration()
_ACCELERATION: ContextVar[Acceleration | None] = ContextVar("veil_acceleration", default=None)


def acceleration() -> Acceleration:
    """The acceleration `fit` trains with here (PLAIN outside an `accelerating()` block)."""
    return _ACCELERATION.get() or PLAIN


class GPUSettings(Protocol):
    """The scenario's `resources.gpu` section (simulator.schema.GPUSettings)."""

    @property
    def batch_scale(self) -> int: ...
    @property
    def lr_scaling(self) -> str: ...
    @property
    def amp(self) -> str: ...
    @property
    def channels_last(self) -> bool: ...
    @property
    def pin_memory(self) -> bool: ...


@contextmanager
def accelerating(
    settings: GPUSettings | Acceleration, *, on: torch.device | None = None
) -> Iterator[Acceleration]:
    """Train inside the block as `settings` say where the device (`on`, default: this machine's) is CUDA;
    elsewhere with the defaults. An `Acceleration` given directly applies on any device (tests)."""
    if isinstance(settings, Acceleration):
        acc = settings
    elif (on or device()).type == "cuda":
        scale = settings.batch_scale
        lr = float(scale) if settings.lr_scaling == "linear" else 1.0
        acc = Acceleration(scale, lr, settings.amp, settings.channels_last, settings.pin_memory)
    else:
        acc = PLAIN
    token = _ACCELERATION.set(acc)
    try:
        yield acc
    finally:
        _ACCELERATION.reset(token)


def batch_size_of(recipe: Recipe) -> int:
    """The batch size `fit` trains with here: the recipe's, scaled on a GPU."""
    return recipe.batch_size * acceleration().batch_scale


def to_device(x: torch.Tensor) -> torch.Tensor:
    """A batch moved to the training device: from pinned memory without blocking, channels-last for
    images, where the acceleration says so."""
    acc, dev = acceleration(), device()
    if acc.pin_memory and dev.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory().to(dev, non_blocking=True)
    else:
        x = x.to(dev)
    return x.contiguous(memory_format=torch.channels_last) if acc.channels_last and x.dim() == 4 else x


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


# --- checkpoints: a long fit survives a crash of its task -----------------------------------------

# A fit saves a checkpoint after an epoch only when this long has passed since its last save (or its
# start): a paper-scale F+C's checkpoint is ~100 MB written and fsynced, which would cost more than it
# saves if done after every epoch of a fit whose epochs take milliseconds, while redoing under a minute
# of work after a crash costs little. 0 saves after every epoch (tests).
CHECKPOINT_EVERY_S = 60.0
CHECKPOINT_ENV = "VEIL_CHECKPOINT_S"  # overrides CHECKPOINT_EVERY_S, e.g. for a run whose kill is planned


def checkpoint_every_s() -> float:
    return float(os.environ.get(CHECKPOINT_ENV, CHECKPOINT_EVERY_S))


@dataclass
class Checkpoints:
    """Where the fits of one task keep their checkpoints: `directory`/fit-<i>.pt for its i-th fit call.

    A task is deterministic, so its i-th fit is the same fit in every attempt; a checkpoint also holds a
    fingerprint of its fit (net, data size, seed, recipe, parameter shapes), and one that does not match
    is ignored, so a changed recipe or call order never loads the wrong state.
    """

    directory: Path
    every_s: float
    calls: int = 0
    resumed: list[tuple[int, str, int]] = field(default_factory=list)  # (fit index, net, 1-based epoch
    # it went on from) of each fit that continued from a checkpoint

    def next_path(self) -> Path:
        self.calls += 1
        return self.directory / f"fit-{self.calls - 1}.pt"


_CHECKPOINTS: ContextVar[Checkpoints | None] = ContextVar("veil_training_checkpoints", default=None)


@contextmanager
def checkpointing(directory: Path, *, every_s: float | None = None) -> Iterator[Checkpoints]:
    """Checkpoint the `fit` calls made inside the block in `directory` (made 0700, files 0600: a
    checkpoint holds the net being trained, a DPM's weights included), and resume each from its own.

        with checkpointing(private / "checkpoints" / task) as ckpt:
            train_classifier(...)   # continues after the last epoch a killed attempt saved
        ckpt.resumed                # the fits that did, and the epoch each went on from

    When the block ends without an exception its directory is removed: the task's result is what counts
    from then on, and no later attempt picks up a stale checkpoint. An exception (or a kill) keeps it.
    Per thread/context, like `recording()`.
    """
    ckpt = Checkpoints(Path(directory), checkpoint_every_s() if every_s is None else every_s)
    token = _CHECKPOINTS.set(ckpt)
    try:
        yield ckpt
    finally:
        _CHECKPOINTS.reset(token)
    shutil.rmtree(ckpt.directory, ignore_errors=True)


def _numpy_state() -> tuple[Any, ...]:
    # as tensors and plain numbers, so that torch.load(weights_only=True) reads the checkpoint back
    state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _set_numpy_state(state: Sequence[Any]) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


@dataclass
class _FitState:
    """What a fit needs to go on after an epoch as if it had never stopped: the model (parameters and
    buffers: BatchNorm statistics), optimizer, schedule, losses so far, and every random state it draws
    from (data order, the caller's generators such as augmentation's, and the global ones)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    order: torch.Generator
    generators: Sequence[torch.Generator]
    fingerprint: str
    path: Path
    every_s: float
    saved_at: float = field(default_factory=time.monotonic)

    def after_epoch(self, epoch: int, history: list[float]) -> None:
        """Save the state after `epoch` (1-based) if `every_s` has passed since the last save."""
        if time.monotonic() - self.saved_at >= self.every_s:
            self.save(epoch, history)
            self.saved_at = time.monotonic()

    def save(self, epoch: int, history: list[float]) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "history": list(history),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "schedule": self.schedule.state_dict(),
            "order": self.order.get_state(),
            "generators": [g.get_state() for g in self.generators],
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        make_private_dir(self.path.parent)
        write_atomic(self.path, buffer.getvalue(), private=True)  # a kill mid-write leaves the previous one

    def load(self) -> tuple[int, list[float]] | None:
        """(epochs done, their losses) from the checkpoint, with every state restored; None when there
        is no checkpoint of this fit."""
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            return None
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.order.set_state(state["order"])
        for g, saved in zip(self.generators, state["generators"], strict=True):
            g.set_state(saved)
        random.setstate(state["python"])
        _set_numpy_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"]:
            torch.cuda.set_rng_state_all(state["cuda"])
        return int(state["epoch"]), [float(x) for x in state["history"]]


def _fingerprint(
    net: str, recipe: Recipe, n: int, seed: int, epochs: int, model: nn.Module, generators: int
) -> str:
    """What identifies one fit across attempts; a checkpoint of any other fit is not loaded."""
    fields = (recipe.optimizer, recipe.lr, recipe.batch_size, recipe.weight_decay, recipe.min_steps)
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    acc = acceleration()
    return repr(
        (net, n, seed, epochs, fields, generators, shapes) + ((acc,) if acc != Acceleration() else ())
    )


def schedule_of(recipe: Recipe, n: int) -> tuple[int, int]:
    """(epochs, steps per epoch) `fit` trains for on n samples: a small dataset trains for more epochs,
    so that every run gets at least recipe.min_steps updates."""
    steps_per_epoch = max(1, math.ceil(n / batch_size_of(recipe)))
    return max(recipe.epochs, math.ceil(recipe.min_steps / steps_per_epoch)), steps_per_epoch


def fit(
    trained: nn.Module | Iterable[nn.Parameter],
    *,
    recipe: Recipe,
    n: int,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
    net: str = "net",
    generators: Sequence[torch.Generator] = (),
) -> list[float]:
    """Minimise loss_fn over shuffled index batches of n samples for recipe.epochs epochs
    (more when that makes fewer than recipe.min_steps steps).

    Cosine learning-rate decay; batches of one sample are skipped (BatchNorm needs two). Inside an
    `accelerating()` block on a GPU: larger batches, mixed precision, channels-last (see Acceleration).
    Returns the mean loss of each epoch. `net` names what trains in progress reports (entities.progress).

    `trained`: a module (its parameters that require gradients train) or bare parameters. Inside a
    `checkpointing()` block a module's fit saves its state after epochs and resumes from a saved one;
    `generators` are the generators loss_fn draws from (augmentation), saved and restored with it, so
    that a resumed fit ends bit for bit where an uninterrupted one does. on_epoch sees the epochs this
    call runs.
    """
    model = trained if isinstance(trained, nn.Module) else None
    candidates = trained.parameters() if isinstance(trained, nn.Module) else trained
    params = [p for p in candidates if p.requires_grad]
    acc = acceleration()
    if model is not None and acc.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = OPTIMIZERS.get(recipe.optimizer)(params, recipe)
    for group in opt.param_groups:  # before the schedule reads its initial lr
        group["lr"] *= acc.lr_scale
    amp = _AMP_DTYPES.get(acc.amp)
    scaler = torch.amp.GradScaler(device().type, enabled=acc.amp == "fp16")
    epochs, steps_per_epoch = schedule_of(recipe, n)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    generator = seed_everything(seed)
    history: list[float] = []
    start = 0
    saver, ckpt = None, _CHECKPOINTS.get()
    if ckpt is not None and model is not None:
        fingerprint = _fingerprint(net, recipe, n, seed, epochs, model, len(generators))
        path = ckpt.next_path()
        saver = _FitState(model, opt, schedule, generator, generators, fingerprint, path, ckpt.every_s)
        if (done := saver.load()) is not None:
            start, history = done
            ckpt.resumed.append((ckpt.calls - 1, net, start + 1))
    progress = tracker(net, (epochs - start) * steps_per_epoch, epochs)
    for epoch in range(start, epochs):
        total, count = 0.0, 0
        for index in batches(n, batch_size_of(recipe), generator):
            progress.step(len(index), epoch + 1)
            if len(index) < 2:
                schedule.step()
                continue
            with torch.autocast(device().type, dtype=amp, enabled=amp is not None):
                loss = loss_fn(index)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            schedule.step()
            total += loss.item() * len(index)
            count += len(index)
        history.append(total / max(count, 1))
        if saver is not None:
            saver.after_epoch(epoch + 1, history)
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
