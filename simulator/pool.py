"""The common pool of poisoned features: shards that entities publish and any party reads.

Layout of a pool directory::

    manifest.json                 one entry per shard: name, owner, file, shape, dtype, labels,
                                  sha256 and size of the shard file, sha256 of its labels
    .lock                         flock target that serialises manifest updates
    <owner>--<name>.f16.npy       features, float16: the .npy numpy.save would write, written in chunks

Several OS processes may publish at the same time. A shard is written to a temporary file in
the pool directory, fsynced and moved into place with os.replace; the manifest is updated
read-modify-write under an exclusive flock on ``.lock`` and itself replaced atomically, so no
entry is ever lost. Readers take a shared lock only while they look up the entry and open the
file; the digest is then computed on that open file (streamed, a chunk at a time) and the very
same file is memory-mapped, so the bytes handed out are the bytes that were verified. Nothing
here holds a whole shard in memory: publishing takes chunks of rows, and readers gather the rows
of a batch from the maps (entities.rows), so the pool can exceed memory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from entities.files import fsync_dir

MANIFEST = "manifest.json"
LOCK = ".lock"
MANIFEST_VERSION = 1
SUFFIX = ".f16.npy"
_TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHUNK = 1 << 20  # bytes per read when hashing a shard file
_ROWS = 4096  # rows per chunk when publishing one array: its float16 copy is made a chunk at a time
_INT64_MAX = np.iinfo(np.int64).max
_F16_MAX = float(np.finfo(np.float16).max)


class PoolError(Exception):
    """The pool is inconsistent: an entry is missing, a file is absent or does not match."""


class CorruptShard(PoolError):
    """A shard file's sha256 differs from the one recorded in the manifest."""


@dataclass(frozen=True)
class ShardInfo:
    """One manifest entry; ``file`` is relative to the pool root."""

    name: str
    owner: str
    file: str
    shape: tuple[int, ...]
    dtype: str
    sha256: str
    bytes: int
    labels: tuple[int, ...] = field(repr=False)
    labels_sha256: str = field(default="", repr=False)

    @property
    def content_sha256(self) -> str:
        """One digest of the shard's features (its file) and its labels: what a reader must get."""
        return hashlib.sha256(f"{self.sha256}:{self.labels_sha256}".encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The entry as it is stored in manifest.json."""
        return {
            "name": self.name,
            "owner": self.owner,
            "file": self.file,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "labels": list(self.labels),
            "labels_sha256": self.labels_sha256,
            "sha256": self.sha256,
            "bytes": self.bytes,
        }

    @classmethod
    def from_json(cls, entry: Any) -> ShardInfo:
        """Parse one manifest entry; raises ValueError/TypeError/KeyError when malformed."""
        if not isinstance(entry, dict):
            raise TypeError(f"entry is {type(entry).__name__}, not an object")
        shape = tuple(int(n) for n in entry["shape"])
        labels = tuple(int(n) for n in entry["labels"])
        info = cls(
            name=str(entry["name"]),
            owner=str(entry["owner"]),
            file=str(entry["file"]),
            shape=shape,
            dtype=str(entry["dtype"]),
            sha256=str(entry["sha256"]),
            bytes=int(entry["bytes"]),
            labels=labels,
            labels_sha256=str(entry["labels_sha256"]),
        )
        _check_name("owner", info.owner)
        _check_name("name", info.name)
        if info.file != shard_file(info.owner, info.name):
            raise ValueError(f"file {info.file!r} is not {shard_file(info.owner, info.name)!r}")
        return info


def shard_file(owner: str, name: str) -> str:
    """The file name of the shard (owner, name): ``<owner>--<name>.f16.npy``."""
    return f"{owner}--{name}{SUFFIX}"


class Pool:
    """A pool directory shared by all entities of a run."""

    def __init__(self, root: Path) -> None:
        """Open the pool at ``root``, creating the directory if it is missing."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.root / MANIFEST

    def __repr__(self) -> str:
        return f"Pool({str(self.root)!r})"

    # --- writing ------------------------------------------------------------------------

    def publish(
        self, *, owner: str, name: str, features: np.ndarray | Iterable[np.ndarray], labels: np.ndarray
    ) -> ShardInfo:
        """Store ``features`` (cast to float16) and ``labels`` as shard (owner, name).

        ``features`` is one array or an iterable of row chunks (what featurizing in chunks yields), so a
        shard need not fit in memory: each chunk is cast, checked, hashed and written as it comes. The
        file is the .npy that numpy.save would write of the whole. Re-publishing an existing (owner, name)
        replaces it. Invalid arguments raise ValueError, and nothing enters the pool.
        """
        _check_name("owner", owner)
        _check_name("name", name)
        labs = _as_labels(labels)
        chunks: Iterable[np.ndarray]
        if isinstance(features, np.ndarray):
            _check_features(features)  # before anything is written
            _check_count(len(labs), features.shape[0])
            chunks = (features[i : i + _ROWS] for i in range(0, max(len(features), 1), _ROWS))
        else:
            chunks = features
        file = shard_file(owner, name)

        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=SUFFIX, dir=self.root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)
                shape, digest, size = _write_npy(f, chunks, rows=len(labs))
                f.flush()
                os.fsync(f.fileno())
            info = ShardInfo(
                name=name,
                owner=owner,
                file=file,
                shape=shape,
                dtype="float16",
                sha256=digest,
                bytes=size,
                labels=labs,
                labels_sha256=labels_sha256(labs),
            )
            with self._locked(exclusive=True):
                entries = self._load()
                for e in entries:
                    if e.file == file and (e.owner, e.name) != (owner, name):
                        raise ValueError(
                            f"shard (owner {owner!r}, name {name!r}) would use file {file!r}, "
                            f"which already holds (owner {e.owner!r}, name {e.name!r}); pick another name"
                        )
                os.replace(tmp, self.root / file)
                fsync_dir(self.root)
                kept = [e for e in entries if (e.owner, e.name) != (owner, name)]
                self._store([*kept, info])
        finally:
            tmp.unlink(missing_ok=True)
        return info

    def adopt(self, info: ShardInfo, path: Path) -> None:
        """Install a shard file made elsewhere (a deployed party's node sent it whole) under its entry.

        The file must match the entry (digest, header, shape, labels); it is then moved into place and
        the manifest updated under the lock, as `publish` does. A file that does not match raises
        PoolError and enters nothing.
        """
        _check_name("owner", info.owner)
        _check_name("name", info.name)
        with open(path, "rb") as f:
            self._check(f, info)
        with self._locked(exclusive=True):
            entries = self._load()
            for e in entries:
                if e.file == info.file and (e.owner, e.name) != (info.owner, info.name):
                    raise ValueError(
                        f"shard file {info.file!r} already holds (owner {e.owner!r}, name {e.name!r})"
                    )
            os.replace(path, self.root / info.file)
            fsync_dir(self.root)
            self._store([*(e for e in entries if (e.owner, e.name) != (info.owner, info.name)), info])

    # --- reading ------------------------------------------------------------------------

    def shards(self, owner: str | None = None) -> list[ShardInfo]:
        """The manifest entries (only ``owner``'s when given), sorted by (owner, name)."""
        if owner is not None:
            _check_name("owner", owner)
        entries = self._load()
        if owner is not None:
            entries = [e for e in entries if e.owner == owner]
        return sorted(entries, key=lambda e: (e.owner, e.name))

    def read(self, owner: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Verify shard (owner, name) and return (memory-mapped float16 features, int64 labels)."""
        _check_name("owner", owner)
        _check_name("name", name)
        f, info = self._open(owner, name)
        with f:
            offset = self._check(f, info)
            features = np.memmap(f, dtype=np.float16, mode="r", shape=info.shape, offset=offset, order="C")
        return features, np.asarray(info.labels, dtype=np.int64)

    def size(self) -> dict[str, int]:
        """How much the pool holds, from its manifest: shards, feature rows, and bytes of shard files."""
        entries = self._load()
        return {
            "shards": len(entries),
            "rows": sum(e.shape[0] for e in entries),
            "bytes": sum(e.bytes for e in entries),
        }

    def verify(self) -> list[ShardInfo]:
        """Check every shard's file, digest and shape; raise on the first bad one."""
        checked = []
        for entry in self.shards():
            f, info = self._open(entry.owner, entry.name)
            with f:
                self._check(f, info)
            checked.append(info)
        return checked

    # --- internals ----------------------------------------------------------------------

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        try:
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # a read-only run (`veil report` on an archive): a reader locks it read-only
            if exclusive or err.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise
            fd = os.open(self.root / LOCK, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _load(self) -> list[ShardInfo]:
        try:
            text = self.manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or not isinstance(doc.get("shards"), list):
                raise ValueError('expected an object with a "shards" list')
            if doc.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {MANIFEST_VERSION}")
            entries = []
            for i, raw in enumerate(doc["shards"]):
                try:
                    entries.append(ShardInfo.from_json(raw))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"shards[{i}]: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise PoolError(f"manifest {self.manifest_path} is malformed: {exc}") from exc
        return entries

    def _store(self, entries: list[ShardInfo]) -> None:
        entries = sorted(entries, key=lambda e: (e.owner, e.name))
        lines = ",\n".join("  " + json.dumps(e.to_json(), separators=(", ", ": ")) for e in entries)
        body = f'{{"version": {MANIFEST_VERSION}, "shards": [\n{lines}\n]}}\n'
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".json", dir=self.root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest_path)
            fsync_dir(self.root)
        finally:
            tmp.unlink(missing_ok=True)

    def _open(self, owner: str, name: str) -> tuple[IO[bytes], ShardInfo]:
        """Look up the entry and open its file under one shared lock, so the two agree."""
        with self._locked(exclusive=False):
            info = next((e for e in self._load() if (e.owner, e.name) == (owner, name)), None)
            if info is None:
                raise PoolError(f"no shard (owner {owner!r}, name {name!r}) in {self.manifest_path}")
            path = self.root / info.file
            try:
                return open(path, "rb"), info
            except FileNotFoundError:
                raise PoolError(
                    f"shard file {path} (owner {owner!r}, name {name!r}) is missing; "
                    f"it is listed in {self.manifest_path}"
                ) from None

    def _check(self, f: IO[bytes], info: ShardInfo) -> int:
        """Verify the open shard file against its entry; return the offset of its data."""
        path = self.root / info.file
        who = f"owner {info.owner!r}, name {info.name!r}"
        actual, size = _digest(f)
        if actual != info.sha256:
            sizes = f" (file has {size} bytes, manifest says {info.bytes})" if size != info.bytes else ""
            raise CorruptShard(
                f"shard file {path} ({who}) is corrupt: expected sha256 {info.sha256}, got {actual}{sizes}"
            )
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as exc:
            raise PoolError(f"shard file {path} ({who}) is not a readable .npy file: {exc}") from exc
        offset = f.tell()
        if tuple(shape) != info.shape:
            raise PoolError(
                f"shard file {path} ({who}) holds shape {tuple(shape)}, but the manifest says {info.shape}"
            )
        if dtype != np.dtype(np.float16) or info.dtype != "float16" or fortran:
            order = "Fortran" if fortran else "C"
            raise PoolError(
                f"shard file {path} ({who}) holds {dtype} in {order} order; "
                f"expected float16 in C order (manifest dtype {info.dtype!r})"
            )
        expected = offset + int(np.prod(info.shape, dtype=np.int64)) * 2
        if size != expected:
            raise PoolError(f"shard file {path} ({who}) has {size} bytes; its header implies {expected}")
        if len(info.labels) != info.shape[0]:
            raise PoolError(
                f"manifest entry for {path} ({who}) has {len(info.labels)} labels for {info.shape[0]} rows"
            )
        if labels_sha256(info.labels) != info.labels_sha256:
            raise CorruptShard(
                f"shard {path} ({who}) has altered labels: expected labels sha256 {info.labels_sha256},"
                f" got {labels_sha256(info.labels)}"
            )
        return offset


def _check_name(what: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a valid {what}: it must match {_NAME.pattern}")


def _check_features(arr: np.ndarray) -> None:
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"features must be a numeric (int or float) array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"features must have ndim >= 2, got shape {arr.shape}")


def _as_features(features: np.ndarray) -> np.ndarray:
    """One chunk of rows as C-ordered float16, refusing values that float16 cannot hold."""
    arr = np.asarray(features)
    _check_features(arr)
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float16)
    if arr.dtype == np.float16:
        return out  # nothing was cast, so nothing overflowed
    # inf or NaN in the exponent bits: a cheap pass, so the exact count is made only when needed
    if not ((out.view(np.uint16) & 0x7FFF) >= 0x7C00).any():
        return out
    overflow = np.isinf(out) & np.isfinite(arr)
    if overflow.any():
        raise ValueError(
            f"{int(overflow.sum())} feature values exceed the float16 range (|x| > {_F16_MAX:g})"
        )
    return out


def _check_count(labels: int, rows: int) -> None:
    if labels != rows:
        raise ValueError(f"got {labels} labels for {rows} feature rows; the counts must be equal")


def _as_labels(labels: np.ndarray) -> tuple[int, ...]:
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > _INT64_MAX:
        raise ValueError("labels must fit in int64")
    return tuple(arr.astype(np.int64).tolist())


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The header numpy.save writes for a C-ordered float16 array of `shape` (the oldest format that fits)."""
    d = np.lib.format.header_data_from_array_1_0(np.empty((0,), dtype=np.float16))
    d["shape"] = shape
    buffer = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buffer, d)
    except ValueError:  # a header too long for format 1.0: numpy.save moves to 2.0 too
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, d)
    return buffer.getvalue()


def _write_npy(f: IO[bytes], chunks: Iterable[np.ndarray], *, rows: int) -> tuple[tuple[int, ...], str, int]:
    """Write `rows` rows arriving in chunks as one float16 .npy file, hashing what is written.

    The header needs the whole shape before the first row: the row count comes from the labels, the row
    shape from the first chunk. Returns (shape, sha256, bytes)."""
    h = hashlib.sha256()
    size, written, shape = 0, 0, None
    for chunk in chunks:
        data = _as_features(chunk)
        if shape is None:
            shape = (rows, *(int(n) for n in data.shape[1:]))
            header = _npy_header(shape)
            f.write(header)
            h.update(header)
            size += len(header)
        elif data.shape[1:] != shape[1:]:
            raise ValueError(f"a chunk has rows of shape {data.shape[1:]}, the first had {shape[1:]}")
        written += data.shape[0]
        if written > rows:
            _check_count(rows, written)
        raw = data.reshape(-1).view(np.uint8).data  # the chunk's bytes, not a copy
        f.write(raw)
        h.update(raw)
        size += raw.nbytes
    if shape is None:
        raise ValueError("features yielded no chunks: a shard needs at least one (it may have no rows)")
    _check_count(rows, written)
    return shape, h.hexdigest(), size


def labels_sha256(labels: tuple[int, ...]) -> str:
    """sha256 of labels as little-endian int64: recorded at publication, checked on every read."""
    return hashlib.sha256(np.asarray(labels, dtype="<i8").tobytes()).hexdigest()


def _digest(f: IO[bytes]) -> tuple[str, int]:
    """sha256 and size of an open file, read from the start in chunks."""
    f.seek(0)
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size
