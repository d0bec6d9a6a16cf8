"""The key file: the supports of the images granted to one authorised user, with a header naming them.

Layout: magic b"VKF\\0", a version byte, the length of a JSON header (uint32, big-endian), the header
(user, owner, image indices, L, m, k, bytes per key, sha256 of the public codes), then one
`entities.sparse.pack_key` record per image in header order. A file made for another user, for other
codes, or damaged in any way is refused with `KeyFormatError`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from entities import sparse
from entities.sparse import KeyFormatError

KEY_FILE = "keys.vkey"
KEY_FILE_MAGIC = b"VKF\x00"  # Veil key file
KEY_FILE_VERSION = 1
_KEY_FILE_HEAD = struct.Struct(">4sBI")  # magic, version, header length

__all__ = ["KEY_FILE", "KeyFormatError", "pack_key_file", "read_key_file", "unpack_key_file"]


def pack_key_file(
    *, user: str, owner: str, images: list[int], supports: np.ndarray, codes_sha256: str
) -> bytes:
    """The key file of `user`: the supports (n, L, m) of the images `images`, with a header naming them."""
    supports = np.asarray(supports)
    if supports.ndim != 3 or len(supports) != len(images):
        raise ValueError(f"need one (L, m) support per image: {len(images)} images, {supports.shape}")
    keys = [sparse.pack_key(s) for s in supports]
    _, maps, length = supports.shape
    header = {
        "user": user,
        "owner": owner,
        "images": [int(i) for i in images],
        "maps": int(maps),
        "code_length": int(length),
        "k": int(supports[0].sum(1)[0]) if len(keys) else 0,
        "key_bytes": len(keys[0]) if keys else 0,
        "codes_sha256": codes_sha256,
    }
    text = json.dumps(header, sort_keys=True).encode()
    return _KEY_FILE_HEAD.pack(KEY_FILE_MAGIC, KEY_FILE_VERSION, len(text)) + text + b"".join(keys)


def unpack_key_file(
    data: bytes,
    *,
    user: str,
    maps: int,
    code_length: int,
    codes_sha256: str | None = None,
    source: str = "key file",
) -> dict[int, np.ndarray]:
    """{image index: (L, m) bool support} from a key file made for `user`; KeyFormatError otherwise."""

    def bad(why: str) -> KeyFormatError:
        return KeyFormatError(f"{source}: {why}")

    if len(data) < _KEY_FILE_HEAD.size:
        raise bad(f"{len(data)} bytes, shorter than the {_KEY_FILE_HEAD.size}-byte preamble of a key file")
    magic, version, size = _KEY_FILE_HEAD.unpack_from(data)
    if magic != KEY_FILE_MAGIC:
        raise bad(f"not a Veil key file (magic {magic!r}, expected {KEY_FILE_MAGIC!r})")
    if version != KEY_FILE_VERSION:
        raise bad(f"key file version {version} is not supported (only {KEY_FILE_VERSION})")
    end = _KEY_FILE_HEAD.size + size
    try:
        header = json.loads(data[_KEY_FILE_HEAD.size : end].decode())
        holder, images, key_bytes = header["user"], header["images"], int(header["key_bytes"])
        if not isinstance(images, list) or not all(isinstance(i, int) and i >= 0 for i in images):
            raise ValueError("image indices must be non-negative integers")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise bad(f"malformed header ({err})") from None
    if holder != user:
        raise bad(f"this key file was issued to user {holder!r}, not to {user!r}")
    if len(set(images)) != len(images):
        raise bad("an image appears twice in the header")
    if codes_sha256 is not None and header.get("codes_sha256") != codes_sha256:
        raise bad("its keys are for other public codes than the ones published (sha256 differs)")
    if len(data) - end != key_bytes * len(images):
        raise bad(f"{len(data) - end} bytes of keys, expected {len(images)} keys of {key_bytes} bytes")
    out = {}
    for j, index in enumerate(images):
        chunk = data[end + j * key_bytes : end + (j + 1) * key_bytes]
        try:
            out[index] = sparse.unpack_key(chunk, maps, code_length)
        except KeyFormatError as err:
            raise bad(f"key of image {index}: {err}") from None
    return out


def read_key_file(
    path: Path, *, user: str, maps: int, code_length: int, codes_sha256: str | None = None
) -> dict[int, np.ndarray]:
    """`unpack_key_file` of the file at `path` (a missing file is a KeyFormatError too)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise KeyFormatError(f"{path}: cannot read the key file ({err.strerror})") from None
    return unpack_key_file(
        data, user=user, maps=maps, code_length=code_length, codes_sha256=codes_sha256, source=str(path)
    )
