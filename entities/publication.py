"""The data owner's publication: the ambiguated codes, the network, and their manifest.

    <public>/codes.npy        float32 (N, L, m): the ambiguated codes u_p
    <public>/autoencoder.pt   the network: its shape and weights
    <public>/manifest.json    shapes, k, k', sampler, N and the sha256 of both files

In the paper the network and the ambiguated codes are public; the supports (keys) are the secret.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entities.files import write_atomic
from entities.sparse import SparsifyingAutoencoder

CODES_FILE = "codes.npy"
NET_FILE = "autoencoder.pt"
MANIFEST_FILE = "manifest.json"


class CorruptPublication(ValueError):
    """The public codes or network do not match their manifest (damaged or replaced)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def autoencoder_config(spec: Any, image_size: int) -> dict[str, Any]:
    """Constructor arguments of the scenario's autoencoder (a `DataOwner.autoencoder` section)."""
    return {
        "image_size": int(image_size),
        "maps": spec.maps,
        "code_length": spec.code_length,
        "k": spec.k,
        "widths": list(spec.widths),
        "strides": list(spec.strides),
        "skip_channels": spec.skip_channels,
    }


def publish(
    public_dir: Path,
    *,
    owner: str,
    codes: torch.Tensor,
    model: SparsifyingAutoencoder,
    k: int,
    k_prime: int,
    sampler: str,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Write the ambiguated codes and the network to `public_dir`; the manifest last, so that a reader
    never finds a manifest without its files. Returns the manifest."""
    buffer = io.BytesIO()
    np.save(buffer, codes.detach().cpu().numpy().astype(np.float32), allow_pickle=False)
    codes_bytes = buffer.getvalue()
    buffer = io.BytesIO()
    state = {k_: v.detach().cpu() for k_, v in model.state_dict().items()}
    torch.save({"config": config, "state_dict": state}, buffer)
    net_bytes = buffer.getvalue()
    write_atomic(public_dir / CODES_FILE, codes_bytes)
    write_atomic(public_dir / NET_FILE, net_bytes)
    n, maps, length = codes.shape
    manifest = {
        "owner": owner,
        "n_images": int(n),
        "maps": int(maps),
        "code_length": int(length),
        "k": int(k),
        "k_prime": int(k_prime),
        "sampler": sampler,
        "files": {
            CODES_FILE: {
                "shape": [int(n), int(maps), int(length)],
                "dtype": "float32",
                "sha256": sha256(codes_bytes),
            },
            NET_FILE: {"sha256": sha256(net_bytes)},
        },
    }
    write_atomic(public_dir / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


@dataclass
class Publication:
    """What every party can read: the manifest, the ambiguated codes and the network."""

    manifest: dict[str, Any]
    codes: torch.Tensor  # (N, L, m) float32
    model: SparsifyingAutoencoder

    @property
    def codes_sha256(self) -> str:
        return str(self.manifest["files"][CODES_FILE]["sha256"])


def read_public(public_dir: Path) -> Publication:
    """The owner's publication, checked against its manifest (CorruptPublication when it does not match)."""
    public_dir = Path(public_dir)
    path = public_dir / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the data owner has not published (stage 'codes')")
    manifest = json.loads(path.read_text())
    blobs = {}
    for name in (CODES_FILE, NET_FILE):
        data = (public_dir / name).read_bytes()
        if sha256(data) != manifest["files"][name]["sha256"]:
            raise CorruptPublication(f"{public_dir / name}: corrupt (sha256 differs from {path})")
        blobs[name] = data
    codes = torch.from_numpy(np.load(io.BytesIO(blobs[CODES_FILE]), allow_pickle=False))
    if list(codes.shape) != manifest["files"][CODES_FILE]["shape"]:
        raise CorruptPublication(f"{public_dir / CODES_FILE}: shape {list(codes.shape)} differs from {path}")
    net = torch.load(io.BytesIO(blobs[NET_FILE]), weights_only=True)
    model = SparsifyingAutoencoder(**net["config"])
    model.load_state_dict(net["state_dict"])
    return Publication(manifest, codes, model.eval())
