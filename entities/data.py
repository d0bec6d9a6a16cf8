"""How D_p's training images are split among the entities, and how images become tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from entities.datasets.base import ImageSet, images_budget

Images = np.ndarray | ImageSet  # pixels in memory, or a set read by index


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


def in_memory(images: Images, factor: int = 4) -> bool:
    """Whether `images` as float32 (`factor` bytes a value) fit the budget one split may hold."""
    n = images.nbytes if isinstance(images, ImageSet) else images.size
    return isinstance(images, np.ndarray) or n * factor <= images_budget()


def batch_reader(images: Images) -> Callable[[torch.Tensor], torch.Tensor]:
    """index -> float32 images in [0, 1]. In memory when they fit (one float copy, every batch a slice of
    it: the values are those of converting all at once), else each batch decoded when it is asked for."""
    if in_memory(images):
        x = to_float(images.images if isinstance(images, ImageSet) else images)
        return lambda index: x[index]
    assert isinstance(images, ImageSet)
    return lambda index: to_float(images.read(np.asarray(index)))


@torch.no_grad()
def over_batches(
    images: Images, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 256
) -> torch.Tensor:
    """fn over every image in order, `batch_size` at a time, without gradients, the results on the CPU
    (training.apply for images that may not fit in memory)."""
    read, n = batch_reader(images), len(images)
    parts = [fn(read(torch.arange(i, min(i + batch_size, n)))).cpu() for i in range(0, n, batch_size)]
    return torch.cat(parts) if parts else torch.empty(0)
