"""What an entity's training does to the nets it is handed (real torch, tiny shapes)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from entities.entity import train_decider
from entities.nets import build_classifier


def test_refining_the_decider_keeps_its_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    _, decider = build_classifier("resnet18", "conv2_x", 3)
    before = {k: v.clone() for k, v in decider.state_dict().items()}
    # features unlike the ones C was trained on, as poisoned features are
    features = (torch.rand(16, 64, 8, 8) * 5).half()
    labels = torch.arange(16) % 3
    recipe = SimpleNamespace(epochs=1, lr=0.01, batch_size=8, weight_decay=0.0, optimizer="sgd", min_steps=4)
    refined = train_decider(SimpleNamespace(refine=recipe), decider, features, labels, seed=0)

    after = refined.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    weights = [k for k, _ in refined.named_parameters()]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in weights)  # it did train
    assert not refined.training and not any(m.training for m in refined.modules() if isinstance(m, nn.Module))
