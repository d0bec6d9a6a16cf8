"""The data owner and its authorised users (sparse codes with ambiguation, Ferdowsi et al., ICASSP 2020).

The owner trains the sparsifying autoencoder on its own images, encodes its test images, ambiguates each
code map with k' - k fake non-zeros and publishes the result with the network (entities.publication).
It makes each authorised user a key file (entities.keys) holding the supports of the images granted to
that user; the caller delivers it. A user reconstructs exactly the images it holds keys for; asking for
any other raises `NoKey`.

Each function takes the scenario sections it reads (the `data_owner` and `dataset` sections).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entities import sparse
from entities.data import to_float
from entities.datasets import TaskData, load_dataset
from entities.keys import pack_key_file, unpack_key_file
from entities.publication import CODES_FILE, Publication, autoencoder_config, publish
from entities.sparse import KeyFormatError, SparsifyingAutoencoder
from entities.training import apply

RECONSTRUCTIONS_FILE = "reconstructions.npz"


class NoKey(PermissionError):
    """A user asked to reconstruct an image whose key (support) it does not hold."""

    def __init__(self, user: str, index: int):
        self.user, self.index = user, index
        super().__init__(f"user {user!r} holds no key for image {index}: the data owner did not grant it")


def owner_images(owner: Any, dataset: Any, *, seed: int) -> TaskData:
    """The owner's images: the task set D_p (train and test) and public set D_q, built as the entities'
    are but at the owner's image size."""
    return load_dataset(dataset, seed=seed, side=owner.image_size)


def encode(model: SparsifyingAutoencoder, images: torch.Tensor, k: int) -> torch.Tensor:
    return apply(lambda x: model.encode(x, k), images, batch_size=128)


def decode(model: SparsifyingAutoencoder, codes: torch.Tensor) -> torch.Tensor:
    return apply(model.decode, codes, batch_size=128)


@dataclass
class Codes:
    """What the owner made, kept in its process for measuring: never sent anywhere as it is."""

    data: TaskData
    model: SparsifyingAutoencoder
    codes: torch.Tensor  # the true k-sparse codes of the test images
    train_codes: torch.Tensor
    published: dict[str, torch.Tensor]  # sampler -> ambiguated codes; the scenario's sampler is public
    truth: np.ndarray  # the supports (N, L, m)
    manifest: dict[str, Any]
    train_s: float
    codes_s: float


@dataclass
class OwnerOutcome:
    codes: Codes
    own_key: bytes  # the owner's key file for every image, kept in its private directory
    keys: dict[str, bytes]  # user -> that user's key file, to be delivered sealed to the user


def run_owner(owner: Any, dataset: Any, *, task_seed: int, public_dir: Path, seed: int) -> OwnerOutcome:
    """Train, encode, ambiguate, publish, and make the key files."""
    ae, k, k_prime = owner.autoencoder, owner.k, owner.k_prime
    t0 = time.monotonic()
    data = owner_images(owner, dataset, seed=task_seed)
    x_train, x_test = to_float(data.task_train.images), to_float(data.task_test.images)
    n_test = len(x_test)
    for user in owner.users:  # the schema checks this for photos; here for any dataset
        missing = [i for i in user.grant if i >= n_test]
        if missing:
            raise ValueError(f"user {user.name!r} is granted images {missing}; the owner has {n_test}")

    config = autoencoder_config(ae, owner.image_size)
    torch.manual_seed(seed)
    model = SparsifyingAutoencoder(**config)
    sparse.train_autoencoder(model, x_train, owner.training, seed=seed)
    model = model.cpu().eval()
    t_train = time.monotonic() - t0

    t1 = time.monotonic()
    codes = encode(model, x_test, k)
    train_codes = encode(model, x_train, k)
    lam, sigma = sparse.ambiguation_stats(train_codes, k)  # from the training codes, as the paper does
    generator = torch.Generator().manual_seed(seed + 1)
    public = {}
    for sampler in ("ctg", "empirical"):  # the scenario's sampler is published; the other is only measured
        public[sampler] = sparse.ambiguate(
            codes, k_prime, sampler=sampler, lam=lam, sigma=sigma, generator=generator
        )
    manifest = publish(
        public_dir,
        owner=owner.name,
        codes=public[owner.sampler],
        model=model,
        k=k,
        k_prime=k_prime,
        sampler=owner.sampler,
        config=config,
    )
    codes_sha = manifest["files"][CODES_FILE]["sha256"]

    truth = sparse.supports(codes).numpy()
    own = pack_key_file(
        user=owner.name, owner=owner.name, images=list(range(n_test)), supports=truth, codes_sha256=codes_sha
    )
    keys = {
        user.name: pack_key_file(
            user=user.name,
            owner=owner.name,
            images=list(user.grant),
            supports=truth[user.grant],
            codes_sha256=codes_sha,
        )
        for user in owner.users
    }
    made = Codes(data, model, codes, train_codes, public, truth, manifest, t_train, time.monotonic() - t1)
    return OwnerOutcome(made, own, keys)


# ---------------------------------------------------------------- an authorised user


class AuthorisedUser:
    """A user holding keys for some of the owner's images: it reconstructs those and no others."""

    def __init__(self, name: str, keys: dict[int, np.ndarray], publication: Publication):
        self.name = name
        self.keys = keys
        self.publication = publication

    @classmethod
    def load(cls, name: str, *, key_file: bytes, publication: Publication, source: str) -> AuthorisedUser:
        """Check the user's key file against the publication: made for this user, these codes, and every
        key fits the public codes."""
        manifest = publication.manifest
        keys = unpack_key_file(
            key_file,
            user=name,
            maps=manifest["maps"],
            code_length=manifest["code_length"],
            codes_sha256=publication.codes_sha256,
            source=source,
        )
        n = manifest["n_images"]
        for index, support in keys.items():
            if index >= n:
                raise KeyFormatError(f"{source}: a key for image {index}, but only {n} images are published")
            if (support & (publication.codes[index].numpy() == 0)).any():
                raise KeyFormatError(f"{source}: the key of image {index} does not fit the public codes")
        return cls(name, keys, publication)

    @property
    def granted(self) -> list[int]:
        return sorted(self.keys)

    def reconstruct(self, indices: list[int]) -> torch.Tensor:
        """Images (n, 3, H, W) in [0, 1]; NoKey for the first index the user holds no key for."""
        for index in indices:
            if index not in self.keys:
                raise NoKey(self.name, index)
        codes = self.publication.codes[list(indices)]
        support = torch.from_numpy(np.stack([self.keys[i] for i in indices]))
        with torch.no_grad():
            return sparse.decode_with_key(self.publication.model, codes, support)


def reconstruct_granted(user: AuthorisedUser) -> tuple[bytes, dict[str, float]]:
    """The user's stage: reconstruct every granted image, and check that an image it was not granted is
    refused. Returns the reconstructions (an .npz for the user's private directory) and its metrics."""
    granted = user.granted
    images = user.reconstruct(granted)
    n = user.publication.manifest["n_images"]
    ungranted = next((i for i in range(n) if i not in user.keys), None)
    refused = 0
    if ungranted is not None:
        try:
            user.reconstruct([ungranted])
        except NoKey:
            refused = 1
        else:  # pragma: no cover - reconstruct refuses by construction
            raise AssertionError(f"user {user.name!r} reconstructed image {ungranted} without its key")
    pixels = np.rint(images.numpy() * 255).astype(np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, indices=np.asarray(granted, dtype=np.int64), images=pixels)
    return buffer.getvalue(), {
        "n_granted": float(len(granted)),
        "n_reconstructed": float(len(pixels)),
        "refused_ungranted": float(refused),
        "tried_ungranted": float(-1 if ungranted is None else ungranted),
    }
