"""Federated averaging's two halves, as plain functions: an entity's local fit of F + C from the global
weights, and the server's weighted average of the entities' weights.

`weighted_average` is FedAvg's aggregation exactly as Flower 1.41 computes it
(flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords: factors w / sum(w), then the states
accumulated in order, `value * factor`), so that the inline engine's rounds give the very bytes the Flower
engine's do; tests/test_fedavg.py checks the two against each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from entities.data import Images, batch_reader
from entities.entity import flip
from entities.nets import build_classifier
from entities.recipes import BackboneSpec, Recipe
from entities.training import device, fit, to_device

State = dict[str, np.ndarray]


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> State:
    """sum_i w_i x_i / sum_i w_i per array, accumulated in the order given (float sums depend on it)."""
    if len(states) != len(weights) or not states:
        raise ValueError(f"{len(states)} states and {len(weights)} weights; expected as many, at least one")
    total = sum(weights)
    factors = [w / total for w in weights]
    out: State = {}
    for state, factor in zip(states, factors, strict=True):
        for key, value in state.items():
            if key not in out:
                out[key] = value * factor
            else:
                out[key] += value * factor
    return {k: np.asarray(v) for k, v in out.items()}


def new_model(backbone: BackboneSpec, num_classes: int, *, seed: int) -> nn.Sequential:
    """F + C of the scenario's backbone, seeded: FedAvg's first global model when it starts from scratch."""
    torch.manual_seed(seed)
    featurizer, decider = build_classifier(backbone.name, backbone.split, num_classes)
    return nn.Sequential(featurizer, decider)


def to_state(model: nn.Module) -> State:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_state(model: nn.Sequential, state: State) -> nn.Sequential:
    """`state` into `model` (every key; an averaged integer buffer, BatchNorm's count, cast back)."""
    current = model.state_dict()
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(current[k].dtype) for k, v in state.items()})
    return model


def train_local(
    model: nn.Sequential, recipe: Recipe, images: Images, labels: np.ndarray, *, seed: int
) -> tuple[nn.Sequential, list[float]]:
    """One round's local fit of F + C on an entity's own images (random flips, as the raw-image rows)."""
    dev = device()
    net = model.to(dev).train()
    read, y = batch_reader(images), torch.as_tensor(labels)
    aug = torch.Generator().manual_seed(seed + 1)

    def loss(index: torch.Tensor) -> torch.Tensor:
        xb = to_device(flip(read(index), aug))
        return nn.functional.cross_entropy(net(xb), y[index].to(dev))

    history = fit(net, recipe=recipe, n=len(y), loss_fn=loss, seed=seed, net="F+C (FedAvg)", generators=[aug])
    return net.eval().cpu(), history
