"""A scenario that asks for a GPU on a machine without one stops before training, unless it allows the CPU."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from entities.training import PLAIN, Acceleration, accelerating, fit, schedule_of, to_device
from simulator.cli import main
from simulator.schema import ScenarioError, parse_scenario

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_share_without_a_gpu_is_refused_unless_the_cpu_is_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load((ROOT / "scenarios" / "smoke.yaml").read_text())
    doc["resources"] = {"num_gpus": 0.5}
    scenario = tmp_path / "gpu.yaml"
    scenario.write_text(yaml.safe_dump(doc))
    out = tmp_path / "runs"
    assert main(["run", str(scenario), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "resources.num_gpus" in err and "no CUDA device" in err and "cpu_fallback" in err
    assert not out.exists()
    assert main(["run", str(scenario), "--out", str(out), "--seeds", "0-1"]) == 2  # a sweep too
    assert not out.exists()
    doc["resources"]["cpu_fallback"] = True
    scenario.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(scenario)]) == 0


def _tiny_fit() -> tuple[nn.Module, list[float]]:
    """A small conv net fitted 3 epochs on 64 random 8x8 images (the losses, the net)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 3, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 4))
    recipe = SimpleNamespace(epochs=3, lr=0.05, batch_size=8, weight_decay=0.0, optimizer="sgd", min_steps=0)
    history = fit(
        net,
        recipe=recipe,
        n=len(x),
        loss_fn=lambda i: nn.functional.cross_entropy(net(to_device(x[i])), y[i]),
        seed=0,
    )
    return net, history


def test_gpu_settings_apply_only_where_the_node_has_cuda() -> None:
    settings = parse_scenario(
        {
            **yaml.safe_load((ROOT / "scenarios" / "smoke.yaml").read_text()),
            "resources": {
                "gpu": {"batch_scale": 4, "lr_scaling": "linear", "amp": "bf16", "channels_last": True}
            },
        }
    ).resources.gpu
    with accelerating(settings, on=torch.device("cpu")) as acc:
        assert acc == PLAIN  # a CPU node trains as if the section were not there
    with accelerating(settings, on=torch.device("cuda")) as acc:
        assert acc == Acceleration(4, 4.0, "bf16", True, True)
    # the plain settings inside a block train bit for bit as outside one
    _, outside = _tiny_fit()
    with accelerating(PLAIN):
        _, inside = _tiny_fit()
    assert outside == inside


def test_an_acceleration_scales_batches_and_lr_and_trains_in_bf16_and_channels_last() -> None:
    recipe = SimpleNamespace(epochs=1, lr=0.05, batch_size=8, weight_decay=0.0, optimizer="sgd", min_steps=0)
    assert schedule_of(recipe, 64) == (1, 8)  # type: ignore[arg-type]
    how = Acceleration(batch_scale=2, lr_scale=2.0, amp="bf16", channels_last=True)
    with accelerating(how):
        assert schedule_of(recipe, 64) == (1, 4)  # type: ignore[arg-type]  # batches of 16
        net, history = _tiny_fit()
    conv = net[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(math.isfinite(v) for v in history) and history[-1] < history[0]  # it learns in bf16
    _, plain = _tiny_fit()
    assert history != plain  # and it is another computation


@pytest.mark.parametrize(
    ("gpu", "field"),
    [
        ({"batch_scale": 0}, "resources.gpu.batch_scale"),
        ({"amp": "fp8"}, "resources.gpu.amp"),
        ({"lr_scaling": "sqrt"}, "resources.gpu.lr_scaling"),
        ({"workers": 4}, "resources.gpu.workers"),
    ],
)
def test_bad_gpu_settings_are_refused_naming_the_field(gpu: dict[str, object], field: str) -> None:
    doc = yaml.safe_load((ROOT / "scenarios" / "smoke.yaml").read_text())
    doc["resources"] = {"gpu": gpu}
    with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
        parse_scenario(doc)
