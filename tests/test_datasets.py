"""Dataset kinds on small fixtures written here in each published layout: what they read, how they fail,
and the smoke scenario run on each through the real simulation."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import yaml
from PIL import Image

from entities.datasets import DatasetKind, TaskData, kind_of, load_dataset
from entities.datasets.base import ArraySource, DatasetSection, ImageSet
from entities.registry import DATASETS
from reports.runs import read_records
from simulator.cli import main
from simulator.schema import load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.yaml"
CLASSES = 10


def pattern(label: int, i: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8: a class's colour and stripe frequency, with noise, so classes differ visibly."""
    h, w = size
    hue = np.array([(37 * label) % 256, (91 * label + 40) % 256, (150 + 53 * label) % 256], dtype=np.float32)
    stripes = 0.5 + 0.5 * np.sin(np.arange(w) * (label + 1) * np.pi / w)[None, :, None]
    img = hue * stripes + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_cifar10(root: Path, per_class: int = 24, test_per_class: int = 6) -> Path:
    """cifar-10-batches-py/ as the archive has it: five training pickles, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(labels: list[int]) -> dict[bytes, object]:
        rows = [pattern(c, i, (32, 32), rng).transpose(2, 0, 1).reshape(-1) for i, c in enumerate(labels)]
        return {b"data": np.stack(rows).astype(np.uint8), b"labels": labels, b"batch_label": b"x"}

    train = [c for c in range(CLASSES) for _ in range(per_class)]
    rng.shuffle(train)
    for i, chunk in enumerate(np.array_split(np.array(train), 5), start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch([int(c) for c in chunk]), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch([c for c in range(CLASSES) for _ in range(test_per_class)]), f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{c}".encode() for c in range(CLASSES)]}, f, protocol=2)
    return root


def make_imagenet(root: Path, per_class: int = 20, val_per_class: int = 6) -> Path:
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG of varied sizes (real JPEG files)."""
    rng = np.random.default_rng(1)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(CLASSES):
            folder = root / split / f"n{1440764 + c:08d}"
            folder.mkdir(parents=True)
            for i in range(n):
                size = (int(rng.integers(40, 60)), int(rng.integers(40, 70)))
                Image.fromarray(pattern(c, i, size, rng)).save(folder / f"img_{i}.JPEG", quality=90)
    return root


def make_celeba(root: Path, people: int = 16, per_person: int = 8) -> Path:
    """img_align_celeba/ of 178x218 JPEGs with the three list files in their published formats."""
    rng = np.random.default_rng(2)
    (root / "img_align_celeba").mkdir(parents=True)
    names = ["Smiling", "Male", "Young"]
    attr_lines, id_lines, part_lines = [], [], []
    n = 0
    for person in range(people):
        for i in range(per_person):
            n += 1
            name = f"{n:06d}.jpg"
            Image.fromarray(pattern(person % CLASSES, i, (218, 178), rng)).save(
                root / "img_align_celeba" / name
            )
            values = [1 if (person + k + i) % 2 else -1 for k in range(len(names))]
            attr_lines.append(name + "".join(f" {v:2d}" for v in values))
            id_lines.append(f"{name} {person + 100}")
            part_lines.append(f"{name} {0 if i < per_person - 1 else 2}")
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(names)}\n" + "\n".join(attr_lines) + "\n")
    (root / "identity_CelebA.txt").write_text("\n".join(id_lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")
    return root


def section(raw: dict[str, object]) -> DatasetSection:
    """A `dataset:` mapping validated as the scenario validates it."""
    doc = yaml.safe_load(SMOKE.read_text())
    doc["dataset"] = raw
    return parse_scenario(doc, "test").dataset


def finite_top1(run: Path) -> bool:
    """Every collaboration row has a finite top-1 on the run's test set."""
    records = read_records(run)
    top1 = records[(records.table == "table5") & (records.metric == "top1")]
    rows = len(load_scenario(run / "scenario.yaml").collaboration)
    return len(top1) == rows and bool(np.isfinite(top1.value).all())


def disjoint(data: TaskData) -> None:
    assert not set(data.task_train.classes) & set(data.public_train.classes)
    assert data.task_train.classes == data.task_test.classes


# --- what each kind reads ---------------------------------------------------------------------


def test_cifar10_reads_the_pickles_pixel_for_pixel(tmp_path: Path) -> None:
    root = make_cifar10(tmp_path)
    spec = section({"kind": "cifar10", "root": str(root)})
    data = load_dataset(spec, seed=0)
    disjoint(data)
    assert len(data.task_train.classes) == len(data.public_train.classes) == 5  # the paper's two halves
    assert len(data.task_train) == 5 * 24 and len(data.task_test) == 5 * 6
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    first = data.task_test.classes[0]
    expected = raw[b"data"][np.array(raw[b"labels"]) == int(first.removeprefix("class"))].reshape(
        -1, 3, 32, 32
    )
    assert np.array_equal(data.task_test.read(np.flatnonzero(data.task_test.labels == 0)), expected)
    # the same seed, the same split; another seed, other classes
    assert load_dataset(spec, seed=0).task_train.classes == data.task_train.classes
    assert any(load_dataset(spec, seed=s).task_train.classes != data.task_train.classes for s in range(1, 6))


def test_image_folder_reads_both_layouts_and_the_class_split(tmp_path: Path) -> None:
    root = make_imagenet(tmp_path / "imagenet")
    spec = section({"kind": "image_folder", "root": str(root), "image_size": 32, "task_classes": 6})
    data = load_dataset(spec, seed=0)
    disjoint(data)
    assert len(data.task_train.classes) == 6 and len(data.public_train.classes) == 4
    assert len(data.task_train) == 6 * 20 and len(data.task_test) == 6 * 6  # val/ is the test set
    images = data.task_train.read([0, 1])
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    # one folder of class folders: a seeded test share of each class
    flat = section(
        {"kind": "image_folder", "root": str(root / "train"), "image_size": 32, "test_share": 0.25}
    )
    split = load_dataset(flat, seed=0)
    assert len(split.task_train) + len(split.task_test) == 5 * 20 and len(split.task_test) == 5 * 5
    named = section(
        {
            "kind": "image_folder",
            "root": str(root),
            "image_size": 32,
            "task_classes": ["n01440764", "n01440765"],
        }
    )
    assert load_dataset(named, seed=3).task_train.classes == ("n01440764", "n01440765")


def test_celeba_keeps_identities_and_splits_people_for_an_attribute(tmp_path: Path) -> None:
    root = make_celeba(tmp_path / "celeba")
    spec = section({"kind": "celeba", "root": str(root), "image_size": 32})
    data = load_dataset(spec, seed=0)
    disjoint(data)
    assert data.task_train.identities is not None
    assert data.task_train.read([0]).shape == (1, 3, 32, 32)
    # every test person also has training images: a reconstruction can be matched to another image of them
    assert set(data.task_test.identities.tolist()) <= set(data.task_train.identities.tolist())
    smiling = load_dataset(
        section({"kind": "celeba", "root": str(root), "image_size": 32, "task": "Smiling"}), seed=0
    )
    assert smiling.disjoint == "identities" and smiling.task_train.classes == ("not Smiling", "Smiling")
    assert not set(smiling.task_train.identities.tolist()) & set(smiling.public_train.identities.tolist())


def test_mnist5k_ships_inside_a_wheel() -> None:
    data = load_dataset(section({"kind": "mnist5k"}), seed=0)
    disjoint(data)
    assert len(data.task_train) + len(data.task_test) == 2500  # five digits of 500
    assert data.task_train.read([0]).shape == (1, 3, 32, 32)


def test_a_split_too_big_for_the_budget_must_be_read_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_IMAGES_GIB", "0.001")
    data = load_dataset(section({"kind": "mnist5k", "image_size": 64}), seed=0)
    with pytest.raises(MemoryError, match="VEIL_IMAGES_GIB"):
        _ = data.task_train.images
    assert data.task_train.read([0, 1]).shape == (2, 3, 64, 64)


# --- a wrong layout: the path and the layout named, exit 2, nothing written ------------------------------


def spoil_no_class_folders(root: Path) -> Path:
    make_imagenet(root / "src")
    flat = root / "flat"
    flat.mkdir()
    for i, f in enumerate(sorted((root / "src" / "train").rglob("*.JPEG"))[:5]):
        os.replace(f, flat / f"{i}.JPEG")
    return flat


def spoil_truncated_pickle(root: Path) -> Path:
    make_cifar10(root)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:1000])
    return root


def spoil_not_an_image(root: Path) -> Path:
    make_imagenet(root)
    (root / "train" / "n01440766" / "img_3.JPEG").write_bytes(b"this is not a JPEG at all")
    return root


def spoil_celeba_lists(root: Path) -> Path:
    make_celeba(root)
    lines = (root / "identity_CelebA.txt").read_text().splitlines()
    (root / "identity_CelebA.txt").write_text("\n".join(lines[:-3]) + "\n")
    return root


@pytest.mark.parametrize(
    ("kind", "spoil", "named", "expected"),
    [
        ("image_folder", spoil_no_class_folders, "flat", "root/<class>/<image>"),
        ("cifar10", spoil_truncated_pickle, "data_batch_3", "pickle"),
        ("image_folder", spoil_not_an_image, "img_3.JPEG", "root/<class>/<image>"),
        ("celeba", spoil_celeba_lists, "identity_CelebA.txt", "list_eval_partition.txt"),
    ],
)
def test_a_wrong_layout_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, spoil, named: str, expected: str
) -> None:
    root = spoil(tmp_path / "data")
    doc = yaml.safe_load(SMOKE.read_text())
    doc["dataset"] = {"kind": kind, "root": str(root), "image_size": 32}
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(doc))
    out = tmp_path / "runs"
    for argv in (["validate", str(scenario)], ["run", str(scenario), "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert named in err and expected in err and "Traceback" not in err, err
    assert not out.exists()
    assert main(["validate", str(scenario), "--schema-only"]) == 0  # the file alone is fine


def test_a_grant_beyond_the_files_test_set_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load(SMOKE.read_text())
    doc["dataset"] = {"kind": "celeba", "root": str(make_celeba(tmp_path / "celeba")), "image_size": 32}
    doc["data_owner"]["users"][1]["grant"] = [3, 500]
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(doc))
    assert main(["run", str(scenario), "--out", str(tmp_path / "runs")]) == 2
    assert "data_owner.users[1].grant[1]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --- adding a kind touches one file --------------------------------------------------------------


class StripesDataset(DatasetSection):
    kind: Literal["stripes"]
    image_size: int = 32


class Stripes(DatasetKind[StripesDataset]):
    """A kind a test adds: ten classes of striped images, in memory."""

    section = StripesDataset

    def load(self, spec: StripesDataset, *, seed: int, side: int | None = None) -> TaskData:
        rng = np.random.default_rng(seed)
        n = side or spec.side

        def split(classes: range, per_class: int) -> ImageSet:
            labels = np.repeat(np.arange(len(classes)), per_class)
            images = np.stack(
                [pattern(c, 0, (n, n), rng).transpose(2, 0, 1) for c in classes for _ in range(per_class)]
            )
            return ImageSet(ArraySource(images), labels.astype(np.int64), tuple(f"s{c}" for c in classes))

        return TaskData(
            split(range(6), 30), split(range(6), 10), split(range(6, 9), 30), split(range(6, 9), 10)
        )


def test_a_kind_added_in_a_test_module_runs_the_smoke_scenario(tmp_path: Path) -> None:
    if "stripes" not in DATASETS:
        DATASETS.register("stripes")(Stripes)
    doc = yaml.safe_load(SMOKE.read_text())
    doc["dataset"] = {"kind": "stripes", "image_size": 32}
    del doc["data_owner"], doc["adversaries"], doc["fedavg"]  # the DPM stages are what read a kind
    doc["collaboration"] = [doc["collaboration"][3]]  # a pooled row
    scenario = tmp_path / "stripes.yaml"
    scenario.write_text(yaml.safe_dump(doc))
    assert isinstance(load_scenario(scenario).dataset, StripesDataset)
    assert isinstance(kind_of(load_scenario(scenario).dataset), Stripes)
    # the inline engine: the kind lives in this process only (a Ray node would not import this module)
    assert main(["run", str(scenario), "--out", str(tmp_path / "runs"), "--engine", "inline"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert finite_top1(run)
    dataset = json.loads((run / "manifest.json").read_text())["dataset"]  # what the run read, and its size
    assert dataset["kind"] == "stripes" and dataset["images"]["task_train"] == 180
    assert dataset["bytes"] == (180 + 60 + 90 + 30) * 3 * 32 * 32


# --- the smoke scenario on each layout, through the real Flower simulation ---------------------------


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        # CIFAR's and the image folders' runs in the slow tier (a minute each): their reading is tested
        # above, and the celeba run takes files through every stage in the default tier
        pytest.param("cifar10", make_cifar10, marks=pytest.mark.slow),
        pytest.param("image_folder", make_imagenet, marks=pytest.mark.slow),
        ("celeba", make_celeba),
    ],
)
def test_the_smoke_scenario_runs_on_each_layout(tmp_path: Path, kind: str, make) -> None:
    root = make(tmp_path / "data")
    doc = yaml.safe_load(SMOKE.read_text())
    doc["dataset"] = {"kind": kind, "root": str(root), "image_size": 32}
    doc.pop("fedavg")  # what reads a layout's files: every stage but FedAvg, a pooled row and a raw one
    doc["collaboration"] = [doc["collaboration"][i] for i in (0, 3)]
    if kind == "celeba":  # the whole smoke scenario, one cheap attack: on faces, person re-identification
        doc["adversaries"] = [
            {"name": "eve", "knowledge": "outsider", "victims": ["E1"], "attacks": ["shared-reconstructor"]}
        ]
    else:  # the Deep Poisoning stages, which read the dataset's images (kept short for the default tier)
        del doc["data_owner"], doc["adversaries"]
    scenario = tmp_path / f"{kind}.yaml"
    scenario.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "VEIL_PROGRESS": "off"}
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", str(scenario), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = out.iterdir()
    assert finite_top1(run)
    records = read_records(run)
    person = records[records.metric == "reid_person_rank1"]
    assert (len(person) > 0) == (kind == "celeba"), person
    if kind == "celeba":  # a face dataset's report says what re-identification asks there
        assert main(["report", str(run), "--quiet"]) == 0
        assert "same person" in (run / "report" / "index.html").read_text()


def test_person_reidentification_finds_the_other_image_of_the_same_person() -> None:
    import torch

    from entities.attacks.scoring import person_reidentification

    rng = torch.Generator().manual_seed(0)
    people = torch.arange(20)
    faces = torch.rand(20, 3, 16, 16, generator=rng)  # one look per person
    gallery = (faces + 0.05 * torch.rand(20, 3, 16, 16, generator=rng)).clamp(0, 1)  # another image of each
    rate, scored = person_reidentification(faces, people, gallery, people, size=10)
    assert scored == 20 and rate == 1.0
    strangers = torch.rand(20, 3, 16, 16, generator=rng)
    rate, _ = person_reidentification(strangers, people, gallery, people, size=10)
    assert rate < 0.5
    alone, scored = person_reidentification(faces, people + 100, gallery, people, size=10)
    assert scored == 0  # nobody in the gallery: nothing to score, not a miss


def test_training_reads_batches_when_the_images_do_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a budget smaller than the data, pre-training, R and evaluation decode batch by batch and never
    hold a whole split: the ImageSets' whole-set pixels are never built."""
    from entities import entity as E
    from simulator.schema import Backbone, ReconstructorSection, Training

    monkeypatch.setenv("VEIL_IMAGES_GIB", str(20_000 / 2**30))  # 20 kB: a few 32-pixel images
    data = load_dataset(
        section({"kind": "image_folder", "root": str(make_imagenet(tmp_path)), "image_size": 32}), seed=0
    )
    backbone = Backbone(name="resnet18", split="conv2_x")
    recipe = Training(epochs=1, lr=0.01, batch_size=16)
    featurizer, decider = E.train_classifier(
        backbone, recipe, data.task_train, data.task_train.labels, len(data.task_train.classes), seed=0
    )
    spec = ReconstructorSection(
        width=8, blocks_per_upscale=1, training=Training(epochs=1, lr=0.001, batch_size=16)
    )
    E.train_reconstructor(spec, backbone, featurizer, data.public_train, seed=1)
    scores = E.evaluate(featurizer, decider, data.task_test)
    assert 0 <= scores["top1"] <= 100
    for split in (data.task_train, data.public_train, data.task_test):
        assert "images" not in split.__dict__  # functools.cached_property: never computed
