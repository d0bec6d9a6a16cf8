"""`cifar10` and `cifar100`: the archives' Python version, read by Veil itself (torchvision's reader
refuses any copy whose md5 differs from the published archive's, such as a test's small fixture).

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/train, test, meta
Each file is a pickle written by Python 2 (bytes keys): b"data" uint8 N x 3072 (1024 red, 1024 green,
1024 blue, row-major 32x32) and the labels; the meta file holds the class names.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from entities.datasets.base import (
    DatasetError,
    DatasetKind,
    DatasetSection,
    Published,
    TaskData,
    files_digest,
)
from entities.datasets.files import Geometry, ResizedSource, Sampling, assemble, published_split
from entities.registry import DATASETS


class CifarDataset(DatasetSection, Geometry, Sampling):
    root: Path = Field(description="the folder that holds cifar-10-batches-py/ (or cifar-100-python/), or it")
    image_size: int = Field(32, ge=8, le=1024, description="image side the nets see (the archive's is 32)")

    def keys(self) -> tuple[bytes, bytes, int]:
        """(the batches' label key, the meta file's names key, how many classes): CIFAR-10's."""
        return b"labels", b"label_names", 10


class Cifar10Dataset(CifarDataset):
    kind: Literal["cifar10"]


class Cifar100Dataset(CifarDataset):
    kind: Literal["cifar100"]
    labels: Literal["fine", "coarse"] = Field("fine", description="the 100 fine classes or the 20 coarse")

    def keys(self) -> tuple[bytes, bytes, int]:
        if self.labels == "coarse":
            return b"coarse_labels", b"coarse_label_names", 20
        return b"fine_labels", b"fine_label_names", 100


def _unpickle(path: Path, keys: tuple[bytes, ...], layout: str) -> dict[bytes, Any]:
    if not path.is_file():
        raise DatasetError(path, "does not exist" if not path.exists() else "is not a file", layout)
    try:
        with open(path, "rb") as f:
            out = pickle.load(f, encoding="bytes")  # noqa: S301 (a local file the user named as data)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise DatasetError(path, f"is not a readable pickle ({type(e).__name__}: {e})", layout) from None
    missing = [k.decode() for k in keys if not isinstance(out, dict) or k not in out]
    if missing:
        raise DatasetError(path, f"lacks the key(s) {missing}", layout)
    return out  # type: ignore[no-any-return]


class _Cifar(DatasetKind[CifarDataset]):
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str

    @property
    def layout(self) -> str:
        files = ", ".join((*self.train_files, self.test_file, self.meta_file))
        return f"{self.folder}/ with {files} (the archive's Python pickles)"

    def _dir(self, spec: CifarDataset) -> Path:
        inner = spec.root / self.folder
        return inner if inner.is_dir() else spec.root

    def _read(self, spec: CifarDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[Path]]:
        folder = self._dir(spec)
        if not folder.is_dir():
            raise DatasetError(spec.root, "does not exist", self.layout)
        meta = _unpickle(folder / self.meta_file, (spec.keys()[1],), self.layout)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec.keys()[1]]]
        images, labels, tests = [], [], []
        files = [folder / f for f in (*self.train_files, self.test_file)]
        for path in files:
            batch = _unpickle(path, (b"data", spec.keys()[0]), self.layout)
            data = np.asarray(batch[b"data"])
            y = np.asarray(batch[spec.keys()[0]], dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(y) != len(data):
                raise DatasetError(
                    path,
                    f"holds data {data.dtype} {data.shape} and {len(y)} labels",
                    "uint8 N x 3072 and N labels",
                )
            if len(y) and (y.min() < 0 or y.max() >= len(names)):
                raise DatasetError(path, f"has labels outside 0..{len(names) - 1}", self.layout)
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(y)
            tests.append(np.full(len(y), path.name == self.test_file))
        return np.concatenate(images), np.concatenate(labels), np.concatenate(tests), names, files

    def check(self, spec: CifarDataset) -> None:
        self._read(spec)

    def published(self, spec: CifarDataset) -> Published | None:
        """The archive's sizes as published: 50,000 training and 10,000 test images, equal per class."""
        return published_split(spec, name=self.folder, classes=spec.keys()[2], train=50_000, test=10_000)

    def load(self, spec: CifarDataset, *, seed: int, side: int | None = None) -> TaskData:
        images, labels, tests, names, files = self._read(spec)
        return assemble(
            ResizedSource(images, side or spec.side),
            labels,
            names,
            spec,
            seed=seed,
            where=self._dir(spec),
            is_test=tests,
            digest=files_digest(spec.root, files, spec.model_dump_json() + f"{seed}:{side}"),
        )


@DATASETS.register("cifar10")
class Cifar10(_Cifar):
    section = Cifar10Dataset
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_file = "test_batch"
    meta_file = "batches.meta"


@DATASETS.register("cifar100")
class Cifar100(_Cifar):
    section = Cifar100Dataset
    folder = "cifar-100-python"
    train_files = ("train",)
    test_file = "test"
    meta_file = "meta"
