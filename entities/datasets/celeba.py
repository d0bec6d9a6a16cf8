"""`celeba`: aligned and cropped CelebA as published (img_align_celeba/ and its list files).

    root/img_align_celeba/000001.jpg ...        178 x 218 (width x height)
    root/list_attr_celeba.txt                   a count line, the 40 attribute names, then per image:
                                                the file name and 40 values of 1 or -1
    root/identity_CelebA.txt                    per image: the file name and a person's number
    root/list_eval_partition.txt                per image: the file name and 0/1/2 (train/valid/test)
The task is an attribute (DeepObfuscator's setting: D_p and D_q are then different people, labels the
attribute) or the identity (class = person, D_p and D_q different people by class). Every image keeps
its person's number, so re-identification can ask for another image of the same person.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from entities.datasets.base import (
    DatasetError,
    DatasetKind,
    DatasetSection,
    ImageSet,
    Published,
    SubsetSource,
    TaskData,
    files_digest,
)
from entities.datasets.files import (
    FileSource,
    Geometry,
    Sampling,
    assemble,
    cap_per_class,
    check_headers,
    published_split,
)
from entities.registry import DATASETS

IMAGES = "img_align_celeba"
ATTRIBUTES, IDENTITIES, PARTITION = "list_attr_celeba.txt", "identity_CelebA.txt", "list_eval_partition.txt"
# Aligned CelebA as published: 202,599 images of 10,177 people (list_eval_partition: 162,770 train,
# 19,867 valid, 19,962 test; Veil holds out its own test share instead, per person or per class)
IMAGES_PUBLISHED, PEOPLE_PUBLISHED = 202_599, 10_177
LAYOUT = f"{IMAGES}/<name>.jpg with {ATTRIBUTES}, {IDENTITIES} and {PARTITION} in their published formats"


class CelebaDataset(DatasetSection, Geometry, Sampling):
    kind: Literal["celeba"]
    root: Path = Field(description=f"the folder holding {IMAGES}/ and the list files")
    image_size: int = Field(128, ge=8, le=512, description="image side (the ambiguation paper: 128)")
    crop: int | None = Field(178, ge=8, description="centre square cut first (178: the whole width)")
    task: str = Field("identity", description="'identity' (class = person) or an attribute, e.g. 'Smiling'")
    min_images: int = Field(
        2,
        ge=2,
        description="identity task: people with fewer images are left out (a test image needs a twin)",
    )


def _lines(path: Path, header: int) -> list[list[str]]:
    if not path.is_file():
        raise DatasetError(path, "does not exist", LAYOUT)
    with open(path, encoding="utf-8", errors="replace") as f:
        rows = [line.split() for line in f.read().splitlines()[header:] if line.strip()]
    return rows


def _table(root: Path) -> tuple[list[str], np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(file names, attributes (N, 40) of +-1, attribute names, identities, partition) checked against
    each other: one row per image in each file, in the same order."""
    attr_path = root / ATTRIBUTES
    rows = _lines(attr_path, 0)
    if len(rows) < 2 or not rows[0][0].isdigit():
        raise DatasetError(attr_path, "does not start with a count line and the attribute names", LAYOUT)
    names, body = rows[1], rows[2:]
    if len(body) != int(rows[0][0]):
        raise DatasetError(attr_path, f"says {rows[0][0]} images but lists {len(body)}", LAYOUT)
    bad = next((i for i, r in enumerate(body) if len(r) != len(names) + 1), None)
    if bad is not None:
        raise DatasetError(
            attr_path, f"line {bad + 3} has {len(body[bad]) - 1} values", f"{len(names)} values"
        )
    files = [r[0] for r in body]
    try:
        attrs = np.array([[int(v) for v in r[1:]] for r in body], dtype=np.int8)
    except ValueError:
        raise DatasetError(attr_path, "holds a value that is not 1 or -1", LAYOUT) from None
    columns = []
    for name in (IDENTITIES, PARTITION):
        path = root / name
        listed = _lines(path, 0)
        if [r[0] for r in listed] != files or any(len(r) != 2 or not r[1].isdigit() for r in listed):
            raise DatasetError(
                path, f"does not list the same {len(files)} images, each with a number", LAYOUT
            )
        columns.append(np.array([int(r[1]) for r in listed], dtype=np.int64))
    return files, attrs, names, columns[0], columns[1]


@DATASETS.register("celeba")
class Celeba(DatasetKind[CelebaDataset]):
    section = CelebaDataset

    def check(self, spec: CelebaDataset) -> None:
        files, _, names, _, _ = _table(spec.root)
        if spec.task != "identity" and spec.task not in names:
            raise DatasetError(spec.root / ATTRIBUTES, f"has no attribute {spec.task!r}", f"one of {names}")
        folder = spec.root / IMAGES
        if not folder.is_dir():
            raise DatasetError(folder, "does not exist", LAYOUT)
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise DatasetError(folder / missing[0], f"is listed but missing ({len(missing)} in all)", LAYOUT)
        check_headers([str(folder / f) for f in files], LAYOUT)

    def published(self, spec: CelebaDataset) -> Published | None:
        """The published counts under this section: the identity task's classes are the people (every
        one counted: how many have fewer than `min_images` is not published); an attribute task halves the
        people, each half holding out `test_share` of its images."""
        test = round(IMAGES_PUBLISHED * spec.test_share)
        if spec.task == "identity":
            return published_split(
                spec,
                name="CelebA (aligned)",
                classes=PEOPLE_PUBLISHED,
                train=IMAGES_PUBLISHED - test,
                test=test,
            )
        half_train, half_test = (IMAGES_PUBLISHED - test) // 2, test // 2

        def capped(n: int, cap: int | None) -> int:
            return n if cap is None else min(n, 2 * cap)  # two classes: the attribute and its absence

        splits = {
            "task_train": capped(half_train, spec.train_per_class),
            "task_test": capped(half_test, spec.test_per_class),
            "public_train": capped(half_train, spec.public_per_class or spec.train_per_class),
            "public_test": capped(half_test, spec.test_per_class),
        }
        return Published("CelebA (aligned)", IMAGES_PUBLISHED, 2, 2, 2, splits)

    def load(self, spec: CelebaDataset, *, seed: int, side: int | None = None) -> TaskData:
        files, attrs, names, people, _ = _table(spec.root)
        paths = tuple(str(spec.root / IMAGES / f) for f in files)
        source = FileSource(paths, side or spec.side, spec.crop, spec.resize, LAYOUT)
        digest = files_digest(spec.root, paths, spec.model_dump_json() + f"{seed}:{side}")
        if spec.task == "identity":
            ids, counts = np.unique(people, return_counts=True)
            keep = np.isin(people, ids[counts >= spec.min_images])
            index = np.flatnonzero(keep)
            kept = sorted(set(people[index].tolist()))
            labels = np.searchsorted(kept, people[index]).astype(np.int64)
            return assemble(
                SubsetSource(source, index),
                labels,
                [str(p) for p in kept],
                spec,
                seed=seed,
                where=spec.root,
                identities=people[index],
                digest=digest,
            )
        return self._attribute(spec, source, attrs[:, names.index(spec.task)], people, seed, digest)

    def _attribute(
        self,
        spec: CelebaDataset,
        source: FileSource,
        attr: np.ndarray,
        people: np.ndarray,
        seed: int,
        digest: str,
    ) -> TaskData:
        """D_p and D_q are two seeded halves of the people; the label is the attribute."""
        rng = np.random.default_rng([seed, 6])
        persons = rng.permutation(np.unique(people))
        task_people = set(persons[: len(persons) // 2].tolist())
        labels = (attr > 0).astype(np.int64)
        classes = (f"not {spec.task}", spec.task)
        is_task = np.array([p in task_people for p in people.tolist()])

        def split(
            mask: np.ndarray, cap_train: int | None, stream: int, what: str
        ) -> tuple[ImageSet, ImageSet]:
            index = np.flatnonzero(mask)
            r = np.random.default_rng([seed, stream])
            test = r.random(len(index)) < spec.test_share
            out = []
            for part, cap, label in (
                (index[~test], cap_train, "train"),
                (index[test], spec.test_per_class, "test"),
            ):
                part = part[cap_per_class(labels[part], cap, r)]
                out.append(
                    ImageSet(
                        SubsetSource(source, part), labels[part], classes, people[part], f"{what} {label}"
                    )
                )
            return out[0], out[1]

        task_train, task_test = split(is_task, spec.train_per_class, 7, "D_p")
        public_train, public_test = split(~is_task, spec.public_per_class or spec.train_per_class, 8, "D_q")
        return TaskData(
            task_train, task_test, public_train, public_test, digest=digest, disjoint="identities"
        )
