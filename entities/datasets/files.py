"""What the kinds that read a user's files share: decoding to square images, per-class caps, seeded splits.

Torch-free (Pillow and numpy): the kinds' checks run at validation, before torch loads.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field, ValidationInfo, field_validator

from entities.datasets.base import (
    ClassSplit,
    DatasetError,
    ImageSet,
    ImageSource,
    Published,
    SubsetSource,
    TaskData,
    split_classes,
)
from entities.strict import Strict

# torchvision's ImageFolder extensions: other files in a class folder are skipped, as it skips them
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# check() opens at most this many image headers (a seeded sample beyond); reading a batch names any other
# file that does not decode
CHECK_HEADERS = 20_000
# threads that decode a batch's files (VEIL_DECODE_THREADS): the node's CPU share is the useful bound
DECODE_THREADS = max(1, int(os.environ.get("VEIL_DECODE_THREADS", min(4, os.cpu_count() or 1))))


@functools.cache
def _decoders() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="veil-decode")


class Sampling(ClassSplit):
    """How many images of each class a run uses, and the test share where the data has no test split."""

    train_per_class: int | None = Field(None, ge=1, description="at most this many training images per class")
    test_per_class: int | None = Field(None, ge=1, description="at most this many test images per class")
    public_per_class: int | None = Field(
        None, ge=1, description="at most this many training images per public class (default train_per_class)"
    )
    test_share: float = Field(
        0.2, gt=0, lt=1, description="share of each class held out as test where the data has no test split"
    )


class Geometry(Strict):
    """How an image becomes a square of image_size pixels: centre crop, short side resized, centre crop."""

    image_size: int = Field(ge=8, le=1024, description="image side the nets see, in pixels")
    crop: int | None = Field(
        None, ge=8, description="first cut a centre square of this side (CelebA's faces: e.g. 178)"
    )
    resize: int | None = Field(
        None, ge=8, description="resize the short side to this before the centre crop (default image_size)"
    )

    @field_validator("resize")
    @classmethod
    def _not_below(cls, value: int | None, info: ValidationInfo) -> int | None:
        size = info.data.get("image_size")
        if value is not None and isinstance(size, int) and value < size:
            raise ValueError(f"got {value}; expected at least image_size ({size}) to crop image_size from")
        return value


def square(img: Image.Image, side: int, *, crop: int | None = None, resize: int | None = None) -> np.ndarray:
    """An image as uint8 (3, side, side): optional centre crop, short side resized, centre crop."""
    img = img.convert("RGB")
    if crop is not None:
        img = _centre(img, min(crop, img.width, img.height))
    short = resize or side
    w, h = img.size
    if min(w, h) != short:
        scale = short / min(w, h)
        size = (max(short, round(w * scale)), max(short, round(h * scale)))
        img = img.resize(size, Image.Resampling.BILINEAR)
    img = _centre(img, side)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _centre(img: Image.Image, side: int) -> Image.Image:
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side))


@dataclass(frozen=True, eq=False)
class FileSource:
    """Images in files, decoded when a batch is read; a file that does not decode is named."""

    paths: tuple[str, ...]
    side: int
    crop: int | None = None
    resize: int | None = None
    layout: str = "an image file"

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index), 3, self.side, self.side), dtype=np.uint8)

        def decode(i: int, j: int) -> None:
            path = self.paths[j]
            try:
                with Image.open(path) as img:
                    out[i] = square(img, self.side, crop=self.crop, resize=self.resize)
            except (OSError, UnidentifiedImageError, ValueError) as e:
                raise DatasetError(path, f"does not decode as an image ({e})", self.layout) from None

        jobs = list(enumerate(np.asarray(index).tolist()))
        if len(jobs) < 2 * DECODE_THREADS:
            for i, j in jobs:
                decode(i, j)
        else:  # Pillow decodes and resizes without the GIL: threads use the node's cores
            list(_decoders().map(lambda job: decode(*job), jobs))
        return out


@dataclass(frozen=True, eq=False)
class ResizedSource:
    """Images held in memory at another side (CIFAR's 32, MNIST's 28), resized when read."""

    array: np.ndarray  # uint8 (N, 3, s, s)
    side: int

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def read(self, index: np.ndarray) -> np.ndarray:
        images = self.array[index]
        if images.shape[-1] == self.side:
            return images
        out = np.empty((len(images), 3, self.side, self.side), dtype=np.uint8)
        for i, img in enumerate(images):
            out[i] = square(Image.fromarray(img.transpose(1, 2, 0)), self.side)
        return out


def check_headers(paths: Sequence[str], layout: str, seed: int = 0) -> None:
    """Open each file's header (a seeded sample of CHECK_HEADERS when there are more): a file that is not
    an image fails here, before any training, naming the file."""
    chosen: Sequence[str] = paths
    if len(paths) > CHECK_HEADERS:
        pick = np.random.default_rng(seed).choice(len(paths), CHECK_HEADERS, replace=False)
        chosen = [paths[i] for i in np.sort(pick)]
    for path in chosen:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 (the header is parsed on open; size proves it)
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetError(path, f"is not an image ({type(e).__name__})", layout) from None


def image_files(folder: Path) -> list[str]:
    """The image files directly in `folder`, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(
            e.path for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )


def cap_per_class(labels: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices keeping at most `cap` of each class (a seeded choice), in ascending order."""
    if cap is None:
        return np.arange(len(labels))
    keep = [
        rng.permutation(members)[:cap] for members in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def hold_out(labels: np.ndarray, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/test split of each class (at least one image on each side when a class has two)."""
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(members) - 1, max(1, round(share * len(members)))) if len(members) > 1 else 0
        test.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def assemble(
    source: ImageSource,
    labels: np.ndarray,
    names: Sequence[str],
    spec: Sampling,
    *,
    seed: int,
    where: Path | str,
    is_test: np.ndarray | None = None,
    identities: np.ndarray | None = None,
    digest: str,
) -> TaskData:
    """D_p and D_q out of one labelled collection: the class split, the held-out test images (where the
    data has no test split of its own, `is_test` None) and the per-class caps, all seeded."""
    task, public = split_classes(names, spec, seed, str(where))
    if is_test is None:
        is_test = np.zeros(len(labels), dtype=bool)
        is_test[hold_out(labels, spec.test_share, np.random.default_rng([seed, 1]))[1]] = True
    code = {name: i for i, name in enumerate(names)}

    def part(classes: list[str], test: bool, cap: int | None, stream: int, what: str) -> ImageSet:
        wanted = np.array([code[c] for c in classes])
        index = np.flatnonzero(np.isin(labels, wanted) & (is_test == test))
        index = index[cap_per_class(labels[index], cap, np.random.default_rng([seed, stream]))]
        remap = np.full(len(names), -1, dtype=np.int64)
        remap[wanted] = np.arange(len(wanted))
        ids = None if identities is None else identities[index]
        return ImageSet(SubsetSource(source, index), remap[labels[index]], tuple(classes), ids, what)

    return TaskData(
        task_train=part(task, False, spec.train_per_class, 2, "D_p train"),
        task_test=part(task, True, spec.test_per_class, 3, "D_p test"),
        public_train=part(public, False, spec.public_per_class or spec.train_per_class, 4, "D_q train"),
        public_test=part(public, True, spec.test_per_class, 5, "D_q test"),
        digest=digest,
    )


def published_split(spec: Sampling, *, name: str, classes: int, train: int, test: int) -> Published:
    """What `assemble` would make of a dataset of `classes` classes with `train` training and `test` test
    images as published, every class taken as the same size: the class split (as `split_classes` counts
    it) and the per-class caps. For a plan without the files (DatasetKind.published)."""
    t, p = spec.task_classes, spec.public_classes
    n_task = len(t) if isinstance(t, list) else t if isinstance(t, int) else classes // 2
    rest = max(0, classes - n_task)
    n_public = len(p) if isinstance(p, list) else min(p, rest) if isinstance(p, int) else rest

    def images(n_classes: int, per_class: float, cap: int | None) -> int:
        return round(n_classes * (per_class if cap is None else min(per_class, cap)))

    train_per, test_per = train / classes, test / classes
    splits = {
        "task_train": images(n_task, train_per, spec.train_per_class),
        "task_test": images(n_task, test_per, spec.test_per_class),
        "public_train": images(n_public, train_per, spec.public_per_class or spec.train_per_class),
        "public_test": images(n_public, test_per, spec.test_per_class),
    }
    return Published(name, train + test, classes, n_task, n_public, splits)
