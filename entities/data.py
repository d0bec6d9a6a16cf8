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


def partition(
    labels: np.ndarray,
    fractions: Sequence[float],
    seed: int,
    *,
    concentration: float | None = None,
    classes_per_entity: int | None = None,
) -> list[np.ndarray]:
    """Disjoint, class-stratified index sets, one of round(f*N) (at least 1) indices per fraction f.

    Stratified so that every entity sees every class in proportion: each class's count in a part is
    n_class * size / N rounded down or up, with the parts' sizes exact.  Where rounding up would make the
    parts ask for more than N, a few sizes are rounded down instead.  Within a class, a part's members
    are spread evenly over the class's indices, which for the photos run across the whole photo: with a
    few patches per class a random subset can hold one corner of a photo (on collab-10-1, rows 1-3
    spanned 8-12 points across partition seeds with random subsets, 2-5.5 spread).  Indices are sorted
    ascending.

    Label skew (both keep each part's size): `concentration` draws each part's class mix from
    Dirichlet(concentration * 1) over the classes; `classes_per_entity` gives each part that many classes
    in equal shares. See `skewed_counts`.
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
    if concentration is not None or classes_per_entity is not None:
        alloc = skewed_counts(
            counts, sizes, rng, concentration=concentration, classes_per_entity=classes_per_entity
        )
    else:
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


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """`total` split in proportion to `weights` (integers summing to `total`, largest remainders up)."""
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(np.int64)
    short = total - int(out.sum())
    out[np.argsort(-(exact - out), kind="stable")[:short]] += 1
    return out


def skewed_counts(
    counts: np.ndarray,
    sizes: np.ndarray,
    rng: np.random.Generator,
    *,
    concentration: float | None = None,
    classes_per_entity: int | None = None,
) -> np.ndarray:
    """How many images of each class (rows) each part (columns) gets, for a label-skewed partition.

    Each part j has a class mix q_j: Dirichlet(concentration) draws, or uniform over its
    `classes_per_entity` classes (the classes with the most images left when its turn comes, so that the
    parts spread over the classes). Parts take their `sizes[j]` images in entity order, in proportion to
    q_j over the classes not yet used up; a Dirichlet part whose classes run out takes the rest from the
    classes left (in proportion to what is left), a fixed-classes part is refused instead.
    """
    n_classes = len(counts)
    if classes_per_entity is not None:
        if not 1 <= classes_per_entity <= n_classes:
            raise ValueError(f"classes_per_entity must be in [1, {n_classes}], got {classes_per_entity}")
        mixes = np.zeros((len(sizes), n_classes))  # each part's classes, chosen when its turn comes
        tiebreak = rng.permutation(n_classes)
    else:
        assert concentration is not None
        if not concentration > 0:
            raise ValueError(f"concentration must be > 0, got {concentration}")
        mixes = rng.dirichlet(np.full(n_classes, float(concentration)), size=len(sizes))
    left = counts.astype(np.int64).copy()
    alloc = np.zeros((n_classes, len(sizes)), dtype=np.int64)
    for j, size in enumerate(sizes.tolist()):
        need = int(size)
        if classes_per_entity is not None:  # the classes with the most images left (ties: a seeded order)
            mine = np.lexsort((tiebreak, -left))[:classes_per_entity]
            mixes[j, mine] = 1.0
        while need > 0:
            weights = mixes[j] * (left > 0)
            if weights.sum() <= 0:
                if classes_per_entity is not None:
                    raise ValueError(
                        f"part {j} needs {need} more images of its {classes_per_entity} classes, but they are"
                        " used up: lower its fraction or raise classes_per_entity"
                    )
                weights = left.astype(float)  # its classes are used up: the rest from what is left
            take = np.minimum(_largest_remainder(need, weights), left)
            if take.sum() == 0:  # every share rounded to a class already used up: one from the likeliest
                take[int(np.argmax(weights))] = 1
            alloc[:, j] += take
            left -= take
            need -= int(take.sum())
    return alloc


def class_histogram(labels: np.ndarray, n_classes: int) -> list[int]:
    """How many of `labels` fall in each class 0 .. n_classes - 1."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).tolist()


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
    images: Images,
    fn: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 256,
    read: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """fn over every image in order, `batch_size` at a time, without gradients, the results on the CPU
    (training.apply for images that may not fit in memory); `read`: a batch_reader of them already made."""
    read, n = read or batch_reader(images), len(images)
    parts = [fn(read(torch.arange(i, min(i + batch_size, n)))).cpu() for i in range(0, n, batch_size)]
    return torch.cat(parts) if parts else torch.empty(0)
