"""`image_folder`: a local copy of a folder dataset (ImageNet's layout), class = folder.

Two layouts, as torchvision's ImageFolder reads them:
    root/train/<class>/<image> and root/val/<class>/<image>   (ImageNet: the test set is val)
    root/<class>/<image>                                        (one folder: a seeded test share per class)
The task/public class split is the paper's: two halves of the classes in a seeded order, unless the
scenario gives counts or names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

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
from entities.datasets.files import (
    FileSource,
    Geometry,
    Sampling,
    assemble,
    check_headers,
    image_files,
    published_split,
)
from entities.registry import DATASETS

LAYOUT = "root/train/<class>/<image> and root/val/<class>/<image>, or root/<class>/<image>"
# ILSVRC 2012 (ImageNet-1k) as published: 1000 classes, 1,281,167 training and 50,000 validation images
IMAGENET = {"classes": 1000, "train": 1_281_167, "test": 50_000}


class ImageFolderDataset(DatasetSection, Geometry, Sampling):
    """A local folder of class folders (an ImageNet copy, or your own images)."""

    kind: Literal["image_folder"]
    root: Path = Field(description="the folder holding train/ and val/, or the class folders themselves")
    image_size: int = Field(224, ge=8, le=1024, description="image side the nets see, in pixels")


def _classes(folder: Path) -> dict[str, list[str]]:
    """Class name -> its image files, for every class folder in `folder`."""
    if not folder.is_dir():
        raise DatasetError(folder, "is not a folder" if folder.exists() else "does not exist", LAYOUT)
    with os.scandir(folder) as entries:
        listed = sorted(entries, key=lambda e: e.name)
    stray = [e.path for e in listed if e.is_file() and not e.name.startswith(".")]
    dirs = [Path(e.path) for e in listed if e.is_dir() and not e.name.startswith(".")]
    if not dirs:
        found = f"holds files ({Path(stray[0]).name}, ...) but no class folders" if stray else "is empty"
        raise DatasetError(folder, found, LAYOUT)
    if stray:
        raise DatasetError(stray[0], "is a file beside the class folders", LAYOUT)
    out = {d.name: image_files(d) for d in dirs}
    empty = [name for name, files in out.items() if not files]
    if empty:
        raise DatasetError(folder / empty[0], "is a class folder with no images", LAYOUT)
    return out


def _layout(root: Path) -> tuple[dict[str, list[str]], dict[str, list[str]] | None]:
    """(train classes, val classes) in the train/val layout, or (classes, None) in one folder."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = _classes(root / "train"), _classes(root / "val")
        if set(train) != set(val):
            odd = sorted(set(train) ^ set(val))
            raise DatasetError(root / "val", f"class folders differ from train/'s ({odd[:3]})", LAYOUT)
        return train, val
    return _classes(root), None


@DATASETS.register("image_folder")
class ImageFolder(DatasetKind[ImageFolderDataset]):
    section = ImageFolderDataset

    def check(self, spec: ImageFolderDataset) -> None:
        train, val = _layout(spec.root)
        files = [f for split in (train, val or {}) for fs in split.values() for f in fs]
        check_headers(files, LAYOUT)

    def published(self, spec: ImageFolderDataset) -> Published | None:
        """ImageNet-1k's sizes, for a root that names ImageNet (.../imagenet, ILSVRC...) and is not here; a
        folder of one's own images has no published sizes, and one that is here is counted."""
        named = any(w in str(spec.root).lower() for w in ("imagenet", "ilsvrc"))
        if not named or spec.root.exists():
            return None
        return published_split(spec, name="ImageNet-1k (ILSVRC 2012)", **IMAGENET)

    def load(self, spec: ImageFolderDataset, *, seed: int, side: int | None = None) -> TaskData:
        train, val = _layout(spec.root)
        names = sorted(train)
        paths: list[str] = []
        labels: list[int] = []
        tests: list[bool] = []
        for is_val, split in ((False, train), (True, val or {})):
            for c, name in enumerate(names):
                files = split.get(name, [])
                paths += files
                labels += [c] * len(files)
                tests += [is_val] * len(files)
        source = FileSource(tuple(paths), side or spec.side, spec.crop, spec.resize, LAYOUT)
        return assemble(
            source,
            np.array(labels, dtype=np.int64),
            names,
            spec,
            seed=seed,
            where=spec.root,
            is_test=np.array(tests) if val is not None else None,
            digest=files_digest(spec.root, paths, spec.model_dump_json() + f"{seed}:{side}"),
        )
