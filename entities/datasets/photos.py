"""The built-in dataset `photos`: patches of scikit-image's photographs, class = source photo.

Why this data: it ships inside scikit-image, so every run works offline with nothing to download, and
patches of a few dozen photographs give a small, real-image classification task (class = source photo).

Region geometry, per photo: the photo is upscaled (bilinear, only when needed) so that its short side is at
least 4*patch and its long side at least 8*patch.  Along the long axis (width on ties) the first 75% is the
train region and the last 25% the test region; the train region gives up a gap of ceil(2*scale)+2 pixels
next to the border, so that no original pixel feeds both regions through the upscaling.  A patch is a square
crop of a random side in [patch, 2*patch] inside one region, resized to patch x patch (antialiased bilinear,
as PIL and torch do it, using only the crop's own pixels), and flipped left-right with probability 1/2.
So a test patch never shares a pixel with a train patch.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import skimage.data
import skimage.io
import skimage.transform
from pydantic import Field, field_validator

from entities.datasets.base import DatasetKind, DatasetSection, ImageSet, TaskData
from entities.registry import DATASETS

PHOTOS: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock_motion",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "ihc",
    "microaneurysms",
    "moon",
    "motorcycle_left",
    "page",
    "retina",
    "rocket",
    "text",
)

_FILES: dict[str, str] = {
    name: f"{name}.jpg" if name in ("hubble_deep_field", "retina", "rocket") else f"{name}.png"
    for name in PHOTOS
}
_DATA_DIR = os.path.dirname(skimage.data.__file__)
_TRAIN_SHARE = 0.75  # the share of the long axis that is the train region (before the gap)


class Box(NamedTuple):
    """A rectangle of pixels: rows top..top+height-1, columns left..left+width-1."""

    top: int
    left: int
    height: int
    width: int


class Photo(NamedTuple):
    """One photo ready for cropping: (H, W, 3) uint8 pixels and its disjoint train and test regions."""

    pixels: np.ndarray
    train: tuple[Box, ...]
    test: tuple[Box, ...]


@functools.cache
def _decode(name: str) -> np.ndarray:
    """The photo as (H, W, 3) uint8, read from scikit-image's package folder (never downloaded)."""
    img = skimage.io.imread(os.path.join(_DATA_DIR, _FILES[name]))
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)
    img.setflags(write=False)  # shared by every call through the cache
    return img


def split_regions(height: int, width: int, patch: int, gap: int) -> tuple[Box, Box]:
    """The train and test regions of a height x width photo: 75% / 25% of the long axis, `gap` apart."""
    vertical = height > width  # split along the long axis; width on ties
    long_side = height if vertical else width
    cut = math.floor(_TRAIN_SHARE * long_side)
    train_len, test_len = cut - gap, long_side - cut
    short_side = width if vertical else height
    if min(train_len, test_len, short_side) < 2 * patch:
        raise ValueError(f"a {height}x{width} photo is too small for patches of up to {2 * patch} pixels")
    if vertical:
        return Box(0, 0, train_len, width), Box(cut, 0, test_len, width)
    return Box(0, 0, height, train_len), Box(0, cut, height, test_len)


def tile_regions(height: int, width: int, patch: int, gap: int) -> tuple[tuple[Box, ...], tuple[Box, ...]]:
    """Train and test tiles spread over the whole photo: every fourth tile (on a diagonal pattern) is test.

    Tiles have room for the largest crop and are `gap` apart, so no pixel feeds both splits. Unlike two
    halves, both splits then see every part of the photo: test patches differ from train patches in
    pixels, not in which part of the scene they show, and more training data keeps helping.
    """
    side = 2 * patch + gap
    rows, cols = height // side, width // side
    if rows * cols < 4:
        raise ValueError(f"a {height}x{width} photo has room for only {rows * cols} tiles of {side} pixels")
    train: list[Box] = []
    test: list[Box] = []
    for r in range(rows):
        for c in range(cols):
            box = Box(r * side, c * side, side - gap, side - gap)
            along, across = (c, r) if cols >= rows else (r, c)  # step along the long axis
            (test if (along + 2 * across) % 4 == 1 else train).append(box)
    return tuple(train), tuple(test)


Layout = Literal["halves", "tiles"]


@functools.lru_cache(maxsize=64)
def _photo(name: str, patch: int, layout: Layout = "halves") -> Photo:
    """The photo upscaled as needed for `patch`, with its regions; cached because it is the slow part."""
    img = _decode(name)
    h, w = img.shape[:2]
    scale = max(1.0, 4 * patch / min(h, w), 8 * patch / max(h, w))
    gap = math.ceil(2 * scale) + 2  # bilinear upscaling spreads an original pixel over < 2*scale pixels
    if scale > 1.0:
        shape = (max(h, math.ceil(h * scale)), max(w, math.ceil(w * scale)))
        big = skimage.transform.resize(img, shape, order=1, anti_aliasing=False, preserve_range=True)
        img = np.ascontiguousarray(np.clip(np.rint(big), 0, 255).astype(np.uint8))
        img.setflags(write=False)
    if layout == "tiles":
        return Photo(img, *tile_regions(img.shape[0], img.shape[1], patch, gap))
    train, test = split_regions(img.shape[0], img.shape[1], patch, gap)
    return Photo(img, (train,), (test,))


def draw_crops(region: Box | Sequence[Box], count: int, patch: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random crops inside `region` (one box, or several boxes picked by area): int64 rows
    (top, left, side, flip), side in [patch, 2*patch]."""
    boxes = [region] if isinstance(region, Box) else list(region)
    side = rng.integers(patch, 2 * patch, size=count, endpoint=True)
    if len(boxes) == 1:
        (box,) = boxes
        tops, lefts = np.full(count, box.top), np.full(count, box.left)
        heights, widths = np.full(count, box.height), np.full(count, box.width)
    else:
        # systematic sampling: each box gets its share of the crops by area, in box order, so a photo's
        # patches cover all of it and the partition can spread each entity over the whole photo
        area = np.cumsum([b.height * b.width for b in boxes], dtype=np.float64)
        pick = np.searchsorted(area / area[-1], (np.arange(count) + rng.random()) / count, side="right")
        tops, lefts, heights, widths = (np.array([getattr(boxes[i], f) for i in pick]) for f in Box._fields)
    top = tops + (rng.random(count) * (heights - side + 1)).astype(np.int64)
    left = lefts + (rng.random(count) * (widths - side + 1)).astype(np.int64)
    flip = rng.integers(0, 2, size=count)
    return np.stack([top, left, side, flip], axis=1).astype(np.int64)


@functools.lru_cache(maxsize=256)
def _resize_weights(side: int, patch: int) -> np.ndarray:
    """(patch, side) float32 rows of antialiased bilinear (triangle) weights, as PIL and torch use them.

    Each row is normalised over the `side` input pixels only, so a resized crop uses no pixel outside it.
    """
    scale = side / patch
    support = max(scale, 1.0)  # the triangle widens when shrinking: that is the antialiasing
    centres = (np.arange(patch) + 0.5) * scale
    w = np.clip(1.0 - np.abs(np.arange(side) + 0.5 - centres[:, None]) / support, 0.0, None)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _render(pixels: list[np.ndarray], crops: np.ndarray, owner: np.ndarray, patch: int) -> np.ndarray:
    """Cut the crops (row i from pixels[owner[i]]) and resize them to patch x patch, as uint8 (N, 3, P, P).

    The resize is two matrix products per crop size, in numpy: much faster than torch's elementwise
    kernels when other processes keep the cores busy (torch's thread pool then stalls).
    """
    out = np.empty((len(crops), 3, patch, patch), dtype=np.uint8)
    for side in np.unique(crops[:, 2]).tolist():
        rows = np.flatnonzero(crops[:, 2] == side)
        where = zip(owner[rows].tolist(), crops[rows, 0].tolist(), crops[rows, 1].tolist(), strict=True)
        stack = np.stack([pixels[o][t : t + side, s : s + side] for o, t, s in where])  # (n, side, side, 3)
        if side == patch:
            out[rows] = stack.transpose(0, 3, 1, 2)
            continue
        w = _resize_weights(side, patch)
        tall = np.matmul(w, stack.astype(np.float32).reshape(len(rows), side, side * 3))  # resize the rows
        small = np.matmul(tall.reshape(len(rows), patch, side, 3).transpose(0, 3, 1, 2), w.T)  # then columns
        out[rows] = np.clip(np.rint(small), 0, 255).astype(np.uint8)
    flip = crops[:, 3].astype(bool)
    out[flip] = out[flip][..., ::-1]
    return out


def _patches(
    names: Sequence[str],
    per_class: int,
    split: Literal["train", "test"],
    patch: int,
    seed: int,
    jitter_strength: float = 0.0,
    layout: Layout = "halves",
) -> ImageSet:
    """`per_class` patches from the `split` region of each named photo; label = position in `names`."""
    photos = [_photo(n, patch, layout) for n in names]
    # one stream per (seed, photo, split): a photo's patches do not depend on which other photos are drawn
    rngs = [np.random.default_rng([seed, PHOTOS.index(n), int(split == "test")]) for n in names]
    crops = np.concatenate(
        [np.empty((0, 4), dtype=np.int64)]
        + [draw_crops(getattr(p, split), per_class, patch, r) for p, r in zip(photos, rngs, strict=True)]
    )
    labels = np.repeat(np.arange(len(names), dtype=np.int64), per_class)
    images = _render([p.pixels for p in photos], crops, labels, patch)
    if jitter_strength:
        # its own stream, so the crops do not change with the jitter
        images = jitter(images, jitter_strength, np.random.default_rng([seed, int(split == "test"), 7]))
    return ImageSet.of_array(images, labels, names)


def jitter(images: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Per-patch acquisition changes: contrast, brightness and colour balance.

    Without it a photo's overall tone names its class from a single patch; with it a classifier
    has to learn texture, and more training data helps, as it does for real images. The
    contrast varies by +-strength, brightness by +-strength/2, each channel's gain by
    +-strength/3 (images in [0, 1]). No pixel noise: a reconstructor could not recover it, and
    it would cap the SSIM of even a perfect inversion of the featurizer.
    """
    if strength == 0:
        return images
    x = images.astype(np.float32) / 255
    n = len(x)
    contrast = rng.uniform(1 - strength, 1 + strength, (n, 1, 1, 1))
    brightness = rng.uniform(-strength / 2, strength / 2, (n, 1, 1, 1))
    gain = rng.uniform(1 - strength / 3, 1 + strength / 3, (n, 3, 1, 1))
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = ((x - mean) * contrast + mean + brightness) * gain
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def build_photos(
    *,
    patch: int,
    task_classes: int,
    public_classes: int,
    train_per_class: int,
    test_per_class: int,
    seed: int,
    jitter_strength: float = 0.0,
    public_per_class: int | None = None,
    layout: Layout = "halves",
) -> TaskData:
    """D_p and D_q from scikit-image's photos: class = photo, train and test from disjoint regions.

    Which photos are D_p and which D_q is a seeded permutation of PHOTOS; each set's classes are then
    sorted by name.  Patches are grouped by class (shuffle when batching).  Same arguments, same bytes.
    """
    for field, value, least in (
        ("patch", patch, 4),
        ("task_classes", task_classes, 1),
        ("public_classes", public_classes, 0),
        ("train_per_class", train_per_class, 1),
        ("test_per_class", test_per_class, 1),
    ):
        if value < least:
            raise ValueError(f"dataset.{field} must be at least {least}, got {value}")
    wanted = task_classes + public_classes
    if wanted > len(PHOTOS):
        raise ValueError(
            f"dataset.task_classes + dataset.public_classes = {wanted} "
            f"but only {len(PHOTOS)} photos ship with scikit-image"
        )
    order = np.random.default_rng(seed).permutation(len(PHOTOS))
    task = sorted(PHOTOS[i] for i in order[:task_classes])
    public = sorted(PHOTOS[i] for i in order[task_classes:wanted])
    return TaskData(
        digest=f"photos:{patch}:{task_classes}:{public_classes}:{train_per_class}:{test_per_class}:"
        f"{public_per_class}:{layout}:{jitter_strength}:{seed}",
        task_train=_patches(task, train_per_class, "train", patch, seed, jitter_strength, layout),
        task_test=_patches(task, test_per_class, "test", patch, seed, jitter_strength, layout),
        public_train=_patches(
            public, public_per_class or train_per_class, "train", patch, seed, jitter_strength, layout
        ),
        public_test=_patches(public, test_per_class, "test", patch, seed, jitter_strength, layout),
    )


class PhotosDataset(DatasetSection):
    """Patches of the photographs scikit-image ships; class = source photo.

    Task classes (D_p) and public classes (D_q) are disjoint photos; train and test patches
    come from disjoint regions of each photo.
    """

    side_field: ClassVar[str] = "patch"
    kind: Literal["photos"] = "photos"
    patch: int = Field(32, ge=16, le=128, description="patch side in pixels")
    task_classes: int = Field(12, description="photos that form the task set D_p")
    public_classes: int = Field(6, ge=1, description="other photos that form the public set D_q")
    train_per_class: int = Field(400, ge=1)
    test_per_class: int = Field(100, ge=1)
    public_per_class: int | None = Field(
        None, ge=1, description="training patches per public class (D_q); default train_per_class"
    )
    layout: Literal["halves", "tiles"] = Field(
        "halves", description="train/test regions of each photo: two halves, or interleaved tiles"
    )
    jitter: float = Field(
        0.0, ge=0, le=1, description="per-patch contrast/brightness/colour changes (see jitter)"
    )

    def sizes(self) -> dict[str, int]:
        public = self.public_per_class or self.train_per_class
        return {
            "task_train": self.task_classes * self.train_per_class,
            "task_test": self.task_classes * self.test_per_class,
            "public_train": self.public_classes * public,
            "public_test": self.public_classes * self.test_per_class,
        }

    @field_validator("task_classes")
    @classmethod
    def _top5_needs_five(cls, value: int) -> int:
        if value < 5:
            raise ValueError(f"got {value}; expected at least 5 (top-5 accuracy is reported)")
        return value

    def problems(self) -> list[tuple[str, str]]:
        wanted = self.task_classes + self.public_classes
        if wanted > len(PHOTOS):
            return [
                (
                    "public_classes",
                    f"task_classes + public_classes = {wanted}, but {len(PHOTOS)} photos ship with "
                    "scikit-image; expected at most that many classes in all",
                )
            ]
        return []


@DATASETS.register("photos")
class Photos(DatasetKind[PhotosDataset]):
    """The built-in photos: inside scikit-image's wheel, so there are no files of the user's to check."""

    section = PhotosDataset

    def load(self, spec: PhotosDataset, *, seed: int, side: int | None = None) -> TaskData:
        return build_photos(
            patch=side or spec.patch,
            task_classes=spec.task_classes,
            public_classes=spec.public_classes,
            train_per_class=spec.train_per_class,
            test_per_class=spec.test_per_class,
            seed=seed,
            jitter_strength=spec.jitter,
            public_per_class=spec.public_per_class,
            layout=spec.layout,
        )
