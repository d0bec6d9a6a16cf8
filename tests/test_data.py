"""The built-in "photos" dataset and the entity partitions: shapes, determinism, no leaks, strata."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import skimage.data
import torch

from entities.data import partition, to_float
from entities.datasets import ImageSet, TaskData, photos
from entities.datasets.photos import PHOTOS, Box, build_photos, draw_crops

SMALL = {"patch": 16, "task_classes": 6, "public_classes": 5, "train_per_class": 40, "test_per_class": 12}


@pytest.fixture(scope="module")
def small() -> TaskData:
    return build_photos(**SMALL, seed=3)


def _sets(td: TaskData) -> dict[str, ImageSet]:
    return {
        "task_train": td.task_train,
        "task_test": td.task_test,
        "public_train": td.public_train,
        "public_test": td.public_test,
    }


# ---------------------------------------------------------------- the photos


def test_photos_are_sorted_natural_and_load_offline() -> None:
    assert len(PHOTOS) >= 18
    assert list(PHOTOS) == sorted(set(PHOTOS))
    for synthetic in ("chessboard_RGB", "chessboard_GRAY", "logo", "phantom", "horse", "color"):
        assert synthetic not in PHOTOS
    folder = os.path.dirname(skimage.data.__file__)
    for name in PHOTOS:
        img = photos._decode(name)
        assert os.path.exists(os.path.join(folder, photos._FILES[name]))
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert min(img.shape[:2]) >= 100


# ---------------------------------------------------------------- build_photos


def test_shapes_dtypes_and_labels(small: TaskData) -> None:
    per_class = {"task_train": 40, "task_test": 12, "public_train": 40, "public_test": 12}
    n_classes = {"task_train": 6, "task_test": 6, "public_train": 5, "public_test": 5}
    for key, s in _sets(small).items():
        k, m = n_classes[key], per_class[key]
        assert s.images.shape == (k * m, 3, 16, 16) and s.images.dtype == np.uint8
        assert s.labels.shape == (k * m,) and s.labels.dtype == np.int64
        assert len(s) == k * m and len(s.classes) == k
        assert np.array_equal(np.bincount(s.labels, minlength=k), np.full(k, m))
        assert s.images.std() > 5  # real picture content, not blank
    assert small.task_train.classes == small.task_test.classes
    assert small.public_train.classes == small.public_test.classes
    assert list(small.task_train.classes) == sorted(small.task_train.classes)


def test_same_seed_gives_identical_bytes(small: TaskData) -> None:
    again = build_photos(**SMALL, seed=3)
    for key, s in _sets(small).items():
        t = _sets(again)[key]
        assert s.classes == t.classes
        assert s.images.tobytes() == t.images.tobytes()
        assert s.labels.tobytes() == t.labels.tobytes()


def test_different_seed_gives_different_data(small: TaskData) -> None:
    other = build_photos(**SMALL, seed=4)
    assert small.task_train.classes != other.task_train.classes or not np.array_equal(
        small.task_train.images, other.task_train.images
    )
    # with every photo in D_p the classes coincide, so the patches themselves must differ
    a = build_photos(
        patch=8, task_classes=len(PHOTOS), public_classes=0, train_per_class=5, test_per_class=2, seed=0
    )
    b = build_photos(
        patch=8, task_classes=len(PHOTOS), public_classes=0, train_per_class=5, test_per_class=2, seed=1
    )
    assert a.task_train.classes == b.task_train.classes == PHOTOS
    assert not np.array_equal(a.task_train.images, b.task_train.images)
    assert not np.array_equal(a.task_test.images, b.task_test.images)


def test_task_and_public_classes_disjoint_and_seeded() -> None:
    splits = set()
    for seed in range(12):
        td = build_photos(
            patch=8, task_classes=9, public_classes=9, train_per_class=1, test_per_class=1, seed=seed
        )
        task, public = set(td.task_train.classes), set(td.public_train.classes)
        assert len(task) == 9 and len(public) == 9
        assert not task & public
        assert task | public <= set(PHOTOS)
        splits.add(tuple(sorted(task)))
    assert len(splits) > 1  # the split is drawn from the seed, not fixed


def test_too_many_classes_names_the_fields() -> None:
    n = len(PHOTOS)
    msg = (
        f"dataset.task_classes + dataset.public_classes = {n + 1} but only {n} photos ship with scikit-image"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        build_photos(
            patch=8, task_classes=n - 3, public_classes=4, train_per_class=1, test_per_class=1, seed=0
        )


@pytest.mark.parametrize(
    "field",
    ["patch", "task_classes", "train_per_class", "test_per_class"],
)
def test_bad_sizes_rejected(field: str) -> None:
    args = {"patch": 8, "task_classes": 2, "public_classes": 2, "train_per_class": 1, "test_per_class": 1}
    args[field] = 0
    with pytest.raises(ValueError, match=f"dataset.{field}"):
        build_photos(**args, seed=0)


# ---------------------------------------------------------------- train/test disjointness


@pytest.mark.parametrize("patch", [8, 16, 32, 48])
def test_regions_disjoint_with_gap_and_room_for_the_largest_crop(patch: int) -> None:
    for name in PHOTOS:
        photo = photos._photo(name, patch)
        h, w = photo.pixels.shape[:2]
        (tr,), (te,) = photo.train, photo.test
        for box in (tr, te):
            assert box.top >= 0 and box.left >= 0 and box.top + box.height <= h and box.left + box.width <= w
            assert min(box.height, box.width) >= 2 * patch
        if tr.width == w:  # split along the rows
            assert tr.height + 3 <= te.top
        else:
            assert tr.left == 0 and tr.width + 3 <= te.left
        assert 0.2 <= (te.height * te.width) / (h * w) <= 0.3


def test_draw_crops_stay_inside_their_region() -> None:
    region = Box(top=7, left=50, height=40, width=33)
    crops = draw_crops(region, 3000, 16, np.random.default_rng(0))
    top, left, side, flip = crops.T
    assert crops.dtype == np.int64
    assert side.min() == 16 and side.max() == 32
    assert (top >= 7).all() and (top + side <= 47).all()
    assert (left >= 50).all() and (left + side <= 83).all()
    assert set(flip.tolist()) == {0, 1}
    assert np.array_equal(crops, draw_crops(region, 3000, 16, np.random.default_rng(0)))


def test_draw_crops_share_several_boxes_by_area_in_box_order() -> None:
    boxes = [Box(0, 0, 20, 20), Box(0, 30, 20, 40), Box(30, 0, 20, 20)]  # areas 1 : 2 : 1
    crops = draw_crops(boxes, 101, 8, np.random.default_rng(3))
    box_of = np.array([0 if left < 30 and top < 30 else 1 if left >= 30 else 2 for top, left, *_ in crops])
    assert np.array_equal(box_of, np.sort(box_of))  # in box order: a part of the index order is a region
    assert abs(np.bincount(box_of, minlength=3) - np.array([25.25, 50.5, 25.25])).max() < 1


def test_no_pixel_of_a_test_patch_comes_from_outside_the_test_region(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paint each photo 0 in its train region, 255 in its test region, 128 elsewhere: any leak shows."""
    real = photos._photo

    def painted(name: str, patch: int, layout: photos.Layout = "halves") -> photos.Photo:
        photo = real(name, patch, layout)
        pixels = np.full_like(photo.pixels, 128)
        for boxes, value in ((photo.train, 0), (photo.test, 255)):
            for box in boxes:
                pixels[box.top : box.top + box.height, box.left : box.left + box.width] = value
        return photos.Photo(pixels, photo.train, photo.test)

    monkeypatch.setattr(photos, "_photo", painted)
    n = len(PHOTOS)
    for layout in ("halves", "tiles"):
        td = build_photos(
            patch=16,
            task_classes=n // 2,
            public_classes=n - n // 2,
            train_per_class=60,
            test_per_class=30,
            seed=5,
            layout=layout,
        )
        assert (td.task_train.images == 0).all() and (td.public_train.images == 0).all()
        assert (td.task_test.images == 255).all() and (td.public_test.images == 255).all()


@pytest.mark.parametrize("patch", [16, 32])
def test_tiles_are_disjoint_with_a_gap_and_spread_over_the_photo(patch: int) -> None:
    for name in PHOTOS:
        photo = photos._photo(name, patch, "tiles")
        h, w = photo.pixels.shape[:2]
        boxes = photo.train + photo.test
        assert 0.15 <= len(photo.test) / len(boxes) <= 0.35
        for box in boxes:
            assert box.top + box.height <= h and box.left + box.width <= w
            assert min(box.height, box.width) >= 2 * patch
        for i, a in enumerate(boxes):  # no two tiles touch: each pair is at least 3 pixels apart
            for b in boxes[i + 1 :]:
                apart_v = max(a.top, b.top) - min(a.top + a.height, b.top + b.height)
                apart_h = max(a.left, b.left) - min(a.left + a.width, b.left + b.width)
                assert max(apart_v, apart_h) >= 3
        spread = len({b.top for b in photo.test}) + len({b.left for b in photo.test})
        assert spread >= 3  # test tiles are spread over more than one row or column


def test_no_real_test_patch_equals_a_train_patch(small: TaskData) -> None:
    for train, test in ((small.task_train, small.task_test), (small.public_train, small.public_test)):
        seen = {im.tobytes() for im in train.images} | {im[..., ::-1].tobytes() for im in train.images}
        textured = [im for im in test.images if np.ptp(im) > 8]  # flat patches (black sky) may repeat
        assert len(textured) > len(test) // 2
        assert not any(im.tobytes() in seen for im in textured)


# ---------------------------------------------------------------- ImageSet, TaskData, to_float


def test_subset_and_validation(small: TaskData) -> None:
    s = small.task_train
    idx = np.array([0, 5, 45])
    sub = s.subset(idx)
    assert len(sub) == 3 and sub.classes == s.classes
    assert np.array_equal(sub.images, s.images[idx]) and np.array_equal(sub.labels, s.labels[idx])
    assert len(s.subset(s.labels == 1)) == 40
    with pytest.raises(ValueError):
        ImageSet.of_array(s.images.astype(np.float32), s.labels, s.classes)
    with pytest.raises(ValueError):
        ImageSet.of_array(s.images, s.labels.astype(np.int32), s.classes)
    with pytest.raises(ValueError):
        ImageSet.of_array(s.images, s.labels, s.classes[:2])
    with pytest.raises(ValueError, match="share classes"):
        TaskData(small.task_train, small.task_test, small.task_train, small.task_test)


def test_to_float(small: TaskData) -> None:
    x = to_float(small.task_test.images)
    assert x.dtype == torch.float32 and tuple(x.shape) == small.task_test.images.shape
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(small.task_test.images))
    with pytest.raises(TypeError):
        to_float(x.numpy())


def test_build_at_full_size() -> None:
    """How long this takes is printed by bench/data_build.py, not asserted here."""
    args = {
        "patch": 32,
        "task_classes": 10,
        "public_classes": 8,
        "train_per_class": 400,
        "test_per_class": 100,
    }
    td = build_photos(**args, seed=1)
    assert len(td.task_train) == 4000 and len(td.public_test) == 800
    assert td.task_train.images.shape == (4000, 3, 32, 32)


# ---------------------------------------------------------------- partition


def _labels(n_per_class: list[int], seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(len(n_per_class)), n_per_class)
    return np.random.default_rng(seed).permutation(labels).astype(np.int64)


def _check_stratified(labels: np.ndarray, parts: list[np.ndarray]) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    for p in parts:
        got = np.array([(labels[p] == c).sum() for c in classes])
        ideal = counts * len(p) / len(labels)
        assert (np.floor(ideal) <= got).all() and (got <= np.ceil(ideal)).all()


def test_partition_sizes_disjoint_sorted_stratified() -> None:
    labels = _labels([37] * 10)
    fractions = [0.1] * 5 + [0.3]
    parts = partition(labels, fractions, seed=0)
    assert [len(p) for p in parts] == [round(f * 370) for f in fractions]
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == len(everything)
    assert everything.min() >= 0 and everything.max() < 370
    for p in parts:
        assert p.dtype == np.int64 and np.array_equal(p, np.sort(p))
    for p in parts[:5]:  # every class appears in each 10% part
        assert set(labels[p].tolist()) == set(range(10))
    _check_stratified(labels, parts)


def test_partition_deterministic_and_seeded() -> None:
    labels = _labels([50, 30, 20])
    a = partition(labels, [0.2, 0.2, 0.5], seed=1)
    b = partition(labels, [0.2, 0.2, 0.5], seed=1)
    c = partition(labels, [0.2, 0.2, 0.5], seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_partition_fractions_summing_to_one_cover_everything() -> None:
    labels = _labels([7, 11, 12])
    parts = partition(labels, [1 / 3] * 3, seed=0)
    assert [len(p) for p in parts] == [10, 10, 10]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(30))
    _check_stratified(labels, parts)
    # rounding up would ask for 4 of 3 samples: one part is rounded down instead
    assert [len(p) for p in partition(np.zeros(3, dtype=np.int64), [0.5, 0.5], seed=0)] in ([1, 2], [2, 1])


def test_partition_stratified_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    for trial in range(150):
        k = int(rng.integers(1, 8))
        labels = _labels(rng.integers(1, 60, size=k).tolist(), seed=trial)
        fractions = (rng.dirichlet(np.ones(int(rng.integers(1, 8)))) * rng.uniform(0.3, 1.0)).tolist()
        if sum(max(1, round(f * len(labels))) for f in fractions) > len(labels):
            continue
        parts = partition(labels, fractions, seed=trial)
        assert [len(p) for p in parts] == [max(1, round(f * len(labels))) for f in fractions]
        everything = np.concatenate(parts)
        assert len(np.unique(everything)) == len(everything)
        _check_stratified(labels, parts)


def test_partition_spreads_each_part_over_its_classes_order() -> None:
    """A part's members of a class are evenly spaced along the class's indices (for the photos: over the
    whole photo), not bunched; a random subset of 10 in 100 leaves a gap over 20 most of the time."""
    labels = np.repeat(np.arange(3), 100)
    for seed in range(20):
        parts = partition(labels, [0.1, 0.1, 0.1, 0.05], seed=seed)
        for p in parts:
            for c in range(3):
                rank = np.flatnonzero(labels == c)
                pos = np.searchsorted(rank, p[labels[p] == c])
                gaps = np.diff(np.concatenate([pos, [pos[0] + 100]]))  # around the circle
                assert gaps.max() <= 2 * 100 / len(pos) + 2, (seed, c, pos)


@pytest.mark.parametrize(
    "fractions",
    [[0.6, 0.5], [0.0, 0.5], [-0.1, 0.5], [], [float("nan")]],
)
def test_partition_rejects_bad_fractions(fractions: list[float]) -> None:
    with pytest.raises(ValueError):
        partition(_labels([10, 10]), fractions, seed=0)


def test_partition_rejects_more_parts_than_samples() -> None:
    with pytest.raises(ValueError):
        partition(np.zeros(3, dtype=np.int64), [0.1] * 5, seed=0)
