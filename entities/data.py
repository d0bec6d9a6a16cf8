"""The built-in dataset "photos" (patches of scikit-image's photographs) and how it is split among entities.

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
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import skimage.data
import skimage.io
import skimage.transform
import torch

from entities.registry import DATASETS

# Natural photographs in scikit-image's package folder, sorted by name.  Left out: the synthetic images
# (chessboard, color, horse, logo, phantom), the stacks (multipage, lfw_subset, the tiny gif), and
# motorcycle_right, the other half of a stereo pair with motorcycle_left: its patches are the same scenes,
# so as two classes they would be indistinguishable.
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


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Labelled uint8 images, kept as integers so that sets are small and exactly reproducible."""

    images: np.ndarray  # uint8, shape (N, 3, P, P)
    labels: np.ndarray  # int64, shape (N,), values 0..len(classes)-1
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        """Reject malformed sets at construction, where the mistake is made, not later in training."""
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, P, P), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 of shape ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {self.labels.shape}"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        """The number of images."""
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray) -> ImageSet:
        """The images at `index` (indices or a boolean mask), with the same class names."""
        return ImageSet(images=self.images[index], labels=self.labels[index], classes=self.classes)


@dataclass(frozen=True, eq=False)
class TaskData:
    """The private task D_p (train and shared test) and the public data D_q, whose classes are disjoint."""

    task_train: ImageSet  # D_p training patches
    task_test: ImageSet  # D_p test patches (the shared test set)
    public_train: ImageSet  # D_q (public, classes disjoint from D_p)
    public_test: ImageSet

    def __post_init__(self) -> None:
        """Check the two invariants the experiments rely on: same classes per pair, disjoint D_p and D_q."""
        if self.task_train.classes != self.task_test.classes:
            raise ValueError("task_train and task_test must have the same classes")
        if self.public_train.classes != self.public_test.classes:
            raise ValueError("public_train and public_test must have the same classes")
        shared = set(self.task_train.classes) & set(self.public_train.classes)
        if shared:
            raise ValueError(f"D_p and D_q share classes: {sorted(shared)}")


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
    return ImageSet(images=images, labels=labels, classes=tuple(names))


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
        task_train=_patches(task, train_per_class, "train", patch, seed, jitter_strength, layout),
        task_test=_patches(task, test_per_class, "test", patch, seed, jitter_strength, layout),
        public_train=_patches(
            public, public_per_class or train_per_class, "train", patch, seed, jitter_strength, layout
        ),
        public_test=_patches(public, test_per_class, "test", patch, seed, jitter_strength, layout),
    )


def load_dataset(spec: Any, *, seed: int, side: int | None = None) -> TaskData:
    """The dataset a scenario's `dataset` section names (by its `kind`), built with `seed`.

    side: the image side when a party needs another size than the section's (the data owner's images).
    """
    return DATASETS.get(spec.kind)(spec, seed=seed, side=side)  # type: ignore[no-any-return]


@DATASETS.register("photos")
def photos(spec: Any, *, seed: int, side: int | None = None) -> TaskData:
    """The built-in photos (a `PhotosDataset` section)."""
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


@DATASETS.register("image_folder")
def image_folder(spec: Any, *, seed: int, side: int | None = None) -> TaskData:
    """A local folder dataset (root/<split>/<class>/<image>): not written yet."""
    raise ValueError(
        f"dataset.kind 'image_folder' ({spec.root}): this version of Veil runs only the built-in 'photos' "
        "dataset; the local image-folder loader is not implemented yet"
    )


def _controlled_round(counts: np.ndarray, cols: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round the table counts[c] * cols[j] / n, each entry down or up, keeping both margins exact.

    Such a rounding always exists (the exact table is a fractional flow, and flows have integral optima);
    this finds one by augmenting paths, the entries that round up chosen in a seeded random order.
    """
    n = int(counts.sum())
    prod = counts[:, None].astype(np.int64) * cols[None, :].astype(np.int64)
    base, can_round_up = prod // n, prod % n > 0  # exact integer arithmetic: no float ties
    room = cols - base.sum(axis=0)  # how many entries of each column round up
    up = np.zeros(prod.shape, dtype=bool)
    load = np.zeros(len(cols), dtype=np.int64)  # how many entries of each column round up so far
    choices = [rng.permutation(np.flatnonzero(row)).tolist() for row in can_round_up]

    def place(c: int, seen: set[int]) -> bool:
        """Round one more entry of row c up, moving other rows along an augmenting path if need be."""
        for j in choices[c]:
            if up[c, j] or j in seen:
                continue
            seen.add(j)
            if load[j] < room[j]:
                up[c, j] = True
                load[j] += 1
                return True
            for other in np.flatnonzero(up[:, j]).tolist():  # column j is full: move one of its rows on
                if place(other, seen):
                    up[other, j], up[c, j] = False, True
                    return True
        return False

    for c in rng.permutation(len(counts)).tolist():
        for _ in range(int(counts[c] - base[c].sum())):
            if not place(c, set()):
                raise AssertionError("controlled rounding failed; the margins are inconsistent")
    return base + up


def partition(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Disjoint, class-stratified index sets, one of round(f*N) (at least 1) indices per fraction f.

    Stratified so that every entity sees every class in proportion: each class's count in a part is
    n_class * size / N rounded down or up, with the parts' sizes exact.  Where rounding up would make the
    parts ask for more than N, a few sizes are rounded down instead.  Within a class, a part's members
    are spread evenly over the class's indices, which for the photos run across the whole photo: with a
    few patches per class a random subset can hold one corner of a photo (on collab-10-1, rows 1-3
    spanned 8-12 points across partition seeds with random subsets, 2-5.5 spread).  Indices are sorted
    ascending.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if len(fractions) == 0:
        raise ValueError("fractions must not be empty")
    if any(not f > 0 for f in fractions):
        raise ValueError(f"every fraction must be > 0, got {list(fractions)}")
    if sum(fractions) > 1 + 1e-9:
        raise ValueError(f"fractions sum to {sum(fractions)} > 1")
    n = len(labels)
    exact = np.array([f * n for f in fractions])
    sizes = np.maximum(1, np.rint(exact)).astype(np.int64)
    # rounding up can ask for more than n when the fractions sum to about 1: round those nearest .5 down
    lowerable = np.flatnonzero((sizes > 1) & (sizes > exact))
    lowerable = lowerable[np.argsort(exact[lowerable] - sizes[lowerable], kind="stable")]
    sizes[lowerable[: max(0, int(sizes.sum()) - n)]] -= 1
    if sizes.sum() > n:
        raise ValueError(f"{len(sizes)} parts of at least 1 sample each, but only {n} samples")

    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    # the parts plus a last column for what no part takes, so that both margins of the table are exact
    alloc = _controlled_round(counts, np.append(sizes, n - sizes.sum()), rng)[:, :-1]

    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    for c, cls in enumerate(classes):
        members = np.flatnonzero(labels == cls)
        counts_c = np.append(alloc[c], len(members) - alloc[c].sum())  # the last "part" is what no one takes
        # each part's k members sit at evenly spaced ranks of the class (random phase): a part spans the
        # class's whole index order, which for the photos is where on the photo a patch was cut
        ranks = np.concatenate([(np.arange(k) + rng.random()) / k for k in counts_c.tolist() if k])
        owner = np.repeat(np.flatnonzero(counts_c), counts_c[counts_c > 0])[np.argsort(ranks, kind="stable")]
        for j in range(len(sizes)):
            parts[j].append(members[owner == j])
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 3, P, P) to float32 in [0, 1]: the one place images become tensors, so they scale once."""
    if images.dtype != np.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images.dtype}")
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
