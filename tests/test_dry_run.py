"""`veil run FILE --dry-run`: the plan is printed, nothing is trained or written, bad input still exits 2."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from entities.data import partition
from entities.datasets import kind_of, load_dataset
from entities.nets import build_classifier, feature_shape
from simulator.cli import main
from simulator.schema import load_scenario
from simulator.stages.poison import originals_published

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.yaml"
IMAGENET = ROOT / "scenarios" / "paper" / "imagenet-resnet50.yaml"


def _tree() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def _smoke_pool_bytes() -> int:
    """What smoke's pool holds, counted here from its parts: each entity's partition as `prepare` draws
    it, mirrored (share_mirrored), F's features at 32 px saved as float16 .npy; E1 (eve's victim) and E2
    (row 3's original:E2) also publish their original features."""
    s = load_scenario(SMOKE)
    labels = load_dataset(s.dataset, seed=s.task_seed).task_train.labels
    sizes = [len(i) for i in partition(labels, [e.fraction for e in s.entities], seed=s.task_seed)]
    featurizer, _ = build_classifier("resnet18", "conv2_x", 6)
    shape = feature_shape(featurizer, 32)
    total = 0
    for name, n in zip((e.name for e in s.entities), sizes, strict=True):
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((2 * n, *shape), dtype=np.float16))
        total += len(buffer.getvalue()) * (2 if name in originals_published(s) else 1)
    return total


def test_smoke_plan_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    before = _tree()
    assert main(["run", str(SMOKE), "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert _tree() == before
    for party in ("E1", "E2", "E3", "E4", "GN", "MF", "GM", "owner", "alice", "bob", "eve"):
        assert re.search(rf"^  {party} +\S", text, re.M), party
    for stage in ("prepare", "pretrain", "poison", "refine", "codes", "access", "attack", "score"):
        assert re.search(rf"^  {stage} +", text, re.M), stage
    assert "leak      does not run: no adversary knows pairs" in text
    pool = re.search(r"^pool: ([\d,]+) bytes", text, re.M)
    assert pool is not None and int(pool.group(1).replace(",", "")) == _smoke_pool_bytes()
    assert "WARNING" not in text
    assert re.search(r"^disk: .* free at ", text, re.M) and re.search(r"^memory: ", text, re.M)


def test_paper_scenario_without_its_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The published sizes stand in for ImageNet's absent files, said out loud; a real run still refuses."""
    out = tmp_path / "runs"
    assert main(["run", str(IMAGENET), "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "WARNING: the dataset's files are not here" in text and "ImageNet-1k" in text
    assert "task_train 640,584" in text  # 500 of 1000 classes of 1,281,167 images
    assert "WARNING: the run needs" in text  # a pool of ~785 GiB
    assert not out.exists()
    assert main(["run", str(IMAGENET), "--out", str(out)]) == 2  # no GPU here
    assert "resources.num_gpus" in capsys.readouterr().err and not out.exists()
    # with the CPU allowed and a CPU share this machine has, what stops it is the missing data
    fallback = ["--set", "resources.cpu_fallback=true", "--set", "resources.num_cpus=1"]
    assert main(["run", str(IMAGENET), "--out", str(out), *fallback]) == 2
    assert "/data/imagenet" in capsys.readouterr().err and not out.exists()


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("seed: 0", "seed: 0\nbogus: 1", 1))
    assert main(["run", str(bad), "--dry-run", "--out", str(tmp_path / "runs")]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["run", str(SMOKE), "--dry-run", "--seeds", "0-2"]) == 2
    assert "plans one run" in capsys.readouterr().err
    assert main(["run", "--dry-run", "--resume", str(tmp_path)]) == 2
    assert not (tmp_path / "runs").exists()


def test_published_sizes() -> None:
    """Each kind that knows its dataset gives its published sizes under the section; a folder of one's own
    images, or an ImageNet path that exists, does not."""
    from entities.datasets import DatasetSection
    from entities.registry import DATASETS

    def section(fields: dict[str, object]) -> DatasetSection:
        return DATASETS.get(str(fields["kind"])).section.model_validate(fields)

    cifar = section({"kind": "cifar10", "root": "/nowhere"})
    got = kind_of(cifar).published(cifar)
    assert got is not None and got.splits == {
        "task_train": 25_000,
        "task_test": 5_000,
        "public_train": 25_000,
        "public_test": 5_000,
    }
    celeba = section({"kind": "celeba", "root": "/nowhere/celeba", "train_per_class": 5})
    got = kind_of(celeba).published(celeba)
    assert got is not None and got.classes == 10_177 and got.splits["task_train"] == 5 * 5_088
    mine = section({"kind": "image_folder", "root": "/nowhere/my-photos"})
    assert kind_of(mine).published(mine) is None
