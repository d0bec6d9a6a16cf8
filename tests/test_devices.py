"""A scenario that asks for a GPU on a machine without one stops before training, unless it allows the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from simulator.cli import main

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
