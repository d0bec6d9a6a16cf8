"""What a party may touch: its view of the run, built from its role, never the run root.

A view holds the party's own private directory (0700, files 0600), the pool, the public directory, the
keys issued to it, and the scenario. Reading shared or issued material goes through the view and is
recorded (what, digest); the records travel back with the reply and the server writes them to the
audit log. A view cannot name another party's directory: a private file name is one plain name.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from entities import publication as P
from entities.files import make_private_dir, write_atomic
from entities.keys import KEY_FILE
from simulator.pool import Pool, ShardInfo
from simulator.protocol import Read
from simulator.roles import Party, Role
from simulator.schema import Scenario

IDENTITY_FILE = "identity.key"
KEYS_DIR = "keys"
CHECKPOINTS_PREFIX = "checkpoints-"  # a task's fits' checkpoints, in the private directory
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Forbidden(PermissionError):
    """A party asked for something its role or identity does not allow."""


class Altered(ValueError):
    """A file differs from the digest recorded when the stage that wrote it finished."""


def party_dir(root: Path, name: str) -> Path:
    return Path(root) / "parties" / name


class PoolView:
    """The pool as one party sees it: it publishes under its own name only; every read is recorded."""

    def __init__(self, root: Path, party: Party, reads: list[Read], expected: dict[str, str] | None = None):
        self._root, self._party, self._reads = root, party, reads
        self._expected = expected if expected is not None else {}  # "pool/OWNER/NAME" -> content digest

    @property
    def _pool(self) -> Pool:
        return Pool(self._root)  # opened on first use: a run without entities has no pool directory

    def publish(
        self, name: str, features: np.ndarray | Iterable[np.ndarray], labels: np.ndarray
    ) -> ShardInfo:
        if self._party.role is not Role.ENTITY:
            raise Forbidden(f"{self._party.name} ({self._party.role}) may not publish to the pool")
        return self._pool.publish(owner=self._party.name, name=name, features=features, labels=labels)

    def read(self, owner: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        features, labels = self._pool.read(owner, name)
        info = next(s for s in self._pool.shards(owner) if s.name == name)
        expected = self._expected.get(f"pool/{owner}/{name}")
        if expected is not None and info.content_sha256 != expected:
            raise Altered(
                f"shard {self._root / info.file} (owner {owner!r}, name {name!r}) is not what {owner}"
                f" published: its features and labels hash to {info.content_sha256}, the run's manifest"
                f" recorded {expected}"
            )
        self._reads.append(Read(f"pool/{owner}/{name}", info.sha256))
        return features, labels


class PartyView:
    """One party's view of a run."""

    def __init__(self, root: Path, party: Party, scenario: Scenario, expected: dict[str, str] | None = None):
        """expected: digests the server recorded for this party's files ("private/NAME") and the pool's
        shards ("pool/OWNER/NAME"); a file that differs is refused when read."""
        self.party = party
        self.scenario = scenario
        self.reads: list[Read] = []
        self.wrote: dict[str, str] = {}  # "private/NAME" or "keys/NAME" -> sha256 of what this view wrote
        self.expected = dict(expected or {})
        self._root = Path(root)
        self._mine = party_dir(self._root, party.name)
        self.pool = PoolView(self._root / "pool", party, self.reads, self.expected)

    @property
    def name(self) -> str:
        return self.party.name

    # --- the party's own private directory ---
    def private_file(self, name: str) -> Path:
        """A file of this party's private directory (0700); `name` is a plain file name."""
        if not _PLAIN_NAME.fullmatch(name):
            raise Forbidden(f"{name!r} is not a plain file name of {self.name}'s private directory")
        return make_private_dir(self._mine / "private") / name

    def checkpoint_dir(self, stage: str, key: str) -> Path:
        """Where one task's fits keep their checkpoints (entities.training.checkpointing): a directory of
        this party's private directory (0700, files 0600; made at the first save, removed when the task
        ends), named after the task. The party's own scratch: never reported, read back only by a later
        attempt at the same task."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:40]
        crc = zlib.crc32(f"{stage}/{key}".encode())  # two keys that slug alike stay apart
        return make_private_dir(self._mine / "private") / f"{CHECKPOINTS_PREFIX}{stage}-{slug}-{crc:08x}"

    def _wrote(self, where: str, data: bytes) -> None:
        self.wrote[where] = self.expected[where] = hashlib.sha256(data).hexdigest()

    def write_private(self, name: str, data: bytes) -> Path:
        path = write_atomic(self.private_file(name), data, private=True)  # fsynced, file and directory
        self._wrote(f"private/{name}", data)
        return path

    def read_private(self, name: str, missing: str = "") -> bytes:
        """A private file, verified against the digest recorded when the stage that wrote it finished."""
        path = self.private_file(name)
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; {missing or 'the stage that writes it has not run'}")
        data = path.read_bytes()
        self._verify(f"private/{name}", path, data)
        return data

    def _verify(self, where: str, path: Path, data: bytes) -> None:
        expected = self.expected.get(where)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise Altered(
                f"{path}: altered since the stage that wrote it finished (sha256"
                f" {hashlib.sha256(data).hexdigest()}, the run's manifest recorded {expected})"
            )

    def identity(self) -> bytes:
        """This party's private X25519 key, made on first use; it never leaves the private directory."""
        from simulator import sealing

        path = self.private_file(IDENTITY_FILE)
        if not path.exists():
            write_atomic(path, sealing.new_private_key(), private=True)
        return path.read_bytes()

    # --- the data owner's publication ---
    def public_dir(self) -> Path:
        """Where the data owner publishes; only the data owner writes there."""
        if self.party.role is not Role.DATA_OWNER:
            raise Forbidden(f"{self.name} ({self.party.role}) may not write the public directory")
        return self._root / "public"

    def publication(self) -> P.Publication:
        """The data owner's codes and network, verified against their manifest; the read is recorded."""
        publication = P.read_public(self._root / "public")
        for name, info in publication.manifest["files"].items():
            self.reads.append(Read(f"public/{name}", str(info["sha256"])))
        return publication

    # --- keys issued to this party ---
    def keys_file(self) -> Path:
        """This authorised user's key file (`parties/<user>/keys/`, 0700/0600)."""
        if self.party.role is not Role.AUTHORISED_USER:
            raise Forbidden(f"{self.name} ({self.party.role}) holds no issued keys")
        return make_private_dir(self._mine / KEYS_DIR) / KEY_FILE

    def write_keys(self, data: bytes) -> Path:
        path = write_atomic(self.keys_file(), data, private=True)
        self._wrote(f"{KEYS_DIR}/{KEY_FILE}", data)
        return path

    def read_keys(self) -> bytes:
        data = self.keys_file().read_bytes()
        self._verify(f"{KEYS_DIR}/{KEY_FILE}", self.keys_file(), data)
        self.reads.append(
            Read(f"parties/{self.name}/{KEYS_DIR}/{KEY_FILE}", hashlib.sha256(data).hexdigest())
        )
        return data

    # --- what an adversary's threat model adds (simulator.schema.Adversary) ---
    def _adversary(self, knowledge: str) -> str:
        """The party an adversary with `knowledge` is (`of`); Forbidden for any other party."""
        spec = next((a for a in self.scenario.adversaries if a.name == self.name), None)
        if self.party.role is not Role.ADVERSARY or spec is None or spec.knowledge != knowledge:
            raise Forbidden(f"{self.name} ({self.party.role}) is no {knowledge}: it has no access to that")
        assert spec.of is not None  # the schema requires it for insiders and curious users
        return spec.of

    def _read_as(self, of: str, *parts: str) -> bytes:
        path = party_dir(self._root, of).joinpath(*parts)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; {of} has not written it")
        data = path.read_bytes()
        self.reads.append(Read(f"parties/{of}/{'/'.join(parts)}", hashlib.sha256(data).hexdigest()))
        return data

    def insider_file(self, name: str) -> bytes:
        """A private file of the entity this insider is (its partition, its DPM); the read is recorded."""
        if not _PLAIN_NAME.fullmatch(name):
            raise Forbidden(f"{name!r} is not a plain file name")
        return self._read_as(self._adversary("insider"), "private", name)

    def curious_keys(self) -> tuple[str, bytes]:
        """The key file of the user this curious user is, and that user's name; the read is recorded."""
        of = self._adversary("curious-user")
        return of, self._read_as(of, KEYS_DIR, KEY_FILE)

    def write_figure(self, name: str, data: bytes) -> Path:
        """A figure for the researcher (`figures/`): image grids of what the party may show (the referee's
        truth beside attacks, an entity's Table 2 on the common test images, the owner's codes grid)."""
        if not _PLAIN_NAME.fullmatch(name):
            raise Forbidden(f"{name!r} is not a plain file name")
        return write_atomic(self._root / "figures" / name, data)
