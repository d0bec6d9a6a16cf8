"""What an entity's training does to the nets it is handed (real torch, tiny shapes)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from entities.entity import empty_nets, featurize, featurize_chunks, shift, to_float, train_decider, train_dpm
from entities.metrics import distillation
from entities.nets import build_classifier
from entities.training import apply
from simulator.schema import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_refining_the_decider_keeps_its_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    _, decider = build_classifier("resnet18", "conv2_x", 3)
    before = {k: v.clone() for k, v in decider.state_dict().items()}
    # features unlike the ones C was trained on, as poisoned features are
    features = (torch.rand(16, 64, 8, 8) * 5).half()
    labels = torch.arange(16) % 3
    recipe = SimpleNamespace(
        epochs=1, lr=0.01, batch_size=8, weight_decay=0.0, optimizer="sgd", min_steps=4, shift=0
    )
    refined = train_decider(recipe, decider, features, labels, seed=0)

    after = refined.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    weights = [k for k, _ in refined.named_parameters()]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in weights)  # it did train
    assert not refined.training and not any(m.training for m in refined.modules() if isinstance(m, nn.Module))


def test_refine_shift_augments_the_features_it_trains_on() -> None:
    torch.manual_seed(0)
    features, labels = torch.rand(16, 64, 8, 8).half(), torch.arange(16) % 3
    _, decider = build_classifier("resnet18", "conv2_x", 3)

    def refined(cells: int) -> dict[str, torch.Tensor]:
        recipe = SimpleNamespace(
            epochs=1, lr=0.01, batch_size=8, weight_decay=0.0, optimizer="sgd", min_steps=2, shift=cells
        )
        return train_decider(recipe, copy.deepcopy(decider), features, labels, seed=0).state_dict()

    plain, again, shifted = refined(0), refined(0), refined(1)
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    assert any(not torch.equal(plain[k], shifted[k]) for k in plain)


@pytest.mark.parametrize("objective", ["ce", "distill"])
def test_dpm_objective_decides_whether_labels_are_used(objective: str) -> None:
    """CE fits P to the labels; distillation matches C's predictions on F(x) and never reads a label."""
    smoke = load_scenario(ROOT / "scenarios" / "smoke.yaml")
    dpm_cfg = smoke.dpm.model_copy(update={"objective": objective, "min_steps": 3, "epochs": 1})
    scenario = smoke.model_copy(update={"dpm": dpm_cfg})
    torch.manual_seed(0)
    nets = empty_nets(scenario.backbone, scenario.reconstructor, 32, num_classes=3)
    images = np.random.default_rng(0).integers(0, 256, size=(12, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(12) % 3

    def trained(y: np.ndarray) -> dict[str, torch.Tensor]:
        dpm = train_dpm(scenario.dpm, scenario.entities[0].dpm, nets, images, y, seed=1)
        return dpm.state_dict()

    a, b = trained(labels), trained((labels + 1) % 3)
    same = all(torch.equal(a[k], b[k]) for k in a)
    assert same == (objective == "distill")


def test_distillation_at_a_higher_temperature_also_weighs_the_other_classes() -> None:
    """A confident target with its top class kept: nearly free at T = 1, a clear cost at T = 4."""
    target = torch.tensor([[12.0, 4.0, 2.0, 0.0]])
    same_top_scrambled = torch.tensor([[12.0, 0.0, 2.0, 4.0]])
    assert distillation(target, target, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    cold, warm = (distillation(same_top_scrambled, target, t).item() for t in (1.0, 4.0))
    assert cold < 0.01 < warm
    # at T = 1 it is the plain KL divergence of the two softmax distributions
    p, q = torch.softmax(target, 1), torch.softmax(same_top_scrambled, 1)
    assert cold == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-4)


def test_dpm_temperature_changes_what_distillation_trains() -> None:
    smoke = load_scenario(ROOT / "scenarios" / "smoke.yaml")
    torch.manual_seed(0)
    nets = empty_nets(smoke.backbone, smoke.reconstructor, 32, num_classes=3)
    images = np.random.default_rng(0).integers(0, 256, size=(12, 3, 32, 32), dtype=np.uint8)

    def trained(temperature: float) -> dict[str, torch.Tensor]:
        update = {"objective": "distill", "temperature": temperature, "min_steps": 3, "epochs": 1}
        recipe = smoke.dpm.model_copy(update=update)
        return train_dpm(recipe, smoke.entities[0].dpm, nets, images, np.arange(12) % 3, seed=1).state_dict()

    one, again, four = trained(1.0), trained(1.0), trained(4.0)
    assert all(torch.equal(one[k], again[k]) for k in one)
    assert any(not torch.equal(one[k], four[k]) for k in one)


def test_shift_translates_each_feature_map_with_zero_fill() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5) + 1
    out = shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        # each map is one 5x5 window of its zero-padded self, the same window for every channel
        windows = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 5])
        ]
        assert len(windows) == 1
    moved = shift(x.repeat(16, 1, 1, 1), 1, torch.Generator().manual_seed(1))
    assert not all(torch.equal(m, x[i % 2]) for i, m in enumerate(moved))  # some maps did move
    assert torch.equal(
        shift(x, 1, torch.Generator().manual_seed(3)), shift(x, 1, torch.Generator().manual_seed(3))
    )


def test_features_in_chunks_are_those_of_one_pass() -> None:
    """The pool's features, computed a chunk at a time, equal those of one pass over every image (and
    its mirror image), bit for bit: the chunks are whole batches of `apply`."""
    torch.manual_seed(0)
    featurizer, _ = build_classifier("resnet18", "conv2_x", 3)
    images = np.random.default_rng(0).integers(0, 256, size=(300, 3, 16, 16), dtype=np.uint8)
    x = to_float(images)
    one_pass = apply(lambda b: featurizer.eval()(b), torch.cat([x, x.flip(-1)]))
    chunks = list(featurize_chunks(featurizer, images, mirrored=True, chunk=256))
    assert [len(c) for c in chunks] == [256, 256, 88]  # the second straddles originals and mirrors
    assert torch.equal(torch.cat(chunks), one_pass)
    assert torch.equal(featurize(featurizer, images, mirrored=True), one_pass)
