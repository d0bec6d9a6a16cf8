"""The contract every dataset kind meets: its scenario section, its classes and splits, images by index.

A kind is one module under entities/datasets/ with a section (a `DatasetSection`: its fields and checks)
and a `DatasetKind` registered under the section's `kind`:

    class Cifar10Section(DatasetSection):
        kind: Literal["cifar10"]
        ...

    @DATASETS.register("cifar10")
    class Cifar10(DatasetKind[Cifar10Section]):
        section = Cifar10Section
        def check(self, spec): ...  # the files are where they should be, or a DatasetError
        def load(self, spec, *, seed, side): ...  # the TaskData

Everything here is torch-free: the schema builds its `dataset:` union from the registered sections.
Images stay on disk (or wherever the kind keeps them) until a batch is read: `ImageSet.read(index)`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Generic, Protocol, TypeVar

import numpy as np
from pydantic import Field, field_validator

from entities.registry import DATASETS
from entities.strict import Strict

# A whole split is held in memory only below this (bytes of uint8 pixels); above it, code must read
# batches. VEIL_IMAGES_GIB raises it for a machine with the memory.
IMAGES_BUDGET_GIB = 4.0


class DatasetError(ValueError):
    """The files of a dataset are missing or not in the layout its kind reads: names the path and the
    layout expected."""

    def __init__(self, path: Path | str, problem: str, expected: str):
        self.path, self.problem, self.expected = str(path), problem, expected
        super().__init__(f"{path}: {problem}; expected {expected}")


class ImageSource(Protocol):
    """Where a split's pixels come from: uint8 (n, 3, side, side) images read by index."""

    @property
    def side(self) -> int: ...

    def __len__(self) -> int: ...

    def read(self, index: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class ArraySource:
    """Images already in memory (the built-in photos, CIFAR's arrays)."""

    array: np.ndarray  # uint8 (N, 3, P, P)

    def __post_init__(self) -> None:
        a = self.array
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1] != 3 or a.shape[2] != a.shape[3]:
            raise ValueError(f"images must be uint8 (N, 3, P, P), got {a.dtype} {a.shape}")

    @property
    def side(self) -> int:
        return int(self.array.shape[2])

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def read(self, index: np.ndarray) -> np.ndarray:
        return self.array[index]


@dataclass(frozen=True, eq=False)
class SubsetSource:
    """Some images of another source, by index: a partition, a class, a split, with no copy of pixels."""

    base: ImageSource
    index: np.ndarray

    @property
    def side(self) -> int:
        return self.base.side

    def __len__(self) -> int:
        return len(self.index)

    def read(self, index: np.ndarray) -> np.ndarray:
        return self.base.read(self.index[index])


def images_budget() -> int:
    """Bytes of pixels one split may hold in memory at once."""
    return int(float(os.environ.get("VEIL_IMAGES_GIB", IMAGES_BUDGET_GIB)) * 2**30)


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Labelled images: labels (and identities, where the data has them) in memory, pixels read by index."""

    source: ImageSource
    labels: np.ndarray  # int64 (N,), values 0..len(classes)-1
    classes: tuple[str, ...]
    identities: np.ndarray | None = None  # int64 (N,): the person in each image (faces), else None
    name: str = field(default="images", compare=False)  # what error messages call this set

    def __post_init__(self) -> None:
        """Reject malformed sets at construction, where the mistake is made, not later in training."""
        n = len(self.source)
        if self.labels.dtype != np.int64 or self.labels.shape != (n,):
            raise ValueError(
                f"labels must be int64 of shape ({n},), got {self.labels.dtype} {self.labels.shape}"
            )
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in 0..{len(self.classes) - 1}")
        if self.identities is not None and self.identities.shape != (n,):
            raise ValueError(f"identities must have shape ({n},), got {self.identities.shape}")

    @classmethod
    def of_array(cls, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> ImageSet:
        """A set of images held in memory."""
        return cls(ArraySource(images), labels, tuple(classes))

    def __len__(self) -> int:
        return len(self.source)

    @property
    def side(self) -> int:
        return self.source.side

    @property
    def nbytes(self) -> int:
        return len(self) * 3 * self.side**2

    def read(self, index: np.ndarray | Sequence[int]) -> np.ndarray:
        """uint8 (len(index), 3, side, side): the images at `index`, decoded now."""
        return self.source.read(np.asarray(index, dtype=np.int64))

    @functools.cached_property
    def images(self) -> np.ndarray:
        """The whole set in memory, for sets that fit the budget (the photos, a partition of CIFAR)."""
        if self.nbytes > images_budget():
            raise MemoryError(
                f"{self.name}: {len(self)} images of {self.side}x{self.side} take "
                f"{self.nbytes / 2**30:.1f} GiB, more than the {images_budget() / 2**30:g} GiB one split may "
                "hold in memory (VEIL_IMAGES_GIB); this step must read it in batches"
            )
        if isinstance(self.source, ArraySource):
            return self.source.array
        return self.read(np.arange(len(self)))

    def subset(self, index: np.ndarray) -> ImageSet:
        """The images at `index` (indices or a boolean mask), with the same classes; no pixels copied."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64)
        return ImageSet(
            SubsetSource(self.source, index),
            self.labels[index],
            self.classes,
            None if self.identities is None else self.identities[index],
            self.name,
        )


@dataclass(frozen=True, eq=False)
class TaskData:
    """The private task D_p (train and shared test) and the public data D_q.

    D_q is disjoint from D_p: in classes when the task is split by class, in people when the task is an
    attribute of faces (`disjoint` says which)."""

    task_train: ImageSet  # D_p training images
    task_test: ImageSet  # D_p test images (the shared test set)
    public_train: ImageSet  # D_q
    public_test: ImageSet
    digest: str = ""  # names exactly which images these are (the kind's files and the section)
    disjoint: str = "classes"

    def __post_init__(self) -> None:
        """Check the invariants the experiments rely on: same classes per pair, D_p and D_q disjoint."""
        if self.task_train.classes != self.task_test.classes:
            raise ValueError("task_train and task_test must have the same classes")
        if self.public_train.classes != self.public_test.classes:
            raise ValueError("public_train and public_test must have the same classes")
        if self.disjoint == "classes":
            shared = set(self.task_train.classes) & set(self.public_train.classes)
            if shared:
                raise ValueError(f"D_p and D_q share classes: {sorted(shared)[:5]}")
        elif self.disjoint == "identities":
            task, public = self.task_train.identities, self.public_train.identities
            if task is None or public is None or set(task.tolist()) & set(public.tolist()):
                raise ValueError("D_p and D_q must hold different people")
        else:
            raise ValueError(f"disjoint must be 'classes' or 'identities', got {self.disjoint!r}")

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in (self.task_train, self.task_test, self.public_train, self.public_test))


class DatasetSection(Strict):
    """What every kind's `dataset:` section has; a kind adds its own fields and checks."""

    side_field: ClassVar[str] = "image_size"  # the field that sets `side`, for error messages

    kind: str
    seed: int | None = Field(
        None, description="chooses the task: which classes, which images, the partitions (default: run seed)"
    )

    @property
    def side(self) -> int:
        """The image side in pixels the nets see."""
        return int(getattr(self, self.side_field))

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for what the types allow but the data cannot give (checked at validation)."""
        return []

    def sizes(self) -> dict[str, int] | None:
        """Images per split (task_train, task_test, public_train, public_test) when the section alone
        says (the built-in photos), else None: then only the files say, and the run checks them."""
        return None


class ClassSplit(Strict):
    """Which classes are the task set D_p and which the public set D_q (the paper: two halves)."""

    task_classes: int | list[str] | None = Field(
        None,
        description="D_p's classes: a count (in a seeded order), the class names, or none for half of them",
    )
    public_classes: int | list[str] | None = Field(
        None, description="D_q's classes: a count of the others, their names, or none for all the others"
    )

    @field_validator("task_classes", "public_classes")
    @classmethod
    def _enough(cls, value: int | list[str] | None) -> int | list[str] | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"got {value}; expected at least 1 class")
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("a class is named twice")
        return value


def split_classes(
    names: Sequence[str], split: ClassSplit, seed: int, where: str
) -> tuple[list[str], list[str]]:
    """D_p's and D_q's class names out of `names`, as `split` says; each sorted by name.

    Counts and the default halves take the classes in a seeded random order, so a seed picks the task.
    """
    names = list(names)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    known = set(names)
    for field_name in ("task_classes", "public_classes"):
        value = getattr(split, field_name)
        if isinstance(value, list):
            unknown = [c for c in value if c not in known]
            if unknown:
                raise DatasetError(
                    where,
                    f"dataset.{field_name} names {unknown[:3]} not found",
                    f"classes among {names[:5]}...",
                )
    t = split.task_classes
    task = list(t) if isinstance(t, list) else order[: t if isinstance(t, int) else len(names) // 2]
    rest = [c for c in order if c not in set(task)]
    p = split.public_classes
    if isinstance(p, list):
        public = list(p)
        clash = sorted(set(public) & set(task))
        if clash:
            raise DatasetError(
                where, f"dataset.public_classes shares {clash[:3]} with the task classes", "disjoint"
            )
    else:
        public = rest[:p] if isinstance(p, int) else rest
    if len(task) < 1 or len(public) < 1 or len(task) + len(public) > len(names):
        raise DatasetError(
            where,
            f"{len(names)} classes cannot give {len(task)} task and {len(public)} public classes",
            "at least one of each, and no more than the data holds",
        )
    return sorted(task), sorted(public)


def files_digest(root: Path, files: Sequence[Path | str], extra: str) -> str:
    """A digest of which files (names, sizes, times) and which settings: cheap, and changes with either."""
    h = hashlib.sha256(extra.encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Published:
    """A dataset's sizes as its authors published them, for planning a run (`veil run --dry-run`) on a
    machine that does not hold the files. Never used to train: a run reads the files or refuses.

    `splits`: the images per split (task_train, task_test, public_train, public_test) the section would
    give, estimated from the published counts with every class taken as the same size."""

    name: str  # what the numbers are of, e.g. "ImageNet-1k (ILSVRC 2012)"
    images: int  # in the whole dataset as published
    classes: int  # in the whole dataset (people, for a face dataset's identity task)
    task_classes: int  # D_p's, under the section's class split
    public_classes: int  # D_q's
    splits: dict[str, int]


S = TypeVar("S", bound=DatasetSection)


class DatasetKind(ABC, Generic[S]):
    """One kind of dataset: its scenario section, a check of its files, and how it loads."""

    section: ClassVar[type[DatasetSection]]

    def check(self, spec: S) -> None:
        """Raise a DatasetError when the files are not there or not in this kind's layout. Called before
        any training (and by `veil validate`), so it only lists and opens what it must, not every image."""

    def published(self, spec: S) -> Published | None:
        """The dataset's published sizes under this section, when this kind knows them (a public dataset
        such as ImageNet or CelebA), else None. Only for a plan on a machine without the files."""
        return None

    @abstractmethod
    def load(self, spec: S, *, seed: int, side: int | None = None) -> TaskData:
        """D_p and D_q; `side`: the image side when a party needs another than the section's (the data
        owner's images)."""


def kind_of(spec: DatasetSection) -> DatasetKind[DatasetSection]:
    """The registered kind that reads a section."""
    return DATASETS.get(spec.kind)()


def load_dataset(spec: DatasetSection, *, seed: int, side: int | None = None) -> TaskData:
    """The dataset a scenario's `dataset` section names (by its `kind`), built with `seed`."""
    return kind_of(spec).load(spec, seed=seed, side=side)
