"""Dataset kinds, one module each (see entities.datasets.base for the contract); importing this package
registers them all."""

from entities.datasets import celeba, cifar, image_folder, mnist, photos
from entities.datasets.base import (
    DatasetError,
    DatasetKind,
    DatasetSection,
    ImageSet,
    TaskData,
    kind_of,
    load_dataset,
)

__all__ = [
    "DatasetError",
    "DatasetKind",
    "DatasetSection",
    "ImageSet",
    "TaskData",
    "celeba",
    "cifar",
    "image_folder",
    "kind_of",
    "load_dataset",
    "mnist",
    "photos",
]
